"""What a user runs instead of hlsfarm on one host: the one-host script as its README
(`shared/seeds`) describes it, rebuilt here for the side-by-side of `hlsfarm bench pool`.
TensorFlow, QKeras and hls4ml are imported once at module level, then a process pool is
forked; each worker loads a model, converts it with hls4ml (Vitis backend, granularity name),
optionally compiles the emulation and predicts, runs the tool flow in one `build()` call
(C synthesis, co-simulation, export, Vivado synthesis: whatever `vitis_hls` is first on PATH),
keeps the essential files and makes a tarball; the parent writes synthesis_results.json.

    python tests/bench/seed_pool.py --input_dir DIR --output_dir OUT --num_workers 2 [--emulate]
"""
import argparse
import glob
import json
import os
import shutil
import sys
import tarfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

STARTED = time.monotonic()

try:
    import tf_keras as keras  # noqa: E402
    sys.modules["keras"] = keras
except ImportError:
    from tensorflow import keras  # noqa: E402
import numpy as np  # noqa: E402
import hls4ml  # noqa: E402
from qkeras.utils import _add_supported_quantized_objects  # noqa: E402

CUSTOM = {}
_add_supported_quantized_objects(CUSTOM)
IMPORTED = time.monotonic() - STARTED

KEEP = ["project.tcl", "vitis_hls.log", "vivado_synth.rpt", "vivado_synth.tcl", "vivado.jou", "vivado.log"]


def one(job):
    path, out_root, part, emulate = job
    name = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(out_root, "hls_" + name)
    started = time.monotonic()
    try:
        model = keras.models.load_model(path, custom_objects=CUSTOM, compile=False)
        config = hls4ml.utils.config_from_keras_model(model, granularity="name", backend="Vitis")
        hm = hls4ml.converters.convert_from_keras_model(
            model, hls_config=config, output_dir=out, part=part, backend="Vitis", io_type="io_parallel")
        hm.write()
        if emulate:
            hm.compile()
            xs = [np.random.default_rng(0).standard_normal((100,) + tuple(i.shape[1:])).astype(np.float32)
                  for i in model.inputs]
            xs = xs[0] if len(xs) == 1 else xs
            hm.predict(xs)
            model.predict(xs, verbose=0)
        report = hm.build(csim=False, synth=True, cosim=True, export=True, vsynth=True)
        kept = [p for p in glob.glob(os.path.join(out, "**", "*"), recursive=True)
                if os.path.basename(p) in KEEP]
        with tarfile.open(out + ".tar.gz", "w:gz") as tar:
            for p in kept:
                tar.add(p, arcname=os.path.relpath(p, out))
        for entry in os.listdir(out):
            full = os.path.join(out, entry)
            if entry not in KEEP:
                shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
        return {"h5_file": os.path.basename(path), "status": "success",
                "seconds": time.monotonic() - started, "report": report}
    except Exception as e:  # noqa: BLE001 - reported per model, as the script does
        return {"h5_file": os.path.basename(path), "status": "failed", "error": str(e),
                "seconds": time.monotonic() - started}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input_dir", required=True)
    ap.add_argument("--output_dir")
    ap.add_argument("--num_workers", type=int, default=4)
    ap.add_argument("--pattern", default="model_trial_*.h5")
    ap.add_argument("--fpga_part", default="xc7z020clg400-1")
    ap.add_argument("--emulate", action="store_true")
    args = ap.parse_args()
    out = args.output_dir or os.path.join(args.input_dir, "hls_outputs")
    os.makedirs(out, exist_ok=True)
    models = sorted(glob.glob(os.path.join(args.input_dir, args.pattern)))
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(args.num_workers) as pool:
        results = pool.map(one, [(m, out, args.fpga_part, args.emulate) for m in models], chunksize=1)
    with open(os.path.join(out, "synthesis_results.json"), "w") as f:
        json.dump({"total": len(results), "successful": sum(r["status"] == "success" for r in results),
                   "import_seconds": IMPORTED, "results": results}, f, indent=2, default=str)
    failed = [r for r in results if r["status"] != "success"]
    for r in failed:
        print(f"{r['h5_file']}: {r['error']}", file=sys.stderr)
    print(f"{len(results)} models, {len(failed)} failed, import {IMPORTED:.1f} s, "
          f"total {time.monotonic() - STARTED:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
