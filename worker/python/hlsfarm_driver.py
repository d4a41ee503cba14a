"""hlsfarm's hls4ml driver: one JSON request in, one JSON result out.

    python hlsfarm_driver.py REQUEST.json RESULT.json
    python hlsfarm_driver.py --serve SOCKET FAMILY     (the warm interpreter; see `serve`)

The worker writes the request, runs this in the venv that fits the model's format, and reads
the result file; stdout and stderr are the log (hls4ml and TensorFlow print there), never
parsed except for hls4ml's `WARNING:` lines, which are also captured here and returned.

Request:
    {"model": {"path": ..., "format": "auto"|"keras_h5"|"keras_json"|"pytorch"|"onnx",
               "weights": path (keras_json), "class_file": path, "class_name": str,
               "input_shape": [..] or [[..], [..]] (pytorch, without the batch dimension)},
     "settings": {"io_type", "strategy", "reuse_factor", "precision", "part",
                  "clock_period_ns", "backend", "max_array_partition_size"?,
                  "layers": {name: {"reuse_factor"?, "strategy"?, "precision": {var: type}}}},
     "output_dir": ..., "project_name": "myproject",
     "emulate": bool, "strict": bool (refuse the trial when preflight finds an error),
     "emulation": {"samples": 100, "seed": 0, "inputs": path (.npz by input name, or .npy)?,
                   "max_error": 0.1?, "min_agreement": 0.9?, "compile_budget": units?,
                   "validation": path (.npz: inputs by name, or `x`, plus `y` / `y_<output>`)?}}

A request {"preflight_batch": [{"id", "model", "settings"}]} converts each point without
writing or compiling and returns {"ok": true, "batch": {id: {"findings": [...]} or
{"failure": {...}}}}.

Result:
    {"ok": true, "hls4ml_version", "format", "timings": {"load": s, "convert": s, "write": s,
     "compile": s, "predict": s}, "warnings": [...], "effective_reuse_factor": {layer: rf},
     "layers": [{"name", "class", "reuse_factor"}], "rewrites": [{"layer", "from", "to", "why"}],
     "inputs": [{"name", "shape"}], "outputs": [{"name", "shape"}],
     "emulation_note": str?, "preflight": [{"rule", "layer", "severity", "message", "fix",
     "suggestion"}], "parameters": int?, "multiplications": int?, "largest_layer": int?,
     "fidelity": {...} | null, "accuracy": {...}?, "cpu": {"convert": s, "emulate": s}}
or  {"ok": false, "failure": {"class", "reason", "stage", "suggestion"}, ...}

Fidelity: top-level figures over all outputs (mean_abs_diff, max_abs_diff, argmax_agreement for
one output), `outputs[]` one per model output by kind (binary, multiclass, regression), and
`divergence` naming the first layer whose float values leave its fixed-point range.

Accuracy (with a validation set): {"output", "kind", "float", "float_auc"?, "hls"?, "hls_auc"?,
"drop"?, "samples", "source", "outputs": [...] when several outputs have labels}: Keras's own
accuracy (binary: prediction > 0.5 against 0/1 labels; multiclass: top-1 against integer or
one-hot labels) of the float model and of the compiled emulation on the same data.
"""

import contextlib
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np

# Before anything imports TensorFlow or hls4ml.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

LFS_POINTER = b"version https://git-lfs.github.com/spec/"

# Keras activations that a QActivation may name without quantizing anything: hls4ml 1.3 refuses
# them inside QActivation ("Unsupported QKeras activation: unknown") but converts the same
# function as a plain Keras Activation.
PLAIN_ACTIVATIONS = {"sigmoid", "softmax", "tanh", "relu", "linear", "hard_sigmoid", "softplus",
                     "softsign", "elu", "selu", "swish", "gelu", "exponential"}

# Defaults of the fidelity check (configurable per sweep: emulation.max_error, min_agreement).
DEFAULT_MAX_ERROR = 0.1
DEFAULT_MIN_AGREEMENT = 0.9

# Estimated cost of compiling an io_parallel emulation (multiplications unrolled in the C++),
# above which the compile drops from hls4ml's -O3 to -Og, and above which emulation is skipped
# with a note. Every level is bit-exact here (fixed-point arithmetic is integer arithmetic, and
# no flag used reassociates floats). Measured on a 32x32x3 CNN with 2.9 million
# multiplications, compile + predicting 100 samples: -O3 280 s + 4.5 s (2.9 GB), -O1 137 s +
# 5.1 s (2.7 GB), -Og 119 s + 10 s (2.3 GB), -O0 40 s + 203 s (2.0 GB), all four bit-identical;
# small models take 6-7 s at any level (parsing the headers dominates). See BENCHMARKS.md.
CHEAP_COMPILE_ABOVE = 1_000_000
# Below that, -Og is chosen when it pays: with the precompiled header it saves about 0.9 s of
# a small model's compile (3.8-3.9 s at -O3, 2.9-3.0 s at -Og on the jet tagger; 4.2 s against
# 3.1 s on a conv1d io_stream model; bit-identical) plus about 55 us per multiplication (the CNN
# above), and its predictions cost about 20 ns more per multiplication and sample (4.5 s
# against 10.1 s for 100 samples of the CNN). A large validation set keeps -O3.
OG_SAVES_S, OG_SAVES_PER_MULT_S, OG_COSTS_PER_MULT_SAMPLE_S = 0.9, 5.5e-5, 2e-8
# Multiplications a latency-strategy layer may unroll per reuse cycle: Vivado HLS stops
# beyond about this many (XFORM 203-504 "Stop unrolling loop ... because it may cause large
# runtime"; hls4ml's maintainers name 4,096 as its limit); Vitis HLS goes on, slowly.
UNROLL_LIMIT = 4096
SKIP_EMULATION_ABOVE = 20_000_000


class Failure(Exception):
    """A classified failure: class (DESIGN §3), reason, stage, suggestion."""

    def __init__(self, cls, reason, stage, suggestion=None):
        super().__init__(reason)
        self.cls, self.reason, self.stage, self.suggestion = cls, reason, stage, suggestion

    def as_dict(self):
        return {"class": self.cls, "reason": self.reason, "stage": self.stage, "suggestion": self.suggestion}


class Tee(io.TextIOBase):
    """Writes to the real stream and keeps a copy, to pick hls4ml's warnings out of it."""

    def __init__(self, stream):
        self.stream, self.buffer = stream, io.StringIO()

    def write(self, text):
        self.stream.write(text)
        self.buffer.write(text)
        return len(text)

    def flush(self):
        self.stream.flush()


def first_line(error):
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def check_not_lfs_pointer(path, what):
    """A Git LFS pointer (a clone without `git lfs pull`) is named as one."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER))
    except OSError as e:
        raise Failure("bad_input", f"cannot read the {what} {os.path.basename(path)}: {e.strerror}", "convert",
                      "check that the file exists and is readable")
    if head == LFS_POINTER:
        raise Failure("bad_input",
                      f"the {what} {os.path.basename(path)} is a Git LFS pointer ({os.path.getsize(path)} bytes), "
                      "not the file itself", "convert",
                      "run `git lfs pull` in the repository it came from, then submit the real file")


def detect_format(model):
    fmt = model.get("format", "auto")
    if fmt != "auto":
        return fmt
    path = model["path"].lower()
    if path.endswith(".json"):
        return "keras_json"
    if path.endswith((".h5", ".hdf5", ".keras")):
        return "keras_json" if model.get("weights") else "keras_h5"
    if path.endswith((".pt", ".pth")):
        return "pytorch"
    if path.endswith(".onnx"):
        return "onnx"
    raise Failure("bad_input", f"cannot tell the format of {os.path.basename(model['path'])}", "convert",
                  "name the file .h5, .json (+ weights), .pt/.pth or .onnx, or set the format")


# ---------------------------------------------------------------------------------------------
# Keras

def import_keras():
    if os.environ.get("TF_USE_LEGACY_KERAS") == "1":
        try:
            import tf_keras
            # hls4ml picks its Keras parser from `import keras`: it must see Keras 2 here.
            sys.modules["keras"] = tf_keras
        except ImportError:
            pass
    from tensorflow import keras
    custom = {}
    try:
        from qkeras.utils import _add_supported_quantized_objects
        _add_supported_quantized_objects(custom)
    except ImportError:
        pass
    return keras, custom


def keras_config_text(path, fmt):
    """The model's architecture as saved, without building it (to see what it needs)."""
    if fmt == "keras_json":
        with open(path) as f:
            return f.read()
    import h5py
    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise Failure("bad_input", f"{os.path.basename(path)} holds weights only, no model", "convert",
                          "save the whole model (model.save), or give the architecture JSON with these weights")
        text = f.attrs["model_config"]
    return text.decode() if isinstance(text, bytes) else text


def load_keras(model, fmt, rewrites):
    keras, custom = import_keras()
    path = model["path"]
    try:
        config_text = keras_config_text(path, fmt)
        pruned = "PruneLowMagnitude" in config_text
        scope = contextlib.nullcontext()
        if pruned:
            try:
                import tensorflow_model_optimization as tfmot
            except ImportError:
                raise Failure("bad_input", f"{os.path.basename(path)} has tfmot pruning wrappers (PruneLowMagnitude) "
                              "and tensorflow-model-optimization is not in this venv", "convert",
                              "strip them before saving (tfmot.sparsity.keras.strip_pruning), or install "
                              "tensorflow-model-optimization in the hls4ml venv")
            scope = tfmot.sparsity.keras.prune_scope()
        with scope:
            if fmt == "keras_json":
                weights = model.get("weights")
                if not weights:
                    raise Failure("bad_input", "a Keras JSON model needs its weights file", "convert",
                                  "give the weights .h5 as the model's `weights` companion (NAME_weights.h5)")
                check_not_lfs_pointer(weights, "weights file")
                net = keras.models.model_from_json(config_text, custom_objects=custom)
                net.load_weights(weights)
            else:
                net = keras.models.load_model(path, custom_objects=custom, compile=False)
    except Failure:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Failure("bad_input", f"cannot load {os.path.basename(path)} as a Keras model: {first_line(e)}", "convert",
                      "check that the file is complete (not truncated) and was saved by Keras 2 / QKeras")
    if pruned:
        wrapped = [l.layer.name for l in net.layers if type(l).__name__ == "PruneLowMagnitude"]
        net = tfmot.sparsity.keras.strip_pruning(net)
        for name in wrapped:
            rewrites.append({"layer": name, "from": "PruneLowMagnitude", "to": "the wrapped layer",
                             "why": "tfmot pruning wrappers stripped (strip_pruning): the pruned weights stay zero"})
    return replace_plain_qactivations(net, None if pruned else config_text, keras, custom, rewrites)


