"""Writes a small hyperparameter sweep of QKeras models, named and shaped like the original
script's inputs: `model_trial_000.h5`, ... (whole models in HDF5, 4-bit weights with 0 integer
bits, a few hidden widths), trained for a few steps on a fixed synthetic jet-tagging-like task
so their outputs are not uniform.

    python examples/make_trials.py OUT_DIR [--count 4] [--seed 0]

Run it with the hls4ml venv's python (see .ci/setup): it needs TensorFlow, tf-keras and QKeras.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402
from qkeras import QActivation, QDense, quantized_bits, quantized_relu  # noqa: E402

WIDTHS = [8, 16, 32, 64, 24, 48, 12, 40]


def build(width, depth, seed):
    keras.utils.set_random_seed(seed)
    q = quantized_bits(4, 0, alpha=1)
    inputs = keras.Input(shape=(16,), name="input_1")
    x = inputs
    for i in range(depth):
        x = QDense(width, kernel_quantizer=q, bias_quantizer=q, name=f"fc{i + 1}")(x)
        x = QActivation(quantized_relu(4, 0), name=f"relu{i + 1}")(x)
    x = QDense(5, kernel_quantizer=q, bias_quantizer=q, name="output")(x)
    outputs = keras.layers.Activation("softmax", name="softmax")(x)
    return keras.Model(inputs, outputs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(-1, 1, size=(2048, 16)).astype(np.float32)
    # Five classes decided by fixed projections of the inputs: learnable, not uniform.
    w = np.random.default_rng(1234).normal(size=(16, 5))
    y = keras.utils.to_categorical(np.argmax(x @ w, axis=1), 5)
    for i in range(args.count):
        width = WIDTHS[i % len(WIDTHS)]
        depth = 1 + (i // len(WIDTHS)) % 2
        model = build(width, depth, args.seed + i)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="categorical_crossentropy")
        model.fit(x, y, epochs=2, batch_size=128, verbose=0)
        path = os.path.join(args.out_dir, f"model_trial_{i:03d}.h5")
        model.save(path, save_format="h5")
        print(f"{path}: {depth} hidden layer(s) of width {width}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
