"""hlsfarm's hls4ml driver: one JSON request in, one JSON result out.

    python hlsfarm_driver.py REQUEST.json RESULT.json

The worker writes the request, runs this in the venv that fits the model's format, and reads
the result file; stdout and stderr are the log (hls4ml and TensorFlow print there), never
parsed except for hls4ml's `WARNING:` lines, which are also captured here and returned.

Request:
    {"model": {"path": ..., "format": "auto"|"keras_h5"|"keras_json"|"pytorch"|"onnx",
               "weights": path (keras_json), "class_file": path, "class_name": str,
               "input_shape": [..] (pytorch, without the batch dimension)},
     "settings": {"io_type", "strategy", "reuse_factor", "precision", "part",
                  "clock_period_ns", "backend", "max_array_partition_size"?,
                  "layers": {name: {"reuse_factor"?, "strategy"?, "precision": {var: type}}}},
     "output_dir": ..., "project_name": "myproject",
     "emulate": bool, "emulation": {"samples": 100, "seed": 0, "inputs": path.npy?}}

Result:
    {"ok": true, "hls4ml_version", "format", "timings": {"load": s, "convert": s, "write": s,
     "compile": s, "predict": s}, "warnings": [...], "effective_reuse_factor": {layer: rf},
     "layers": [{"name", "class", "reuse_factor"}], "fidelity": {...} | null}
or  {"ok": false, "failure": {"class", "reason", "stage", "suggestion"}, ...}
"""

import contextlib
import io
import json
import os
import re
import sys
import time
import traceback

# Before anything imports TensorFlow or hls4ml.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


class Failure(Exception):
    """A classified failure: class (DESIGN §3), reason, stage, suggestion."""

    def __init__(self, cls, reason, stage, suggestion=None):
        super().__init__(reason)
        self.cls, self.reason, self.stage, self.suggestion = cls, reason, stage, suggestion


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


def load_keras(model, fmt):
    keras, custom = import_keras()
    path = model["path"]
    try:
        if fmt == "keras_json":
            weights = model.get("weights")
            if not weights:
                raise Failure("bad_input", "a Keras JSON model needs its weights file", "convert",
                              "give the weights .h5 as the model's `weights` companion (NAME_weights.h5)")
            with open(path) as f:
                net = keras.models.model_from_json(f.read(), custom_objects=custom)
            net.load_weights(weights)
        else:
            import h5py
            with h5py.File(path, "r") as f:
                if "model_config" not in f.attrs:
                    raise Failure("bad_input", f"{os.path.basename(path)} holds weights only, no model", "convert",
                                  "save the whole model (model.save), or give the architecture JSON with these weights")
            net = keras.models.load_model(path, custom_objects=custom, compile=False)
    except Failure:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Failure("bad_input", f"cannot load {os.path.basename(path)} as a Keras model: {first_line(e)}", "convert",
                      "check that the file is complete (not truncated) and was saved by Keras 2 / QKeras")
    return net


def load_sidecar(class_file):
    """The model's Python file: it defines the class (and may set INPUT_SHAPE, MODEL_CLASS).
    Its names are also put in __main__, where pickles of whole models saved from a script
    look for their class."""
    import importlib.util
    import sys
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
                      "set INPUT_SHAPE = (3, 32, 32) (without the batch dimension) in <model>.py")
    model["input_shape"] = list(shape)
    return net, tuple([None] + list(shape))


def load_onnx(model):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model
    try:
        reference = cleanup_model(ModelWrapper(model["path"]))
        # The reference runs one sample at a time; some exports fix another batch size,
        # in the inputs, outputs and every intermediate shape.
        graph = reference.graph
        batch = graph.input[0].type.tensor_type.shape.dim[0].dim_value if graph.input[0].type.tensor_type.shape.dim else 1
        for tensor in list(graph.input[:1]) + list(graph.output) + list(graph.value_info):
            dims = tensor.type.tensor_type.shape.dim
            if len(dims) > 0 and dims[0].dim_value in (batch, 0):
                dims[0].dim_value = 1
        qm = cleanup_model(ModelWrapper(model["path"]))
        qm = qm.transform(ConvertToChannelsLastAndClean())
        qm = cleanup_model(qm.transform(GemmToMatMul()))
    except Exception as e:  # noqa: BLE001 - onnx raises many kinds
        raise Failure("bad_input", f"cannot read {os.path.basename(model['path'])} as ONNX: {first_line(e)}", "convert",
                      "check the file; hand-built graphs need explicit Conv attributes (strides, pads, dilations, group)")
    return qm, reference