def replace_plain_qactivations(net, config_text, keras, custom, rewrites):
    """QActivation("sigmoid") and the like become Keras Activation layers, weights kept."""
    # The serialized form, as saved to disk where there is one: quantizer objects as configs.
    full = json.loads(config_text or net.to_json())
    config = full.get("config") or {}
    layers = config.get("layers") if isinstance(config, dict) else None
    if not layers:
        return net
    changed = []
    for layer in layers:
        if layer.get("class_name") != "QActivation":
            continue
        activation = layer.get("config", {}).get("activation")
        if isinstance(activation, str) and activation.strip() in PLAIN_ACTIVATIONS:
            name = layer["config"]["name"]
            layer["class_name"] = "Activation"
            layer["config"] = {"name": name, "trainable": layer["config"].get("trainable", True),
                               "dtype": layer["config"].get("dtype", "float32"), "activation": activation.strip()}
            changed.append((name, activation.strip()))
    if not changed:
        return net
    try:
        rebuilt = keras.models.model_from_json(json.dumps(full), custom_objects=custom)
        for layer in rebuilt.layers:
            weights = net.get_layer(layer.name).get_weights()
            if weights:
                layer.set_weights(weights)
    except Exception as e:  # noqa: BLE001 - Keras raises many kinds while rebuilding
        raise Failure("bad_input", f"cannot rewrite QActivation layers {', '.join(n for n, _ in changed)} as Keras "
                      f"activations: {first_line(e)}", "convert",
                      "use keras.layers.Activation for activations that do not quantize")
    for name, activation in changed:
        rewrites.append({"layer": name, "from": f'QActivation("{activation}")', "to": f'Activation("{activation}")',
                         "why": "hls4ml converts only quantizing QKeras activations; this one quantizes nothing"})
    return rebuilt


def keras_io(net):
    """Inputs (name, shape) and outputs (name, activation) of a Keras model."""
    names = list(getattr(net, "input_names", None) or [t.name.split(":")[0] for t in net.inputs])
    inputs = [(n, tuple(int(d) for d in t.shape[1:])) for n, t in zip(names, net.inputs)]
    out_names = list(getattr(net, "output_names", None) or [t.name.split(":")[0] for t in net.outputs])
    outputs = []
    for name in out_names:
        try:
            layer = net.get_layer(name)
        except ValueError:
            layer = None
        outputs.append((name, activation_name(layer)))
    return inputs, outputs


def activation_name(layer):
    if layer is None:
        return None
    activation = getattr(layer, "activation", None)
    if activation is None:
        return {"Softmax": "softmax", "ReLU": "relu"}.get(type(layer).__name__)
    if isinstance(activation, str):
        return activation.strip()
    return getattr(activation, "__name__", None) or type(activation).__name__


def keras_layer_outputs(net, xs):
    """Every layer's float output on the samples, by hls4ml's name for the same values.

    hls4ml splits a layer with an activation (Dense(..., activation="relu") named `fc`) into
    `fc` (before the activation) and `fc_relu` (after): the Keras output is `fc_relu`'s. Before
    a relu the positive values are the same, so `fc` gets them for the range check only.
    Returns (exact, range_only)."""
    keras, _ = import_keras()
    wanted = []
    own_nodes = getattr(net, "_network_nodes", None)
    for layer in net.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        # A layer may belong to several graphs (strip_pruning reuses the wrapped layers):
        # take its output in this model's graph.
        nodes = [i for i in range(len(layer.inbound_nodes))
                 if own_nodes is None or f"{layer.name}_ib-{i}" in own_nodes]
        if len(nodes) != 1:
            continue  # a layer used twice has no single output
        try:
            wanted.append((layer, layer.get_output_at(nodes[0])))
        except (AttributeError, ValueError, RuntimeError):
            continue
    probe = keras.Model(net.inputs, [t for _, t in wanted])
    values = probe.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    if len(wanted) == 1:
        values = [values]
    exact, range_only = {}, {}
    for (layer, _), value in zip(wanted, values):
        value = np.asarray(value)
        activation = activation_name(layer) if hasattr(layer, "activation") else None
        if type(layer).__name__ in ("Activation", "QActivation") or activation in (None, "linear"):
            exact[layer.name] = value
            continue
        exact[f"{layer.name}_{activation}"] = value
        if activation == "relu":
            range_only[layer.name] = value
    return exact, range_only


# ---------------------------------------------------------------------------------------------
# PyTorch

def load_sidecar(class_file):
    """The model's Python file: it defines the class (and may set INPUT_SHAPE, MODEL_CLASS).
    Its names are also put in __main__, where pickles of whole models saved from a script
    look for their class."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("hlsfarm_user_model", class_file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - user code raises anything
        raise Failure("bad_input", f"the model's Python file {os.path.basename(class_file)} fails to import: {first_line(e)}",
                      "convert", "run the file with python to see the error")
    main = sys.modules.get("__main__")
    for name, value in vars(module).items():
        if not name.startswith("_") and main is not None and not hasattr(main, name):
            setattr(main, name, value)
    return module


def normalize_shapes(shape):
    """One shape `(3, 8, 8)` or several `[(4,), (6,)]` as a list of tuples."""
    shape = list(shape)
    if shape and all(isinstance(s, (list, tuple)) for s in shape):
        return [tuple(int(d) for d in s) for s in shape]
    return [tuple(int(d) for d in shape)]


def load_pytorch(model):
    import torch
    path = model["path"]
    module = load_sidecar(model["class_file"]) if model.get("class_file") else None
    try:
        # Whole pickled models run code when loaded: hlsfarm takes models only from
        # authenticated operators (see the security notes in deploy/README.md).
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds
        raise Failure("bad_input", f"cannot load {os.path.basename(path)} with torch.load: {first_line(e)}", "convert",
                      "check that the file is complete and saved with torch.save; a pickled whole model needs its "
                      "class in <model>.py beside it")
    if isinstance(obj, torch.nn.Module):
        net = obj
    else:
        if module is None:
            raise Failure("bad_input", f"{os.path.basename(path)} is a state_dict: the model's class is needed", "convert",
                          "put the Python file defining the model class beside it as <model>.py")
        class_name = model.get("class_name") or getattr(module, "MODEL_CLASS", None)
        if isinstance(class_name, type):
            cls = class_name
        elif class_name:
            cls = getattr(module, class_name, None)
        else:
            found = [v for v in vars(module).values()
                     if isinstance(v, type) and issubclass(v, torch.nn.Module) and v.__module__ == module.__name__]
            cls = found[0] if len(found) == 1 else None
        if cls is None:
            raise Failure("bad_input", f"cannot tell which class in {os.path.basename(model['class_file'])} is the model",
                          "convert", "define exactly one nn.Module subclass there, or set MODEL_CLASS = TheClass")
        net = cls()
        try:
            net.load_state_dict(obj)
        except Exception as e:  # noqa: BLE001
            raise Failure("bad_input", f"the state_dict does not fit {cls.__name__}: {first_line(e)}", "convert", None)
    net.eval()
    shape = model.get("input_shape") or (getattr(module, "INPUT_SHAPE", None) if module else None)
    if not shape:
        # A model that starts with a Linear layer tells its input size itself.
        first = next((m for m in net.modules() if not list(m.children())), None)
        if isinstance(first, torch.nn.Linear):
            shape = [first.in_features]
    if not shape:
        raise Failure("bad_input", "a PyTorch model needs its input shape", "convert",
                      "set INPUT_SHAPE = (3, 32, 32) (without the batch dimension) in <model>.py; for several "
                      "inputs a list of shapes, INPUT_SHAPE = [(21,), (13,)]")
    shapes = normalize_shapes(shape)
    import inspect
    params = [p for p in inspect.signature(net.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in params[:len(shapes)]]
    if len(names) < len(shapes):
        names += [f"input_{i}" for i in range(len(names), len(shapes))]
    if len(params) > len(shapes) and all(p.default is inspect.Parameter.empty for p in params[len(shapes):]):
        raise Failure("bad_input", f"forward() takes {len(params)} inputs ({', '.join(p.name for p in params)}) but "
                      f"INPUT_SHAPE gives {len(shapes)}", "convert",
                      "set INPUT_SHAPE to a list with one shape per input, in forward()'s order")
    inputs = list(zip(names, shapes))
    config_shape = [(None,) + s for s in shapes] if len(shapes) > 1 else (None,) + shapes[0]
    return net, inputs, config_shape


def pytorch_reference(net, xs):
    import torch
    with torch.no_grad():
        out = net(*[torch.from_numpy(x) for x in xs])
    if isinstance(out, (list, tuple)):
        return [o.numpy() for o in out]
    return [out.numpy()]


def pytorch_layer_outputs(net, xs):
    """Each leaf module's output, by hls4ml's name for it (dots become underscores)."""
    import torch
    values, hooks = {}, []
    for name, module in net.named_modules():
        if name and not list(module.children()):
            def hook(_m, _i, out, name=name):
                if isinstance(out, torch.Tensor):
                    values.setdefault(name.replace(".", "_"), []).append(out.detach().numpy())
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(*[torch.from_numpy(x) for x in xs])
    finally:
        for h in hooks:
            h.remove()
    return {k: np.concatenate(v) for k, v in values.items()}, {}


# ---------------------------------------------------------------------------------------------
# ONNX / QONNX

def fold_input_preprocessing(qm, rewrites, user_names):
    """Unsqueeze/Squeeze/Reshape/Flatten nodes that only reshape a graph input (as tf2onnx
    writes them in front of a model) are folded into the input's shape: exact, since the data
    and its order are unchanged. Returns the inputs whose shape changed."""
    from onnx import helper
    from qonnx.util.basic import get_by_name
    graph = qm.graph
    folded = []
    changed = True
    while changed:
        changed = False
        for node in list(graph.node):
            if node.op_type not in ("Unsqueeze", "Squeeze", "Reshape", "Flatten") or not node.input:
                continue
            source = get_by_name(graph.input, node.input[0])
            if source is None or len(qm.find_consumers(source.name) or []) != 1:
                continue
            out_shape = qm.get_tensor_shape(node.output[0])
            if out_shape is None or any(d is None or d <= 0 for d in out_shape[1:]):
                continue
            if any(out.name == node.output[0] for out in graph.output):
                raise Failure("bad_input", f"the ONNX graph only reshapes its input `{source.name}`", "convert", None)
            new_input = helper.make_tensor_value_info(source.name, source.type.tensor_type.elem_type,
                                                      [1] + list(out_shape[1:]))
            for consumer in qm.find_consumers(node.output[0]) or []:
                for i, name in enumerate(consumer.input):
                    if name == node.output[0]:
                        consumer.input[i] = source.name
            index = list(graph.input).index(source)
            graph.input.remove(source)
            graph.input.insert(index, new_input)
            graph.node.remove(node)
            rewrites.append({"layer": node.name or node.output[0],
                             "from": f"{node.op_type} on input {user_names.get(source.name, source.name)}",
                             "to": f"input shape {list(out_shape[1:])}",
                             "why": "a reshape of a graph input folded into the input's shape (exact)"})
            folded.append(source.name)
            changed = True
            break
    return folded


def fixed_batch(wrapper):
    """The graph with batch size 1 in its inputs, outputs and intermediate shapes: the
    reference runs one sample at a time, and a fixed shape lets qonnx fold the shape
    arithmetic that exporters (tf2onnx) write in front of reshapes."""
    graph = wrapper.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    first = inputs[0].type.tensor_type.shape.dim if inputs else []
    batch_param = first[0].dim_param if len(first) > 0 else ""
    batch_value = first[0].dim_value if len(first) > 0 else 1
    for tensor in inputs + list(graph.output) + list(graph.value_info):
        dims = tensor.type.tensor_type.shape.dim
        if len(dims) == 0:
            continue
        d = dims[0]
        symbolic = bool(d.dim_param) and (d.dim_param == batch_param or tensor in inputs)
        unknown = not d.dim_param and d.dim_value == 0
        same = batch_value > 1 and d.dim_value == batch_value
        if symbolic or unknown or same:
            d.ClearField("dim_param")
            d.dim_value = 1
    return wrapper


def load_onnx(model, rewrites):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.util.cleanup import cleanup_model
    try:
        raw = ModelWrapper(model["path"])
        initializers = {i.name for i in raw.graph.initializer}
        # The names users know (cleanup renames the graph's inputs and outputs).
        names = ([i.name for i in raw.graph.input if i.name not in initializers], [o.name for o in raw.graph.output])
        reference = cleanup_model(fixed_batch(ModelWrapper(model["path"])))
        qm = cleanup_model(fixed_batch(ModelWrapper(model["path"])))
        before = len(qm.graph.node)
        qm = cleanup_model(qm.transform(FoldConstants()))
        if len(qm.graph.node) < before:
            rewrites.append({"layer": "(graph)", "from": f"{before} nodes", "to": f"{len(qm.graph.node)} nodes",
                             "why": "constant subgraphs (shape arithmetic) folded with the batch fixed to 1"})
        cleaned = [i.name for i in qm.graph.input if i.name not in initializers]
        fold_input_preprocessing(qm, rewrites, dict(zip(cleaned, names[0])))
        qm = cleanup_model(qm)
        qm = qm.transform(ConvertToChannelsLastAndClean())
        qm = cleanup_model(qm.transform(GemmToMatMul()))
    except Failure:
        raise
    except Exception as e:  # noqa: BLE001 - onnx raises many kinds
        raise Failure("bad_input", f"cannot read {os.path.basename(model['path'])} as ONNX: {first_line(e)}", "convert",
                      "check the file; hand-built graphs need explicit Conv attributes (strides, pads, dilations, group)")
    return qm, reference, names


def onnx_io(graph, names):
    """Inputs (user's name, shape) and outputs (user's name, activation) of the reference."""
    initializers = {i.name for i in graph.initializer}
    inputs = []
    for i, tensor in enumerate(t for t in graph.input if t.name not in initializers):
        dims = [d.dim_value for d in tensor.type.tensor_type.shape.dim][1:]
        inputs.append((names[0][i] if i < len(names[0]) else tensor.name, tuple(dims)))
    producers = {o: n for n in graph.node for o in n.output}
    outputs = []
    for i, tensor in enumerate(graph.output):
        node = producers.get(tensor.name)
        op = node.op_type.lower() if node is not None else None
        outputs.append((names[1][i] if i < len(names[1]) else tensor.name,
                        op if op in ("softmax", "sigmoid", "relu") else None))
    return inputs, outputs


def onnx_reference(reference, xs, full=False):
    """The float graph's outputs, one sample at a time; with `full`, every tensor too."""
    from qonnx.core.onnx_exec import execute_onnx
    initializers = {i.name for i in reference.graph.initializer}
    in_names = [i.name for i in reference.graph.input if i.name not in initializers]
    out_names = [o.name for o in reference.graph.output]
    per_output = {n: [] for n in out_names}
    context = {}
    for i in range(len(xs[0])):
        feed = {name: x[i:i + 1] for name, x in zip(in_names, xs)}
        result = execute_onnx(reference, feed, return_full_exec_context=full)
        for n in out_names:
            per_output[n].append(result[n])
        if full:
            for k, v in result.items():
                context.setdefault(k, []).append(v)
    outs = [np.concatenate(per_output[n]) for n in out_names]
    if full:
        return outs, {k: np.concatenate(v) for k, v in context.items()
                      if all(hasattr(a, "shape") and a.ndim > 0 for a in v)}
    return outs


