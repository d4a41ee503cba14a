"""Compiles one model's hls4ml emulation (io_parallel, or `IO_TYPE=io_stream`; default
precision) at several g++ optimization levels, or `pch` (-O3 with the driver's precompiled
header); prints compile time, g++'s peak memory, the time to predict 100 samples, and whether
every variant's predictions are bit-identical to the first's. What the driver's choice of `-Og`
for large io_parallel models and its precompiled header rest on (BENCHMARKS.md). Run in the
hls4ml venv:

    python tests/bench/emulation-flags.py MODEL.h5 WORK_DIR -O3 -O1 -Og -O0 pch pch:-O1
"""
import ctypes
import glob
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../worker/python"))

import hlsfarm_driver as driver  # noqa: E402
import numpy as np  # noqa: E402


def main():
    model, work, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
    spec = {"path": os.path.abspath(model), "format": "auto"}
    weights = os.path.splitext(spec["path"])[0] + "_weights.h5"
    if model.endswith(".json") and os.path.exists(weights):
        spec["weights"] = weights
    p = driver.prepare(spec, [])
    settings = {"precision": "ap_fixed<16,6>", "reuse_factor": 1, "strategy": "latency", "backend": "vitis",
                "io_type": os.environ.get("IO_TYPE", "io_parallel"), "part": "xc7z020clg400-1", "clock_period_ns": 5}
    xs, _ = driver.sample_inputs({"emulation": {"samples": 100, "seed": 1}}, p.inputs)
    outputs = {}
    for flag in flags:
        out = os.path.join(os.path.abspath(work), flag.lstrip("-").replace(":", "_"))
        hm = driver.to_hls(p, settings, out, "myproject")
        hm.write()
        script = os.path.join(out, "build_lib.sh")
        with open(script) as f:
            text = f.read()
        if flag.startswith("pch"):
            # The driver's precompiled header (its cache under WORK_DIR), at hls4ml's -O3 or
            # at the level after the colon (`pch:-O1`).
            level = flag.partition(":")[2]
            if level:
                with open(script, "w") as f:
                    f.write(text.replace('CFLAGS="-O3', f'CFLAGS="{level}', 1))
            os.environ["HLSFARM_CACHE_DIR"] = os.path.join(os.path.abspath(work), "cache")
            if not driver.precompiled_header(out):
                sys.exit(f"{flag}: the driver left build_lib.sh as it was")
        else:
            with open(script, "w") as f:
                f.write(text.replace('CFLAGS="-O3', f'CFLAGS="{flag}', 1))
        t = time.monotonic()
        run = subprocess.run(["/usr/bin/time", "-f", "%M", "bash", "build_lib.sh"], cwd=out,
                             capture_output=True, text=True, check=True)
        compile_s = time.monotonic() - t
        peak_mib = int(run.stderr.strip().splitlines()[-1]) / 1024
        hm._top_function_lib = ctypes.cdll.LoadLibrary(glob.glob(os.path.join(out, "firmware", "myproject-*.so"))[0])
        t = time.monotonic()
        y = hm.predict(xs[0] if len(xs) == 1 else xs)
        predict_s = time.monotonic() - t
        ys = y if isinstance(y, list) else [y]
        outputs[flag] = np.concatenate([np.asarray(a).reshape(len(xs[0]), -1) for a in ys], axis=1)
        print(f"{flag}: compile {compile_s:.1f} s, g++ peak {peak_mib:.0f} MiB, predict 100 samples {predict_s:.2f} s",
              flush=True)
    first = flags[0]
    for flag in flags[1:]:
        print(f"{flag}: predictions bit-identical to {first}: {np.array_equal(outputs[flag], outputs[first])}")
    print(f"multiplications unrolled (the driver's estimate): {driver.emulation_cost(hm):,}")


if __name__ == "__main__":
    main()
