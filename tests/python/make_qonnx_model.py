"""Writes a QONNX graph shaped like a tf2onnx export of a quantized Keras MLP
(`qonnx_mlp.onnx`): the input `image` [batch, 4, 4] gets a channel axis (Unsqueeze, as
tf2onnx writes an `expand_dims`) and is flattened the way tf2onnx writes a Keras Reshape
(Shape -> Gather -> Unsqueeze -> Concat -> Reshape, a shape computed from the input), then Quant (8-bit input), MatMul with Quant'ed 4-bit weights, Add bias, Relu, Quant,
MatMul, Add, and Softmax over 5 classes; and `two_input.onnx`, a float graph with two named
inputs (`x_profile` [batch, 21], `y_profile` [batch, 13]) concatenated, then MatMul, Add,
Relu, MatMul, Add, Sigmoid to one unit. Fixed weights from a seeded generator. Run in the
ONNX venv:

    python make_qonnx_model.py OUT_DIR
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def quant(name, x, scale, bits, signed=1):
    """A QONNX Quant node and its constant inputs."""
    consts = [
        numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{name}_scale"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), f"{name}_zero"),
        numpy_helper.from_array(np.array(float(bits), dtype=np.float32), f"{name}_bits"),
    ]
    node = helper.make_node("Quant", [x, f"{name}_scale", f"{name}_zero", f"{name}_bits"], [f"{name}_out"],
                            domain="qonnx.custom_op.general", signed=signed, narrow=0, rounding_mode="ROUND",
                            name=name)
    return node, consts


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    w1 = rng.uniform(-1, 1, size=(16, 8)).astype(np.float32)
    b1 = (rng.uniform(-1, 1, size=8) * 0.25).astype(np.float32)
    w2 = rng.uniform(-1, 1, size=(8, 5)).astype(np.float32)
    b2 = (rng.uniform(-1, 1, size=5) * 0.25).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero_index"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis_zero"),
        numpy_helper.from_array(np.array([3], dtype=np.int64), "axis_three"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
        numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2"),
    ]
    nodes = [
        # tf2onnx's Reshape of a Keras Flatten: the target shape computed from the input's.
        helper.make_node("Unsqueeze", ["image", "axis_three"], ["image_c"], name="expand_dims"),
        helper.make_node("Shape", ["image_c"], ["image_shape"], name="flatten_shape"),
        helper.make_node("Gather", ["image_shape", "zero_index"], ["batch_dim"], axis=0, name="flatten_gather"),
        helper.make_node("Unsqueeze", ["batch_dim", "axis_zero"], ["batch_dim_1d"], name="flatten_unsqueeze"),
        helper.make_node("Squeeze", ["batch_dim_1d", "axis_zero"], ["batch_dim_0d"], name="flatten_squeeze"),
        helper.make_node("Unsqueeze", ["batch_dim_0d", "axis_zero"], ["batch_dim_again"], name="flatten_unsqueeze2"),
        helper.make_node("Concat", ["batch_dim_again", "minus_one"], ["flat_shape"], axis=0, name="flatten_concat"),
        helper.make_node("Reshape", ["image_c", "flat_shape"], ["flat"], name="flatten"),
    ]
    for node, consts in [quant("q_in", "flat", 1 / 64, 8), quant("q_w1", "w1", 1 / 8, 4),
                         quant("q_w2", "w2", 1 / 8, 4)]:
        nodes.append(node)
        inits += consts
    nodes += [
        helper.make_node("MatMul", ["q_in_out", "q_w1_out"], ["mm1"], name="dense1"),
        helper.make_node("Add", ["mm1", "b1"], ["a1"], name="dense1_bias"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
    ]
    node, consts = quant("q_r1", "r1", 1 / 16, 8, signed=0)
    nodes.append(node)
    inits += consts
    nodes += [
        helper.make_node("MatMul", ["q_r1_out", "q_w2_out"], ["mm2"], name="dense2"),
        helper.make_node("Add", ["mm2", "b2"], ["logits"], name="dense2_bias"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "qonnx_mlp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 4, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("qonnx.custom_op.general", 1)])
    model.ir_version = 8
    onnx.save(model, os.path.join(out, "qonnx_mlp.onnx"))
    two_input(out)


def two_input(out):
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((34, 8)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((8, 1)) * 0.3).astype(np.float32)
    b2 = np.zeros(1, dtype=np.float32)
    nodes = [
        helper.make_node("Concat", ["x_profile", "y_profile"], ["xy"], axis=1, name="concat"),
        helper.make_node("MatMul", ["xy", "w1"], ["h"], name="dense1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="dense1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["o"], name="dense2"),
        helper.make_node("Add", ["o", "b2"], ["ob"], name="dense2_bias"),
        helper.make_node("Sigmoid", ["ob"], ["score"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes, "two_input",
        [helper.make_tensor_value_info("x_profile", TensorProto.FLOAT, ["batch", 21]),
         helper.make_tensor_value_info("y_profile", TensorProto.FLOAT, ["batch", 13])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(out, "two_input.onnx"))


if __name__ == "__main__":
    main()