# ---------------------------------------------------------------------------------------------
# Conversion

def apply_settings(cfg, settings, layer_classes):
    precision = settings["precision"]
    rf = settings["reuse_factor"]
    strategy = {"latency": "Latency", "resource": "Resource",
                "distributed_arithmetic": "distributed_arithmetic"}[settings["strategy"]]
    cfg.setdefault("Model", {})
    cfg["Model"].update({"Precision": precision, "ReuseFactor": rf, "Strategy": strategy})
    names = cfg.get("LayerName", {})
    for name, lc in names.items():
        lc["ReuseFactor"] = rf
        lc["Strategy"] = strategy
        # Float layers get `auto` result types that can collapse a softmax to 1/N
        # (research/conversion.md §6): give them the model's precision instead.
        is_float = layer_classes is None or not layer_classes.get(name, "Q").startswith("Q")
        if is_float:
            prec = lc.get("Precision")
            if isinstance(prec, dict):
                for key, value in prec.items():
                    if value == "auto":
                        prec[key] = precision
            elif prec == "auto":
                lc["Precision"] = precision
    for name, override in (settings.get("layers") or {}).items():
        if name not in names:
            raise Failure("bad_input", f"settings.layers names layer `{name}`, which the model does not have", "convert",
                          "layers are: " + ", ".join(sorted(names)))
        lc = names[name]
        if override.get("reuse_factor"):
            lc["ReuseFactor"] = override["reuse_factor"]
        if override.get("strategy"):
            lc["Strategy"] = {"latency": "Latency", "resource": "Resource"}.get(override["strategy"], override["strategy"])
        if override.get("precision"):
            prec = lc.get("Precision")
            if not isinstance(prec, dict):
                prec = {"result": prec} if prec else {}
            prec.update(override["precision"])
            lc["Precision"] = prec
    return cfg


class Prepared:
    """A model ready for hls4ml and for the float reference, whatever its format."""

    def __init__(self, fmt, net, inputs, outputs, reference, layer_outputs, layer_classes, config_args,
                 config_from, convert_from):
        self.fmt, self.net, self.inputs, self.outputs = fmt, net, inputs, outputs
        self.reference, self.layer_outputs = reference, layer_outputs
        self.layer_classes, self.config_args = layer_classes, config_args
        self.config_from, self.convert_from = config_from, convert_from


