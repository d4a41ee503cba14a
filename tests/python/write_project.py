"""Writes a real hls4ml project (no compile) from a Keras JSON + weights model, for the
stand-in's tests. Usage: write_project.py MODEL.json WEIGHTS.h5 OUT_DIR BACKEND IO_TYPE PART
[STRATEGY REUSE_FACTOR]. Prints one JSON line: the project folder and hls4ml's version."""

import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# hls4ml picks its Keras parser from `import keras`; with tf-keras installed it must see Keras 2.
import tf_keras  # noqa: E402

sys.modules["keras"] = tf_keras

import hls4ml  # noqa: E402


def main():
    model_json, weights, out_dir, backend, io_type, part = sys.argv[1:7]
    strategy = sys.argv[7] if len(sys.argv) > 7 else "Latency"
    reuse = int(sys.argv[8]) if len(sys.argv) > 8 else 1
    config = {
        "KerasJson": model_json,
        "KerasH5": weights,
        "OutputDir": out_dir,
        "ProjectName": "myproject",
        "Backend": backend,
        "Part": part,
        "ClockPeriod": 5,
        "IOType": io_type,
        "HLSConfig": {"Model": {"Precision": "ap_fixed<16,6>", "ReuseFactor": reuse, "Strategy": strategy}},
    }
    model = hls4ml.converters.keras_v2_to_hls(config)
    model.write()
    print(json.dumps({"project": out_dir, "hls4ml": hls4ml.__version__}))


if __name__ == "__main__":
    main()