def first_line(error):
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


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


def convert(request, timings):
    import hls4ml
    import numpy as np  # noqa: F401 - imported early so import time is not charged to convert

    model = request["model"]
    settings = request["settings"]
    fmt = detect_format(model)
    backend = settings["backend"].capitalize()
    common = dict(output_dir=request["output_dir"], project_name=request.get("project_name", "myproject"),
                  backend=backend, io_type=settings["io_type"], part=settings["part"],
                  clock_period=settings["clock_period_ns"])
    t = time.monotonic()
    # Per format: load the model, then the hls4ml config and converter functions to call.
    if fmt in ("keras_h5", "keras_json"):
        net = load_keras(model, fmt)
        layer_classes = {l.name: type(l).__name__ for l in net.layers}
        config_args = (net,)
        config_from, convert_from = hls4ml.utils.config_from_keras_model, hls4ml.converters.convert_from_keras_model
    elif fmt == "pytorch":
        net, shape = load_pytorch(model)
        # Plain PyTorch layers are float (hls4ml renames them, `0` -> `_0`): all get the fix.
        layer_classes = None
        config_args = (net, shape)
        config_from, convert_from = hls4ml.utils.config_from_pytorch_model, hls4ml.converters.convert_from_pytorch_model
    elif fmt == "onnx":
        net, onnx_reference = load_onnx(model)
        quantized = any(n.op_type in ("Quant", "BipolarQuant", "Trunc") for n in net.graph.node)
        # QONNX layers carry their own types; a float ONNX graph is all float layers.
        layer_classes = {} if quantized else None
        config_args = (net,)
        config_from, convert_from = hls4ml.utils.config_from_onnx_model, hls4ml.converters.convert_from_onnx_model
    else:
        raise Failure("bad_input", f"unknown model format `{fmt}`", "convert",
                      "formats: keras_h5, keras_json, pytorch, onnx")
    timings["load"] = time.monotonic() - t
    t = time.monotonic()
    try:
        cfg = config_from(*config_args, granularity="name", backend=backend,
                          default_precision=settings["precision"],
                          default_reuse_factor=settings["reuse_factor"])
        cfg = apply_settings(cfg, settings, layer_classes)
        hm = convert_from(net, hls_config=cfg, **common)
    except Failure:
        raise
    except Exception as e:  # noqa: BLE001 - hls4ml raises plain Exceptions for unsupported layers
        raise unsupported(e)
    if settings.get("max_array_partition_size"):
        hm.config.config["MaximumSize"] = settings["max_array_partition_size"]
    timings["convert"] = time.monotonic() - t
    t = time.monotonic()
    hm.write()
    timings["write"] = time.monotonic() - t
    if fmt == "onnx":
        return hm, onnx_reference, fmt
    return hm, net, fmt


def unsupported(error):
    text = first_line(error)
    if "nsupported" in text or "not supported" in text:
        return Failure("bad_input", f"hls4ml cannot convert this model: {text}", "convert",
                       "replace the layer with one hls4ml supports, or upgrade hls4ml")
    return Failure("tool_error", f"hls4ml conversion failed: {text}", "convert", None)


def sample_inputs(request, input_shape):
    import numpy as np
    emulation = request.get("emulation") or {}
    if emulation.get("inputs"):
        x = np.load(emulation["inputs"])
        return np.ascontiguousarray(x.astype(np.float32))
    rng = np.random.default_rng(int(emulation.get("seed", 0)))
    shape = (int(emulation.get("samples", 100)),) + tuple(input_shape)
    return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)