def keras_reference(net, xs, batch=32):
    """The float model's outputs for `xs`, one list entry per output: the model called in
    inference mode on `predict`'s batches of 32. Bit-identical to `predict` (checked on dense,
    QKeras, batch-norm and convolutional models) without its per-process tracing, about 0.2 s
    of every trial; `predict` itself if a call fails."""
    try:
        parts = []
        for i in range(0, len(xs[0]), batch):
            chunk = [x[i:i + batch] for x in xs]
            out = net(chunk if len(chunk) > 1 else chunk[0], training=False)
            parts.append([np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else [np.asarray(out)])
        if parts:
            return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
    except Exception:  # noqa: BLE001 - a layer that cannot be called eagerly: predict decides
        pass
    out = net.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    return [np.asarray(o) for o in out] if isinstance(out, list) else [np.asarray(out)]


def prepare(model, rewrites):
    import hls4ml
    fmt = detect_format(model)
    check_not_lfs_pointer(model["path"], "model file")
    if fmt in ("keras_h5", "keras_json"):
        net = load_keras(model, fmt, rewrites)
        inputs, outputs = keras_io(net)

        def reference(xs):
            return keras_reference(net, xs)

        return Prepared(fmt, net, inputs, outputs, reference, lambda xs: keras_layer_outputs(net, xs),
                        {l.name: type(l).__name__ for l in net.layers}, (net,),
                        hls4ml.utils.config_from_keras_model, hls4ml.converters.convert_from_keras_model)
    if fmt == "pytorch":
        net, inputs, config_shape = load_pytorch(model)
        outputs = None  # named after conversion, from hls4ml's outputs
        # Plain PyTorch layers are float (hls4ml renames them, `0` -> `_0`): all get the fix.
        return Prepared(fmt, net, inputs, outputs, lambda xs: pytorch_reference(net, xs),
                        lambda xs: pytorch_layer_outputs(net, xs), None, (net, config_shape),
                        hls4ml.utils.config_from_pytorch_model, hls4ml.converters.convert_from_pytorch_model)
    if fmt == "onnx":
        net, onnx_ref, names = load_onnx(model, rewrites)
        inputs, outputs = onnx_io(onnx_ref.graph, names)
        for i, (name, dims) in enumerate(inputs):
            if any(d <= 0 for d in dims):
                raise Failure("bad_input", f"the ONNX input `{name}` has no fixed shape {list(dims)}", "convert",
                              "export the model with a fixed input shape (batch may stay free)")
        quantized = any(n.op_type in ("Quant", "BipolarQuant", "Trunc") for n in net.graph.node)

        def layer_outputs(xs):
            _, context = onnx_reference(onnx_ref, xs, full=True)
            by_node = {}
            for node in onnx_ref.graph.node:
                if node.output and node.output[0] in context:
                    by_node[node.name or node.output[0]] = context[node.output[0]]
            return by_node, {}

        # QONNX layers carry their own types; a float ONNX graph is all float layers.
        return Prepared(fmt, net, inputs, outputs, lambda xs: onnx_reference(onnx_ref, xs), layer_outputs,
                        {} if quantized else None, (net,),
                        hls4ml.utils.config_from_onnx_model, hls4ml.converters.convert_from_onnx_model)
    raise Failure("bad_input", f"unknown model format `{fmt}`", "convert", "formats: keras_h5, keras_json, pytorch, onnx")


def to_hls(p, settings, output_dir, project_name):
    """hls4ml's model of a prepared model with the trial's settings (nothing written yet)."""
    import hls4ml
    backend = settings["backend"].capitalize()
    try:
        cfg = p.config_from(*p.config_args, granularity="name", backend=backend,
                            default_precision=settings["precision"],
                            default_reuse_factor=settings["reuse_factor"])
        cfg = apply_settings(cfg, settings, p.layer_classes)
        hm = p.convert_from(p.net, hls_config=cfg, output_dir=output_dir, project_name=project_name,
                            backend=backend, io_type=settings["io_type"], part=settings["part"],
                            clock_period=settings["clock_period_ns"])
    except Failure:
        raise
    except Exception as e:  # noqa: BLE001 - hls4ml raises plain Exceptions for unsupported layers
        raise unsupported(e, p, hls4ml.__version__)
    if settings.get("max_array_partition_size"):
        hm.config.config["MaximumSize"] = settings["max_array_partition_size"]
    return hm


def convert(request, timings, rewrites):
    import hls4ml  # noqa: F401 - imported early so import time is not charged to convert

    t = time.monotonic()
    p = prepare(request["model"], rewrites)
    timings["load"] = time.monotonic() - t
    t = time.monotonic()
    hm = to_hls(p, request["settings"], request["output_dir"], request.get("project_name", "myproject"))
    timings["convert"] = time.monotonic() - t
    t = time.monotonic()
    hm.write()
    timings["write"] = time.monotonic() - t
    if p.outputs is None:
        p.outputs = [(name, None) for name in hm.outputs]
    return hm, p


def preflight(hm, settings):
    """What the tools will refuse or struggle with, predicted from hls4ml's layer list before
    any synthesis. Each finding: rule, layer, severity (`error`: the tools will refuse;
    `warning`: they will struggle or hls4ml changed a setting), message, and the fix as
    settings where one is known."""
    findings = []
    io_type = settings.get("io_type", "io_parallel")
    limit = int(settings.get("max_array_partition_size") or 4096)
    requested_rf = int(settings.get("reuse_factor") or 1)
    overrides = settings.get("layers") or {}
    for layer in hm.get_layers():
        strategy = str(layer.get_attr("strategy") or "").lower()
        weights = [w for w in layer.get_weights() if getattr(w, "data", None) is not None]
        largest = max((int(w.data.size) for w in weights), default=0)
        # hls4ml's latency strategy partitions a layer's weight and product arrays completely;
        # Vivado/Vitis HLS refuse a partition above config_array_partition -maximum_size
        # (XFORM 203-103, "partitioned elements number (N) has exceeded the threshold (4096)").
        if io_type == "io_parallel" and strategy == "latency" and largest > limit:
            findings.append({
                "rule": "array_partition", "layer": layer.name, "severity": "error",
                "message": f"layer `{layer.name}` ({layer.class_name}) partitions {largest} elements, above "
                           f"max_array_partition_size {limit}: C synthesis will stop (XFORM 203-103)",
                "fix": {"max_array_partition_size": largest},
                "suggestion": f"raise max_array_partition_size to at least {largest}, or use strategy `resource`",
            })
        # A latency-strategy layer unrolls its multiplications over reuse_factor cycles.
        rf_now = int(layer.get_attr("reuse_factor") or requested_rf)
        if io_type == "io_parallel" and strategy == "latency" and largest > UNROLL_LIMIT * max(rf_now, 1):
            need = math.ceil(largest / UNROLL_LIMIT)
            pick = next((v for v in valid_reuse_factors(hm, layer, weights) if v >= need), need)
            vivado = str(settings.get("backend", "vitis")).lower() == "vivado"
            findings.append({
                "rule": "unroll_limit", "layer": layer.name, "severity": "error" if vivado else "warning",
                "message": f"layer `{layer.name}` ({layer.class_name}) unrolls {math.ceil(largest / max(rf_now, 1))} "
                           f"multiplications per cycle at reuse factor {rf_now}, above the {UNROLL_LIMIT} Vivado HLS "
                           + ("unrolls: pre-synthesis will stop (XFORM 203-504)" if vivado
                              else "unrolls: Vitis HLS goes on but pre-synthesis may take hours"),
                "fix": {"layers": {layer.name: {"reuse_factor": pick}}},
                "suggestion": f"give layer `{layer.name}` reuse_factor {pick} (or more), or use strategy `resource`",
            })
        # hls4ml replaces a reuse factor its layer cannot use by the closest valid one.
        rf = layer.get_attr("reuse_factor")
        wanted = int((overrides.get(layer.name) or {}).get("reuse_factor") or requested_rf)
        if weights and rf is not None and int(rf) != wanted:
            valid = valid_reuse_factors(hm, layer, weights)
            findings.append({
                "rule": "reuse_factor", "layer": layer.name, "severity": "warning",
                "message": f"layer `{layer.name}`: reuse factor {wanted} is not valid for it; hls4ml uses {rf}"
                           + (f" (valid: {', '.join(map(str, valid[:12]))}{', ...' if len(valid) > 12 else ''})"
                              if valid else ""),
                "fix": None,
                "suggestion": f"ask for {rf} (or another valid value) so the trial key says what runs",
            })
    cost = emulation_cost(hm) if io_type == "io_parallel" else 0
    if cost > CHEAP_COMPILE_ABOVE:
        findings.append({
            "rule": "io_parallel_size", "layer": None, "severity": "warning",
            "message": f"io_parallel unrolls about {cost:,} multiplications: emulation and C synthesis will take "
                       "long and need much memory",
            "fix": None, "suggestion": "use io_stream or a larger reuse factor",
        })
    return findings


def valid_reuse_factors(hm, layer, weights):
    """hls4ml's valid reuse factors for a layer with weights (ascending), from its kernel's
    inputs and outputs; empty where hls4ml cannot say."""
    try:
        n_in, n_out = layer.get_attr("n_in"), layer.get_attr("n_out")
        if not (n_in and n_out):
            kernel = weights[0].data
            n_out = int(kernel.shape[-1])
            n_in = int(kernel.size) // max(n_out, 1)
        return sorted(hm.config.backend.get_valid_reuse_factors(int(n_in), int(n_out)))
    except Exception:  # noqa: BLE001 - the list is a courtesy
        return []


def unsupported(error, p, version):
    """hls4ml's refusal, with the layer (name and type) it is about and the fix where known."""
    text = first_line(error)
    kind = None
    m = re.search(r"Unsupported (?:layer type|operation type|QKeras activation): (\S+)", text)
    if m:
        kind = m.group(1)
    culprits = []
    if kind and p.fmt in ("keras_h5", "keras_json"):
        for layer in p.net.layers:
            if type(layer).__name__ == kind:
                culprits.append(f"`{layer.name}` ({kind})")
            elif kind == "unknown" and type(layer).__name__ == "QActivation":
                culprits.append(f"`{layer.name}` (QActivation {getattr(layer, 'activation', '?')!r})")
    elif kind and p.fmt == "onnx":
        culprits = [f"`{n.name or n.output[0]}` ({n.op_type})" for n in p.net.graph.node if n.op_type == kind]
    where = f" at layer {', '.join(culprits[:5])}" if culprits else ""
    if "nsupported" in text or "not supported" in text:
        fix = {
            "Unsqueeze": "export without reshapes in the model, or give the input its final shape",
            "Squeeze": "export without reshapes in the model, or give the input its final shape",
            "unknown": "use a quantizing activation (quantized_relu, quantized_tanh, quantized_sigmoid) or a Keras Activation",
            "GaussianNoise": "remove the layer for inference (it does nothing at inference time)",
        }.get(kind, "replace the layer with one hls4ml supports, or try a newer hls4ml")
        return Failure("bad_input", f"hls4ml {version} cannot convert this model{where}: {text}", "convert", fix)
    return Failure("tool_error", f"hls4ml {version} conversion failed{where}: {text}", "convert", None)


# ---------------------------------------------------------------------------------------------
# Emulation

def load_input_arrays(path, inputs, what, stage, labels=()):
    """One array per model input from an .npz (by input name; `x` or a lone array for a
    one-input model) or an .npy (one-input models), checked against the model's shapes;
    arrays named in `labels` are not inputs. Returns the arrays in the model's input order
    and the whole archive (for labels)."""
    listing = ", ".join(f"{n} {list(s)}" for n, s in inputs)
    check_not_lfs_pointer(path, what)
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises many kinds
        raise Failure("bad_input", f"cannot read the {what} {os.path.basename(path)}: {first_line(e)}",
                      stage, "give an .npz with one array per input name, or an .npy for a one-input model")
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            raise Failure("bad_input", f"the {what} is one array but the model has {len(inputs)} inputs: "
                          f"{listing}", stage, "give an .npz with one array per input name")
        archive = {inputs[0][0]: loaded}
    else:
        archive = {k: loaded[k] for k in loaded.files}
    input_names = {n for n, _ in inputs}
    arrays = {k: v for k, v in archive.items() if k in input_names or k not in labels}
    if len(inputs) == 1 and inputs[0][0] not in arrays:
        if "x" in arrays:
            arrays = {inputs[0][0]: arrays["x"]}
        elif len(arrays) == 1:
            arrays = {inputs[0][0]: next(iter(arrays.values()))}
    missing = [n for n, _ in inputs if n not in arrays]
    if missing:
        raise Failure("bad_input", f"the {what} {os.path.basename(path)} has no array for {', '.join(missing)} "
                      f"(it has {', '.join(sorted(archive)) or 'none'}); the model's inputs are {listing}", stage,
                      "name each array in the .npz after its input (or `x` for a one-input model)")
    xs = []
    for name, shape in inputs:
        x = np.asarray(arrays[name], dtype=np.float32)
        if x.ndim == len(shape):
            x = x[None]
        if tuple(x.shape[1:]) != tuple(shape):
            raise Failure("bad_input", f"the {what}'s input `{name}` has shape {list(x.shape)}, the model expects "
                          f"[N, {', '.join(map(str, shape))}]; the model's inputs are {listing}", stage,
                          "give arrays of shape (samples, ...) matching each input")
        xs.append(np.ascontiguousarray(x))
    if len({len(x) for x in xs}) > 1:
        raise Failure("bad_input", f"the {what}'s inputs have different numbers of samples: "
                      + ", ".join(f"{n} {len(x)}" for (n, _), x in zip(inputs, xs)), stage, None)
    return xs, archive


def sample_inputs(request, inputs):
    """One array per input: the user's (an .npz by input name, or an .npy for one input) or
    generated from each input's shape."""
    emulation = request.get("emulation") or {}
    path = emulation.get("inputs")
    if path:
        xs, _ = load_input_arrays(path, inputs, "sample inputs", "emulate")
        return xs, os.path.basename(path)
    rng = np.random.default_rng(int(emulation.get("seed", 0)))
    n = int(emulation.get("samples", 100))
    xs = [np.ascontiguousarray(rng.uniform(-1.0, 1.0, size=(n,) + tuple(shape)).astype(np.float32))
          for _, shape in inputs]
    return xs, "generated uniform(-1, 1)"


def count_parameters(p):
    """The model's trainable and fixed weights, as its framework counts them."""
    try:
        if p.fmt in ("keras_h5", "keras_json"):
            return int(p.net.count_params())
        if p.fmt == "pytorch":
            return int(sum(t.numel() for t in p.net.parameters()))
        if p.fmt == "onnx":
            graph = p.net.graph
            quant_params = {name for node in graph.node if node.op_type in ("Quant", "BipolarQuant", "Trunc")
                            for name in node.input[1:]}
            weights = {name for node in graph.node for i, name in enumerate(node.input)
                       if not (node.op_type in ("Quant", "BipolarQuant", "Trunc") and i > 0)}
            return int(sum(int(np.prod(init.dims)) for init in graph.initializer
                           if init.name in weights or init.name not in quant_params))
    except Exception:  # noqa: BLE001 - a count is a convenience, never a failure
        return None
    return None


def roc_auc(scores, labels):
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties averaged; None
    when the labels hold one class only."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def labels_for(archive, name, index, n_outputs):
    """The labels of output `name`: `y_<name>`, or `y` for the first output."""
    if f"y_{name}" in archive:
        return np.asarray(archive[f"y_{name}"])
    if "y" in archive and (index == 0 or n_outputs == 1):
        return np.asarray(archive["y"])
    return None


def output_accuracy(name, kind, y, pred):
    """Keras's accuracy of one output: binary_accuracy (prediction > 0.5 against 0/1 labels)
    with the ROC AUC, or top-1 (argmax against integer or one-hot labels)."""
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    if kind == "binary":
        truth = y.reshape(len(y), -1)[:, 0].astype(np.float64)
        hit = (pred[:, 0] > 0.5).astype(np.float64) == truth
        return {"accuracy": float(hit.mean()), "auc": roc_auc(pred[:, 0], truth > 0.5)}
    truth = y.reshape(len(y), -1)
    truth = truth.argmax(axis=1) if truth.shape[1] > 1 else truth[:, 0].astype(np.int64)
    return {"accuracy": float((pred.argmax(axis=1) == truth).mean())}


def validation_accuracy(request, hm, p, emulated_ok):
    """Accuracy of the float model and, when the emulation compiled, of the fixed-point one
    on the user's labelled validation set (`validation`: inputs by name plus `y`)."""
    path = (request.get("emulation") or {}).get("validation")
    if not path:
        return None
    labels = {"y"} | {f"y_{n}" for n, _ in p.outputs}
    xs, archive = load_input_arrays(path, p.inputs, "validation set", "emulate", labels)
    n = len(xs[0])
    float_out = [np.asarray(o) for o in p.reference(xs)]
    hls_out = None
    if emulated_ok:
        hls_out, _ = hls_predict(hm, p, xs, len(float_out))
    input_shapes = {tuple(s) for _, s in p.inputs}
    outputs = []
    for i, ((name, activation), ref) in enumerate(zip(p.outputs, float_out)):
        y = labels_for(archive, name, i, len(float_out))
        if y is None:
            continue
        if len(y) != n:
            raise Failure("bad_input", f"the validation set has {len(y)} labels for `{name}` but {n} samples",
                          "emulate", "give one label per sample")
        kind = output_kind(name, activation, ref, input_shapes)
        if kind == "regression":
            continue
        out = {"output": name, "kind": kind}
        fl = output_accuracy(name, kind, y, ref)
        out["float"] = fl["accuracy"]
        if "auc" in fl:
            out["float_auc"] = fl["auc"]
        if hls_out is not None:
            hl = output_accuracy(name, kind, y, np.asarray(hls_out[i]).reshape(ref.shape))
            out["hls"] = hl["accuracy"]
            out["drop"] = out["float"] - out["hls"]
            if "auc" in hl:
                out["hls_auc"] = hl["auc"]
        outputs.append(out)
    if not outputs:
        raise Failure("bad_input", f"the validation set {os.path.basename(path)} has no labels for a binary or "
                      f"multiclass output (it has {', '.join(sorted(archive))}; outputs: "
                      f"{', '.join(n for n, _ in p.outputs)})", "emulate",
                      "add `y` (labels of the first output) or `y_<output name>`")
    acc = dict(outputs[0])
    acc["samples"] = n
    acc["source"] = os.path.basename(path)
    if len(outputs) > 1:
        acc["outputs"] = outputs
    return acc


def hls_predict(hm, p, xs, n_references):
    """The compiled emulation's outputs for the framework-ordered inputs `xs`, in the
    framework's output order."""
    names = [n for n, _ in p.inputs]
    order = names
    if len(names) > 1 and sorted(hm.inputs) == sorted(names):
        order = list(hm.inputs)
    hls_xs = [np.ascontiguousarray(xs[names.index(n)]) for n in order]
    emulated = hm.predict(hls_xs if len(hls_xs) > 1 else hls_xs[0])
    emulated = [np.asarray(e) for e in emulated] if isinstance(emulated, list) else [np.asarray(emulated)]
    out_names = [n for n, _ in p.outputs]
    if len(emulated) == n_references and sorted(hm.outputs) == sorted(out_names) and len(out_names) > 1:
        emulated = [emulated[list(hm.outputs).index(n)] for n in out_names]
    return emulated, hls_xs


def emulation_cost(hm):
    """Multiplications per inference, summed over layers: what the io_parallel C++ unrolls."""
    total = 0
    for layer in hm.get_layers():
        n_in = layer.get_attr("n_in")
        n_out = layer.get_attr("n_out")
        if n_in and n_out:
            total += int(n_in) * int(n_out)
            continue
        if layer.get_attr("n_filt") and layer.get_attr("n_chan"):
            kernel = int(layer.get_attr("filt_height", 1) or 1) * int(layer.get_attr("filt_width", 1) or 1)
            out_pix = int(layer.get_attr("out_height", 1) or 1) * int(layer.get_attr("out_width", 1) or 1)
            total += kernel * int(layer.get_attr("n_chan")) * int(layer.get_attr("n_filt")) * out_pix
    return total


def largest_layer(hm):
    """The most weights any one layer of the converted model holds."""
    largest = 0
    for layer in hm.get_layers():
        for w in layer.get_weights():
            data = getattr(w, "data", None)
            if data is not None:
                largest = max(largest, int(data.size))
    return largest


def cheaper_compile_pays(multiplications, samples):
    """Whether compiling at -Og saves more than its slower predictions of `samples` cost."""
    saved = OG_SAVES_S + OG_SAVES_PER_MULT_S * multiplications
    return OG_COSTS_PER_MULT_SAMPLE_S * multiplications * samples < saved


def predicted_samples(request, xs):
    """Samples the emulation will predict: the comparison's, and the validation set's (read
    from its header only); unknown counts as many, which keeps -O3."""
    samples = len(xs[0]) if xs else 0
    validation = (request.get("emulation") or {}).get("validation")
    if validation:
        rows = array_rows(validation)
        samples += rows if rows is not None else 10**9
    return samples


def array_rows(path):
    """The first dimension of the first array in an .npy or .npz, from its header; None when
    it cannot be read so."""
    import zipfile

    def rows(f):
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape = header(f)[0]
        return int(shape[0]) if shape else 1

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith(".npy"))
                with z.open(name) as f:
                    return rows(f)
        with open(path, "rb") as f:
            return rows(f)
    except Exception:  # noqa: BLE001 - any unreadable header means "unknown"
        return None


def cheaper_compile(project_dir):
    """-O3 to -Og in hls4ml's build_lib.sh: bit-exact, half the time and less memory for big models."""
    script = os.path.join(project_dir, "build_lib.sh")
    with open(script) as f:
        text = f.read()
    if 'CFLAGS="-O3' not in text:
        return False
    with open(script, "w") as f:
        f.write(text.replace('CFLAGS="-O3', 'CFLAGS="-Og', 1))
    return True


# A precompiled header for the emulation's compile: hls4ml's build_lib.sh parses the standard
# library, ap_types and nnet_utils afresh for both translation units of every trial (1.6 s of a
# small model's 3.1 s myproject.cpp at -O3; its bridge 1.2 s). The headers a project includes
# are compiled once per header set, compiler and flags into a cache and reused; measured on a
# small QKeras model: 4.3 s -> 3.0 s. gcc accepts a PCH only where the macros it uses are
# defined the same way, and hls4ml defines WEIGHTS_DIR (used in nnet_helpers.h) as the
# project's path; so the PCH and the project both define WEIGHTS_DIR as the name of a string
# that a third, tiny translation unit defines to that same path. Same code, same predictions
# (tests/bench/emulation-flags.py compares them bit for bit). Where anything is not as
# expected, the project compiles as hls4ml wrote it; HLSFARM_EMULATION_PCH=0 turns it off, and
# HLSFARM_CACHE_DIR moves the cache (default ~/.cache/hlsfarm).
PCH_KEEP = 8  # header sets kept in the cache (about 100 MB each)
PCH_HEADER = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]', re.M)
BUILD_LINE = re.compile(r'^(\$\{CC\} \$\{CFLAGS\} \$\{INCFLAGS\}) -D WEIGHTS_DIR="\$\{WEIGHTS_DIR\}" (-c .*)$', re.M)
LINK_LINE = re.compile(r'^(\$\{CC\} \$\{CFLAGS\} \$\{INCFLAGS\} -shared \$\{PROJECT\}\.o \$\{PROJECT\}_bridge\.o)( .*)$', re.M)