def emulate(request, hm, net, fmt, timings):
    import numpy as np
    t = time.monotonic()
    try:
        hm.compile()
    except Exception as e:  # noqa: BLE001 - g++ failures surface as plain exceptions
        raise Failure("tool_error", f"hls4ml compile() failed: {first_line(e)}", "emulate",
                      "the generated C++ did not build with g++; see the log for the compiler error")
    timings["compile"] = time.monotonic() - t
    if fmt in ("keras_h5", "keras_json"):
        shapes = net.input_shape
        if isinstance(shapes, list):
            raise Failure("bad_input", "models with several inputs cannot be emulated yet", "emulate", None)
        x = sample_inputs(request, shapes[1:])
        reference = np.asarray(net.predict(x, verbose=0))
    elif fmt == "pytorch":
        import torch
        x = sample_inputs(request, request["model"]["input_shape"])
        with torch.no_grad():
            reference = net(torch.from_numpy(x)).numpy()
    else:
        from qonnx.core.onnx_exec import execute_onnx
        name = net.graph.input[0].name
        dims = [d.dim_value for d in net.graph.input[0].type.tensor_type.shape.dim][1:]
        if any(d <= 0 for d in dims):
            raise Failure("bad_input", f"the ONNX input `{name}` has no fixed shape {dims}", "emulate",
                          "export the model with a fixed input shape (batch may stay free)")
        x = sample_inputs(request, dims)
        out_name = net.graph.output[0].name
        reference = np.concatenate([execute_onnx(net, {name: x[i:i + 1]})[out_name] for i in range(len(x))])
    t = time.monotonic()
    emulated = np.asarray(hm.predict(np.ascontiguousarray(x))).reshape(reference.shape)
    timings["predict"] = time.monotonic() - t
    diff = np.abs(reference.astype(np.float64) - emulated.astype(np.float64))
    flat_ref = reference.reshape(len(x), -1)
    flat_emu = emulated.reshape(len(x), -1)
    return {
        "samples": int(len(x)),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff": float(diff.max()),
        "argmax_agreement": float((flat_ref.argmax(axis=1) == flat_emu.argmax(axis=1)).mean()),
        "collapsed": bool(len(x) > 1 and np.allclose(flat_emu, flat_emu[0]) and not np.allclose(flat_ref, flat_ref[0])),
    }


WARNING = re.compile(r"^WARNING: (.*)$")
REUSE = re.compile(r'Invalid ReuseFactor=(\d+) in layer "([^"]+)"')


def main():
    request_path, result_path = sys.argv[1], sys.argv[2]
    with open(request_path) as f:
        request = json.load(f)
    result = {"ok": False, "timings": {}, "warnings": []}
    tee = Tee(sys.stdout)
    stage = "convert"
    try:
        with contextlib.redirect_stdout(tee):
            import hls4ml
            result["hls4ml_version"] = hls4ml.__version__
            hm, net, fmt = convert(request, result["timings"])
            result["format"] = fmt
            layers = [{"name": l.name, "class": l.class_name, "reuse_factor": l.get_attr("reuse_factor")}
                      for l in hm.get_layers()]
            result["layers"] = layers
            result["effective_reuse_factor"] = {l["name"]: l["reuse_factor"] for l in layers
                                                if l["reuse_factor"] is not None}
            result["fidelity"] = None
            if request.get("emulate"):
                stage = "emulate"
                result["fidelity"] = emulate(request, hm, net, fmt, result["timings"])
        result["ok"] = True
    except Failure as f:
        result["failure"] = {"class": f.cls, "reason": f.reason, "stage": f.stage, "suggestion": f.suggestion}
    except MemoryError:
        result["failure"] = {"class": "oom", "reason": "out of memory in hls4ml", "stage": stage,
                             "suggestion": "give the trial more memory"}
    except Exception as e:  # noqa: BLE001 - anything else is reported, classified as a tool error
        traceback.print_exc()
        result["failure"] = {"class": "tool_error", "reason": f"{type(e).__name__}: {first_line(e)}",
                             "stage": stage, "suggestion": None}
    finally:
        result["warnings"] = [m.group(1).strip() for line in tee.buffer.getvalue().splitlines()
                              if (m := WARNING.match(line.strip()))]
        with open(result_path + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(result_path + ".tmp", result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