def pch_cache_dir():
    base = os.environ.get("HLSFARM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "hlsfarm")
    return os.path.join(base, "pch")


def pch_headers(project_dir):
    """The library headers the project's sources include (standard, ap_types, hls_*,
    nnet_utils), in their order of first appearance; the model's own headers are left out."""
    firmware = os.path.join(project_dir, "firmware")
    sources = [os.path.join(firmware, n) for n in ("defines.h", "parameters.h", "myproject.h", "myproject.cpp")]
    sources += [os.path.join(project_dir, n) for n in os.listdir(project_dir) if n.endswith("_bridge.cpp")]
    sources += [os.path.join(firmware, n) for n in os.listdir(firmware) if n.endswith((".h", ".cpp"))]
    headers = []
    for source in sources:
        with contextlib.suppress(OSError), open(source) as f:
            for kind, name in PCH_HEADER.findall(f.read()):
                name = name.removeprefix("firmware/")
                include = f"<{name}>" if kind == "<" else f'"{name}"'
                library = kind == "<" or name.startswith(("ap_", "hls_", "nnet_utils/"))
                if library and include not in headers:
                    headers.append(include)
    return headers


def precompiled_header(project_dir):
    """Rewrites the project's build_lib.sh to compile with a cached precompiled header (built
    by the script itself with its own flags, the first time). False where it was left as is."""
    import hashlib
    import subprocess
    script = os.path.join(project_dir, "build_lib.sh")
    try:
        with open(script) as f:
            text = f.read()
        headers = pch_headers(project_dir)
        version = subprocess.run(["g++", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    if len(BUILD_LINE.findall(text)) != 2 or len(LINK_LINE.findall(text)) != 1 or not headers:
        return False
    key = hashlib.sha256()
    # What decides the PCH: the compiler, the script's flags (everything but the project's
    # own names), the library headers' text and which of them are included.
    flags = [line for line in text.splitlines() if not line.startswith(("PROJECT=", "LIB_STAMP=", "BASEDIR=",
                                                                        "WEIGHTS_DIR="))]
    key.update(version.encode())
    key.update("\n".join(flags).encode())
    for folder in ("ap_types", "nnet_utils"):
        root = os.path.join(project_dir, "firmware", folder)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                key.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    key.update(f.read())
    key.update("\n".join(headers).encode())
    cache = pch_cache_dir()
    folder = os.path.join(cache, key.hexdigest()[:24])
    try:
        os.makedirs(cache, exist_ok=True)
        if not os.path.isdir(folder):
            prune_pch_cache(cache)
            staging = tempfile.mkdtemp(prefix=".staging-", dir=cache)
            with open(os.path.join(staging, "hlsfarm_pch.h"), "w") as f:
                f.write("// hlsfarm: the library headers of hls4ml projects like " + os.path.basename(project_dir)
                        + ", precompiled (see the driver's precompiled_header).\n"
                        "extern const char *hlsfarm_weights_dir;\n"
                        + "".join(f"#include {h}\n" for h in headers))
            try:
                os.rename(staging, folder)
            except OSError:  # another trial made it first
                shutil.rmtree(staging, ignore_errors=True)
        os.utime(folder)
    except OSError:
        return False
    pch = os.path.join(folder, "hlsfarm_pch.h")
    include = f'-include "{pch}" -D WEIGHTS_DIR=hlsfarm_weights_dir'
    # The script builds the PCH with its own CFLAGS if it is not there yet (trials starting
    # together may each build one; each is renamed into place complete). A failed build is
    # not tried again for that header set: the header is then included as plain text.
    build = (f'PCH="{pch}"\n'
             'if [ ! -f "${PCH}.gch" ] && [ ! -f "${PCH}.failed" ]; then\n'
             '  if ${CC} ${CFLAGS} ${INCFLAGS} -Ifirmware -D WEIGHTS_DIR=hlsfarm_weights_dir -x c++-header "${PCH}" '
             '-o "${PCH}.gch.$$" 2>/dev/null; then mv -f "${PCH}.gch.$$" "${PCH}.gch"; '
             'else rm -f "${PCH}.gch.$$"; touch "${PCH}.failed"; fi\n'
             'fi\n'
             'echo "const char *hlsfarm_weights_dir = ${WEIGHTS_DIR};" > hlsfarm_weights_dir.cpp\n'
             '${CC} ${CFLAGS} -c hlsfarm_weights_dir.cpp -o hlsfarm_weights_dir.o\n')
    first = BUILD_LINE.search(text)
    text = text[:first.start()] + build + text[first.start():]
    text = BUILD_LINE.sub(lambda m: f"{m.group(1)} -Ifirmware {include} {m.group(2)}", text)
    text = LINK_LINE.sub(lambda m: f"{m.group(1)} hlsfarm_weights_dir.o{m.group(2)}", text)
    text = text.replace("rm -f *.o", "rm -f *.o hlsfarm_weights_dir.cpp")
    with open(script, "w") as f:
        f.write(text)
    return True


def prune_pch_cache(cache):
    """Keeps the PCH_KEEP - 1 header sets used last (and removes staging left by a crash)."""
    with contextlib.suppress(OSError):
        entries = [os.path.join(cache, n) for n in os.listdir(cache)]
        for stale in [e for e in entries if os.path.basename(e).startswith(".staging-")
                      and time.time() - os.path.getmtime(e) > 3600]:
            shutil.rmtree(stale, ignore_errors=True)
        kept = sorted((e for e in entries if not os.path.basename(e).startswith(".")), key=os.path.getmtime)
        for old in kept[:max(0, len(kept) - (PCH_KEEP - 1))]:
            shutil.rmtree(old, ignore_errors=True)


def output_kind(name, activation, ref, input_shapes):
    """binary (one unit in [0,1] or a sigmoid), multiclass (softmax, or several logits), or
    regression (anything else: reconstructions, values, images)."""
    per_sample = ref.reshape(len(ref), -1)
    units = per_sample.shape[1]
    in_unit_range = bool(np.all(per_sample >= 0.0) and np.all(per_sample <= 1.0))
    if activation == "softmax":
        return "multiclass"
    if units == 1:
        return "binary" if activation == "sigmoid" or (activation is None and in_unit_range) else "regression"
    if activation in ("sigmoid", "relu", "tanh") or ref.ndim > 2:
        return "regression"
    if tuple(ref.shape[1:]) in input_shapes:
        return "regression"  # same shape as an input: a reconstruction
    sums = per_sample.sum(axis=1)
    if in_unit_range and np.allclose(sums, 1.0, atol=1e-3):
        return "multiclass"  # probabilities
    return "multiclass" if activation in (None, "linear") and units <= 32 else "regression"


def compare_output(name, kind, ref, emu, max_error, min_agreement):
    ref = ref.astype(np.float64).reshape(len(ref), -1)
    emu = emu.astype(np.float64).reshape(len(emu), -1)
    diff = np.abs(ref - emu)
    out = {"name": name, "kind": kind, "units": int(ref.shape[1]),
           "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max())}
    if kind == "binary":
        out["agreement"] = float(((ref[:, 0] >= 0.5) == (emu[:, 0] >= 0.5)).mean())
        scale = 1.0
    elif kind == "multiclass":
        out["agreement"] = float((ref.argmax(axis=1) == emu.argmax(axis=1)).mean())
        probabilities = bool(np.all(ref >= 0) and np.all(ref <= 1))
        scale = 1.0 if probabilities else max(float(ref.max() - ref.min()), 1e-9)
    else:
        scale = max(float(ref.max() - ref.min()), float(np.abs(ref).max()), 1e-9)
        out["relative_error"] = float(diff.max() / scale)
    out["collapsed"] = bool(len(ref) > 1 and np.allclose(emu, emu[0]) and not np.allclose(ref, ref[0]))
    error = float(diff.max() / scale)
    problems = []
    # Multiclass outputs are judged by their argmax: softmax tables are approximate by design.
    if error > max_error and kind != "multiclass":
        problems.append(f"max |diff| {out['max_abs_diff']:.3g} is {error:.0%} of the output's scale "
                        f"(tolerance {max_error:.0%})")
    if "agreement" in out and out["agreement"] < min_agreement:
        problems.append(f"agreement {out['agreement']:.2f} below {min_agreement:.2f}")
    if out["collapsed"]:
        problems.append("every emulated output is the same")
    out["within_tolerance"] = not problems
    if problems:
        out["problem"] = "; ".join(problems)
    return out


def precision_text(precision):
    """A fixed-point type as users write it: ap_fixed<16,6>, with modes only where not default."""
    width, integer = getattr(precision, "width", None), getattr(precision, "integer", None)
    if width is None or integer is None:
        return str(precision)
    name = "ap_fixed" if getattr(precision, "signed", True) else "ap_ufixed"
    rounding = str(getattr(precision, "rounding_mode", "") or "").upper()
    saturation = str(getattr(precision, "saturation_mode", "") or "").upper()
    modes = []
    if rounding and "TRN" not in rounding.replace("TRN_ZERO", "X"):
        modes.append(rounding.split(".")[-1])
    if saturation and "WRAP" not in saturation:
        modes.append(saturation.split(".")[-1])
    return f"{name}<{width},{integer}{''.join(',' + m for m in modes)}>"


def precision_limits(precision):
    """The largest magnitude a fixed-point type holds, its integer bits, signedness, overflow mode."""
    width = getattr(precision, "width", None)
    integer = getattr(precision, "integer", None)
    if width is None or integer is None:
        return None
    signed = bool(getattr(precision, "signed", True))
    frac = width - integer
    limit = 2.0 ** (integer - 1 if signed else integer) - 2.0 ** (-frac)
    mode = getattr(precision, "saturation_mode", None)
    saturates = mode is not None and "SAT" in str(mode).upper()
    return limit, integer, signed, saturates


def find_divergence(hm, p, xs, hls_xs, max_error, cheap):
    """Where the fixed-point model departs from the float one: first the first layer (in
    hls4ml's order) whose float values leave its fixed-point range; failing that, hls4ml's
    trace of every layer's output against the float model's, and the first layer whose
    difference passes the tolerance."""
    try:
        floats, range_only = p.layer_outputs(xs)
    except Exception as e:  # noqa: BLE001 - tracing is best effort; the figures stand without it
        return {"layer": None, "message": f"could not trace the float model's layers: {first_line(e)}"}
    for i, (name, _) in enumerate(p.inputs):
        floats.setdefault(name, xs[i])
    found = range_overflow(hm, {**range_only, **floats})
    if found:
        return found
    try:
        traced = trace_hls(hm, hls_xs, cheap)
    except Exception as e:  # noqa: BLE001 - hls4ml's trace is best effort
        traced, note = {}, f"hls4ml's trace failed: {first_line(e)}"
    else:
        note = None
    previous = None
    for layer in hm.get_layers():
        ref, emu = floats.get(layer.name), traced.get(layer.name)
        if ref is None or emu is None or np.size(ref) != np.size(emu):
            continue
        ref = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
        emu = np.asarray(emu, dtype=np.float64).reshape(len(ref), -1)
        scale = max(float(np.abs(ref).max()), 1e-9)
        error = float(np.abs(ref - emu).max()) / scale
        if error <= max_error:
            previous = layer
            continue
        precision = layer.get_output_variable().type.precision
        message = (f"layer `{layer.name}` ({layer.class_name}) is the first to depart: max |diff| "
                   f"{float(np.abs(ref - emu).max()):.3g} on float values up to {scale:.3g} ({error:.0%}), "
                   f"result type {precision_text(precision)}")
        suggestion = (f"give `{layer.name}` more fractional bits (a wider precision for its result), "
                      "or check hls4ml's profiling of this layer")
        if layer.class_name in ("Softmax", "Activation", "HardActivation") and previous is not None:
            feeding = previous.get_output_variable().type.precision
            integer = getattr(feeding, "integer", None)
            table = layer.get_attr("table_size", 1024)
            if integer is not None and integer > 8:
                message += (f"; its lookup table ({table} entries) is indexed by the input's top bits, and the "
                            f"input `{previous.name}` is {precision_text(feeding)} with {integer} integer bits, so "
                            "close inputs fall on one entry")
                suggestion = (f"give `{previous.name}`'s result fewer integer bits (e.g. ap_fixed<16,6>), or set "
                              f"the precision of `{layer.name}`'s input table (`inp_norm`/`table`) explicitly")
        return {"layer": layer.name, "layer_class": layer.class_name, "float_max_abs": scale,
                "precision": precision_text(precision), "relative_error": error,
                "message": message, "suggestion": suggestion}
    return {"layer": None, "message": note or ("no single layer departs beyond the tolerance: the difference "
                                               "builds up over layers from rounding"),
            "suggestion": "try a wider precision (more fractional bits), or per-layer precision from hls4ml's profiling"}


def range_overflow(hm, floats):
    """The first layer whose float values leave the range of its result type, with the fix."""
    for layer in hm.get_layers():
        values = floats.get(layer.name)
        if values is None:
            continue
        try:
            precision = layer.get_output_variable().type.precision
        except Exception:  # noqa: BLE001 - layers without a typed output
            continue
        limits = precision_limits(precision)
        if limits is None or not np.size(values):
            continue
        limit, integer, signed, saturates = limits
        peak, low = float(np.max(np.abs(values))), float(np.min(values))
        if peak <= limit and (signed or low >= 0):
            continue
        needed = max(1, math.ceil(math.log2(peak + 1e-12)) + (1 if signed else 0) + 1) if peak > 0 else integer
        type_text = precision_text(precision)
        verb = "saturates" if saturates else "wraps around"
        if not signed and low < 0:
            message = (f"layer `{layer.name}` ({layer.class_name}): float outputs go down to {low:.4g}, "
                       f"unsigned {type_text} cannot hold them")
        else:
            message = (f"layer `{layer.name}` ({layer.class_name}): float outputs reach {peak:.4g}, "
                       f"{type_text} {verb} at ±{limit:.4g}: give it {needed} integer bits")
        width = max(precision.width, needed + (precision.width - integer))
        return {"layer": layer.name, "layer_class": layer.class_name, "float_max_abs": peak,
                "float_min": low, "precision": type_text, "limit": limit,
                "integer_bits": integer, "integer_bits_needed": needed, "message": message,
                "suggestion": f"give `{layer.name}` {needed} integer bits, e.g. ap_fixed<{width},{needed}> "
                              "for its result (settings.layers) or for the model"}
    return None


def trace_hls(hm, hls_xs, cheap):
    """Every layer's fixed-point output (hls4ml's trace). hls4ml's trace() writes and compiles
    the project again, with trace code: it does so in a sibling folder, with the same flags as
    the emulation's compile, so the project the tools synthesize (perhaps at this very moment,
    beside the emulation) is never rewritten."""
    layers = list(hm.get_layers())
    for layer in layers:
        layer.set_attr("trace", True)
    project = hm.config.get_output_dir()
    sibling = project.rstrip("/") + "-trace"
    write = hm.write

    def write_then_flags():
        write()
        if cheap:
            cheaper_compile(sibling)

    hm.write = write_then_flags
    hm.config.config["OutputDir"] = sibling
    try:
        _, traced = hm.trace(hls_xs if len(hls_xs) > 1 else hls_xs[0])
    finally:
        hm.write = write
        hm.config.config["OutputDir"] = project
        for layer in layers:
            layer.set_attr("trace", False)
        hm.config.trace_output = False
        shutil.rmtree(sibling, ignore_errors=True)
    return traced


def project_ready(request):
    """Tells the worker the project is written and will not change (`ready` in the request):
    the tool stages may start beside the emulation."""
    path = request.get("ready")
    if path:
        with open(path + ".tmp", "w") as f:
            f.write("ready\n")
        os.replace(path + ".tmp", path)


def emulate(request, hm, p, timings, result):
    emulation = request.get("emulation") or {}
    t = time.monotonic()
    xs, source = sample_inputs(request, p.inputs)
    timings["samples"] = time.monotonic() - t
    t = time.monotonic()
    cost = emulation_cost(hm) if request["settings"]["io_type"] == "io_parallel" else 0
    budget = float(emulation.get("compile_budget") or 1.0)
    if cost > SKIP_EMULATION_ABOVE * budget:
        result["emulation_note"] = (f"emulation skipped: its io_parallel C++ unrolls about {cost:,} multiplications, "
                                    f"past {int(SKIP_EMULATION_ABOVE * budget):,}; the compile would take tens of "
                                    "minutes and GBs of memory; use io_stream or a larger reuse factor, or raise "
                                    "emulation.compile_budget")
        return None
    big = cost > CHEAP_COMPILE_ABOVE * budget
    pays = big or cheaper_compile_pays(emulation_cost(hm), predicted_samples(request, xs))
    cheap = pays and cheaper_compile(hm.config.get_output_dir())
    if cheap and big:
        result["emulation_note"] = f"emulation compiled with -Og instead of -O3 (about {cost:,} multiplications unrolled; bit-exact)"
    if os.environ.get("HLSFARM_EMULATION_PCH", "1") != "0" and precompiled_header(hm.config.get_output_dir()):
        print(f"hlsfarm: emulation compiled with a precompiled header from {pch_cache_dir()}", file=sys.stderr)
    try:
        hm._compile()  # write() already ran: compile() would write the project again
    except Exception as e:  # noqa: BLE001 - g++ failures surface as plain exceptions
        raise Failure("tool_error", f"hls4ml compile() failed: {first_line(e)}", "emulate",
                      "the generated C++ did not build with g++; see the log for the compiler error")
    timings["compile"] = time.monotonic() - t
    t = time.monotonic()
    references = p.reference(xs)
    timings["reference"] = time.monotonic() - t
    # hls4ml's own input order; the framework's names map onto it where they agree.
    t = time.monotonic()
    emulated, hls_xs = hls_predict(hm, p, xs, len(references))
    timings["predict"] = time.monotonic() - t
    if len(emulated) != len(references):
        raise Failure("tool_error", f"the emulation gave {len(emulated)} outputs, the float model {len(references)}",
                      "emulate", None)
    max_error = float(emulation.get("max_error") or DEFAULT_MAX_ERROR)
    min_agreement = float(emulation.get("min_agreement") or DEFAULT_MIN_AGREEMENT)
    input_shapes = {tuple(s) for _, s in p.inputs}
    outputs = []
    for (name, activation), ref, emu in zip(p.outputs, references, emulated):
        ref = np.asarray(ref)
        emu = np.asarray(emu).reshape(ref.shape) if emu.size == ref.size else emu
        if emu.size != ref.size:
            raise Failure("tool_error", f"output `{name}`: the emulation gave {emu.size} values, the float model "
                          f"{ref.size}", "emulate", None)
        kind = output_kind(name, activation, ref, input_shapes)
        outputs.append(compare_output(name, kind, ref, emu, max_error, min_agreement))
    all_ref = np.concatenate([np.asarray(r, dtype=np.float64).reshape(len(xs[0]), -1) for r in references], axis=1)
    all_emu = np.concatenate([np.asarray(e, dtype=np.float64).reshape(len(xs[0]), -1) for e in emulated], axis=1)
    diff = np.abs(all_ref - all_emu)
    fidelity = {
        "samples": int(len(xs[0])),
        "inputs": source,
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff": float(diff.max()),
        "collapsed": any(o["collapsed"] for o in outputs),
        "outputs": outputs,
        "within_tolerance": all(o["within_tolerance"] for o in outputs),
    }
    if len(outputs) == 1:
        # Readers of the one-output figure keep it; it is the output's agreement where one fits.
        fidelity["argmax_agreement"] = outputs[0].get(
            "agreement", float((all_ref.argmax(axis=1) == all_emu.argmax(axis=1)).mean()))
    if not fidelity["within_tolerance"]:
        t = time.monotonic()
        fidelity["divergence"] = find_divergence(hm, p, xs, hls_xs, max_error, cheap)
        timings["trace"] = time.monotonic() - t
    return fidelity


def preflight_batch(request):
    """Preflight of many (model, settings) points in one process: hls4ml converts each (no
    project written, no compile) and the findings are returned by id. Each model is loaded
    once. Used by `hlsfarm check` and by `run --fix` before anything is queued."""
    import tempfile

    out, loaded = {}, {}
    with tempfile.TemporaryDirectory(prefix="hlsfarm-preflight-") as scratch:
        for i, item in enumerate(request["preflight_batch"]):
            model, settings = item["model"], item["settings"]
            try:
                key = json.dumps(model, sort_keys=True)
                if key not in loaded:
                    loaded[key] = prepare(model, [])
                hm = to_hls(loaded[key], settings, os.path.join(scratch, str(i)), "myproject")
                out[item["id"]] = {"findings": preflight(hm, settings)}
            except Failure as f:
                out[item["id"]] = {"failure": f.as_dict()}
    return out


WARNING = re.compile(r"^WARNING: (.*)$")


def cpu_seconds():
    """CPU time of this process and its waited-for children (hls4ml's g++), seconds."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main():
    request_path, result_path = sys.argv[1], sys.argv[2]
    with open(request_path) as f:
        request = json.load(f)
    result = {"ok": False, "timings": {}, "warnings": [], "rewrites": []}
    tee = Tee(sys.stdout)
    stage = "convert"
    cpu_start, cpu_emulate = cpu_seconds(), None
    try:
        with contextlib.redirect_stdout(tee):
            import hls4ml
            result["hls4ml_version"] = hls4ml.__version__
            if "preflight_batch" in request:
                result["batch"] = preflight_batch(request)
                result["ok"] = True
                return 0
            hm, p = convert(request, result["timings"], result["rewrites"])
            result["format"] = p.fmt
            result["inputs"] = [{"name": n, "shape": list(s)} for n, s in p.inputs]
            result["outputs"] = [{"name": n} for n, _ in p.outputs]
            layers = [{"name": l.name, "class": l.class_name, "reuse_factor": l.get_attr("reuse_factor")}
                      for l in hm.get_layers()]
            result["layers"] = layers
            result["effective_reuse_factor"] = {l["name"]: l["reuse_factor"] for l in layers
                                                if l["reuse_factor"] is not None}
            t = time.monotonic()
            result["preflight"] = preflight(hm, request["settings"])
            result["timings"]["preflight"] = time.monotonic() - t
            refused = [f for f in result["preflight"] if f["severity"] == "error"]
            if request.get("strict") and refused:
                raise Failure("bad_input", "preflight (--strict): " + "; ".join(f["message"] for f in refused),
                              "convert", "; ".join(f["suggestion"] for f in refused))
            t = time.monotonic()
            result["parameters"] = count_parameters(p)
            result["multiplications"] = emulation_cost(hm)
            result["largest_layer"] = largest_layer(hm)
            result["timings"]["counts"] = time.monotonic() - t
            result["fidelity"] = None
            project_ready(request)
            if request.get("emulate") or (request.get("emulation") or {}).get("validation"):
                cpu_emulate = cpu_seconds()
            if request.get("emulate"):
                stage = "emulate"
                result["fidelity"] = emulate(request, hm, p, result["timings"], result)
            if (request.get("emulation") or {}).get("validation"):
                stage = "emulate"
                t = time.monotonic()
                result["accuracy"] = validation_accuracy(request, hm, p, result["fidelity"] is not None)
                result["timings"]["validate"] = time.monotonic() - t
        result["ok"] = True
    except Failure as f:
        result["failure"] = f.as_dict()
    except MemoryError:
        result["failure"] = {"class": "oom", "reason": "out of memory in hls4ml", "stage": stage,
                             "suggestion": "give the trial more memory"}
    except Exception as e:  # noqa: BLE001 - anything else is reported, classified as a tool error
        traceback.print_exc()
        result["failure"] = {"class": "tool_error", "reason": f"{type(e).__name__}: {first_line(e)}",
                             "stage": stage, "suggestion": None}
    finally:
        cpu_end = cpu_seconds()
        split = cpu_end if cpu_emulate is None else cpu_emulate
        result["cpu"] = {"convert": split - cpu_start, "emulate": cpu_end - split}
        result["warnings"] = [m.group(1).strip() for line in tee.buffer.getvalue().splitlines()
                              if (m := WARNING.match(line.strip()))]
        with open(result_path + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(result_path + ".tmp", result_path)
    return 0


# ---------------------------------------------------------------------------------------------
# The warm interpreter (`--serve SOCKET FAMILY`): the frameworks imported once, a child forked
# per trial.

def warm(family):
    """Imports what every trial of a model family needs, without running any of it (no
    TensorFlow session, no model): what is imported here is paid once, not per trial."""
    import hls4ml  # noqa: F401
    import hls4ml.converters  # noqa: F401
    import hls4ml.utils  # noqa: F401
    if family == "keras":
        import_keras()
        import h5py  # noqa: F401
        with contextlib.suppress(ImportError):
            import tensorflow_model_optimization  # noqa: F401
    elif family == "pytorch":
        import torch  # noqa: F401
    elif family == "onnx":
        import onnx  # noqa: F401
        from qonnx.core.modelwrapper import ModelWrapper  # noqa: F401
        from qonnx.util.cleanup import cleanup_model  # noqa: F401
        with contextlib.suppress(ImportError):
            import onnxruntime  # noqa: F401


# TensorFlow's autograph rewrites (parses, transforms, compiles) the Python code of QKeras's
# layers and quantizers the first time a model using them is loaded: about 0.5 s of a small
# model's 1 s load. The seed script pays it once per pool worker; a child forked per trial would
# pay it every trial. So each child tells the warm interpreter which functions it rewrote (a
# line each in LEARNED, beside the socket), and the interpreter rewrites them itself between
# trials into autograph's own cache (keyed by code object and options), which later children
# inherit. The commonest are done before any child asks. Pure Python: nothing of TensorFlow's
# runtime starts in the interpreter, so forking stays safe; a rewrite that fails costs nothing
# (the trial rewrites it, as before).
AUTOGRAPH_FIRST = ("qkeras.quantizers:BaseQuantizer.build", "qkeras.quantizers:_round_through",
                   "qkeras.quantizers:quantized_bits.__call__", "qkeras.qlayers:QDense.call",
                   "qkeras.qlayers:QActivation.call", "qkeras.quantizers:quantized_relu.__call__")


class Autograph:
    """Autograph's rewrites: recorded in a child, replayed in the warm interpreter."""

    def __init__(self):
        from tensorflow.python.autograph.core import converter
        from tensorflow.python.autograph.impl import api
        self.api, self.converter = api, converter
        self.options = converter.ConversionOptions(
            recursive=True, user_requested=False, internal_convert_user_code=True,
            optional_features=frozenset())

    @staticmethod
    def available(family):
        if family != "keras":
            return None
        try:
            autograph = Autograph()
        except (ImportError, TypeError, AttributeError):
            return None
        return autograph if hasattr(autograph.api, "_convert_actual") else None

    def record(self, path):
        """In a child: append `module:qualname` of each function rewritten with the usual
        options to `path` when the child ends (those autograph's cache did not hold)."""
        api, seen = self.api, []
        actual = api._convert_actual

        def cached(entity, program_ctx):
            try:
                transpiler = api._TRANSPILER
                return transpiler._cache.has(entity, transpiler.get_caching_key(program_ctx))
            except Exception:  # noqa: BLE001 - another TensorFlow's internals: count it as rewritten
                return False

        def recording(entity, program_ctx):
            if program_ctx.options == self.options and not cached(entity, program_ctx):
                function = getattr(entity, "__func__", entity)
                seen.append(f"{getattr(function, '__module__', '')}:{getattr(function, '__qualname__', '')}")
            return actual(entity, program_ctx)

        api._convert_actual = recording

        def flush():
            if seen:
                with contextlib.suppress(OSError), open(path, "a") as f:
                    f.write("".join(name + "\n" for name in dict.fromkeys(seen)))
        return flush

    def rewrite(self, name):
        """In the interpreter: rewrite the function `module:qualname` (of a module it has
        imported; user code is never imported here). True when it was rewritten."""
        module_name, _, qualname = name.partition(":")
        target = sys.modules.get(module_name)
        if target is None or "<" in qualname:
            return False
        for part in qualname.split("."):
            target = getattr(target, part, None)
        if not hasattr(target, "__code__"):
            return False
        try:
            self.api._convert_actual(target, self.converter.ProgramContext(options=self.options))
        except Exception:  # noqa: BLE001 - an optimisation: the trial rewrites it itself
            return False
        return True


def run_forked(req, fds, family, at_exit=None):
    """In the forked child: become the trial's process (its group, stdio, folder,
    environment, arguments), run it as `main()` would and exit with its code."""
    code = 70
    try:
        with contextlib.suppress(OSError):
            os.setpgid(0, req["pgid"])
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = [sys.argv[0]] + list(req["argv"])
        print(f"hlsfarm: forked from the warm {family} interpreter (pid {os.getppid()})",
              file=sys.stderr, flush=True)
        code = main() or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not return to the loop
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            if at_exit:
                at_exit()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def read_request(conn):
    """The client's request: its stdio descriptors, then one JSON line."""
    import socket
    conn.settimeout(30)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return json.loads(data), fds


def serve(path, family):
    """The fork server: imports `family`'s frameworks, then listens on the Unix socket `path`
    (it appears once the imports are done) and forks a child per trial. The child joins the
    client's process group, so the worker's limits, cancel and memory sampling see it as the
    trial's own process; this loop reaps it and tells the client its exit status. A client that
    goes away takes its child with it (SIGKILL). The server ends when its parent does."""
    import selectors
    import signal
    import socket

    started = time.monotonic()
    warm(family)
    imported = time.monotonic() - started
    # The commonest rewrites are done before the socket opens: a trial forked before them pays
    # each itself (about 1 s of a first QKeras trial's 1.3 s), and the first trials of a run
    # are the ones that would, all at once, while this loop competes for the same cores.
    autograph = Autograph.available(family)
    done = set()
    if autograph:
        for name in AUTOGRAPH_FIRST:
            done.add(name)
            autograph.rewrite(name)
    print(f"hlsfarm: warm {family} interpreter ready in {time.monotonic() - started:.1f} s "
          f"(imports {imported:.1f} s; pid {os.getpid()})", flush=True)
    sys.stderr.flush()
    parent = os.getppid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path + ".tmp")
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.replace(path + ".tmp", path)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    sel.register(wake_r, selectors.EVENT_READ, None)
    children = {}  # pid -> the client's connection

    def forget(pid):
        conn = children.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                sel.unregister(conn)
            conn.close()

    served = 0
    learned = path + ".learned"
    pending, learned_at = [], 0
    while True:
        # Rewrites are done one at a time when nothing waits (tens of milliseconds each), so a
        # trial is never kept waiting long; forks happen only between them.
        events = sel.select(timeout=0 if pending else 1.0)
        if autograph and not events:
            with contextlib.suppress(OSError):
                if os.stat(learned).st_size > learned_at:
                    with open(learned) as f:
                        f.seek(learned_at)
                        lines = f.read().splitlines()
                        learned_at = f.tell()
                    pending += [n for n in dict.fromkeys(lines) if n not in done and n not in pending]
            if pending:
                name = pending.pop(0)
                done.add(name)
                if autograph.rewrite(name):
                    print(f"hlsfarm: autograph rewrote {name} ahead of trials", flush=True)
                continue
        for key, _ in events:
            if key.fileobj is listener:
                conn, _ = listener.accept()
                try:
                    req, fds = read_request(conn)
                except (OSError, ValueError) as e:
                    print(f"hlsfarm: a bad request to the warm interpreter: {e}", file=sys.stderr, flush=True)
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    sel.close()
                    listener.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    for other in children.values():
                        other.close()
                    conn.close()
                    run_forked(req, fds, family, autograph.record(learned) if autograph else None)
                for fd in fds:
                    os.close(fd)
                # Both sides set the group, so a kill of the group never misses the child.
                with contextlib.suppress(OSError):
                    os.setpgid(pid, req["pgid"])
                served += 1
                try:
                    conn.settimeout(5)
                    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                except OSError:
                    pass
                children[pid] = conn
                sel.register(conn, selectors.EVENT_READ, pid)
            elif key.fileobj == wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
            else:
                # The client said something or went away: either way its child goes too.
                pid = key.data
                with contextlib.suppress(OSError):
                    if not key.fileobj.recv(512):
                        os.kill(pid, signal.SIGKILL)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.get(pid)
            if conn is not None:
                answer = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status)
                          else {"exit": os.waitstatus_to_exitcode(status)})
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(answer).encode() + b"\n")
            forget(pid)
        if os.getppid() != parent:
            for pid in list(children):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.unlink(path)
            # A parent that was killed (SIGKILL, the OOM killer) could not remove the pool's
            # private folder (the scripts, the logs, the sockets): the server does.
            folder = os.path.dirname(os.path.abspath(path))
            if os.path.basename(folder).startswith("hlsfarm-warm-"):
                import shutil
                shutil.rmtree(folder, ignore_errors=True)
            return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        sys.exit(serve(sys.argv[2], sys.argv[3]))
    sys.exit(main())
