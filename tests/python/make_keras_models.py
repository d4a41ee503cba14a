"""Writes Keras/QKeras models shaped like the ones users hand over, made here from scratch
(never copies of anyone's files), each trained for a few steps on synthetic data so that its
outputs are not uniform. Run in the hls4ml (Keras) venv:

    python make_keras_models.py OUT_DIR [KIND ...]
    python make_keras_models.py --search OUT_DIR [--count 3] [--seed 0]

Kinds (default: all):
    four_input       a functional QKeras model with four named inputs (x_profile 21,
                     z_global 1, y_profile 13, y_local 1), two Concatenate branches merged by a
                     third, QDense with quantized_bits(4,0,alpha=1), QActivation(quantized_relu(8,0)),
                     Dropout, and a one-unit output followed by QActivation("sigmoid")
    two_output       an autoencoder with a classifier head: outputs `reconstruction` (the
                     16 inputs again) and `label` (softmax over 4 classes)
    pruned_cnn       a QKeras CNN (QConv2DBatchnorm, QConv2D, QDense) inside tfmot
                     prune_low_magnitude wrappers, saved without strip_pruning
    overflow         a float MLP (one regression output) whose hidden layer's outputs reach
                     about 70: the default ap_fixed<16,6> (range +-32) cannot hold them
    big_cnn          a float CNN on 32x32x3 images whose io_parallel emulation is costly to
                     compile (several 3x3 convolutions with 16-32 filters)
    lfs_pointer      `lfs_pointer.h5`: a Git LFS pointer file under a model's name

--search writes a folder laid out as a Keras Tuner search over the four-input model writes
it: model_trial_<id>.h5, hyperparams_trial_<id>.json, trials_summary.json, and a validation
set `validation.npz` (one array per input name, plus `y`).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

FOUR_INPUTS = {"x_profile": 21, "z_global": 1, "y_profile": 13, "y_local": 1}


def four_input_data(n, seed):
    """Synthetic pixel-cluster-like features and a binary label that depends on them."""
    rng = np.random.default_rng(seed)
    x = {name: rng.normal(0.0, 1.0, size=(n, width)).astype(np.float32) for name, width in FOUR_INPUTS.items()}
    score = x["x_profile"][:, 8:13].sum(axis=1) - x["y_profile"][:, 4:9].sum(axis=1) + 1.5 * x["z_global"][:, 0]
    y = (score + 0.5 * rng.normal(size=n) > 0).astype(np.float32)
    return x, y


def four_input(hp, seed=0):
    """The search's model: hp holds `branch_units`, `merged_units`, `dropout`."""
    from qkeras import QActivation, QDense, quantized_bits, quantized_relu

    keras.utils.set_random_seed(seed)
    q = quantized_bits(4, 0, alpha=1)
    inputs = {name: keras.Input(shape=(width,), name=name) for name, width in FOUR_INPUTS.items()}

    def dense(units, name):
        return QDense(units, kernel_quantizer=q, bias_quantizer=q, name=name)

    xz = keras.layers.Concatenate(name="xz_concat")([inputs["x_profile"], inputs["z_global"]])
    xz = dense(hp["branch_units"], "xz_dense")(xz)
    xz = QActivation(quantized_relu(8, 0), name="xz_relu")(xz)
    yl = keras.layers.Concatenate(name="yl_concat")([inputs["y_profile"], inputs["y_local"]])
    yl = dense(hp["branch_units"], "yl_dense")(yl)
    yl = QActivation(quantized_relu(8, 0), name="yl_relu")(yl)
    merged = keras.layers.Concatenate(name="merged")([xz, yl])
    m = dense(hp["merged_units"], "merged_dense1")(merged)
    m = QActivation(quantized_relu(8, 0), name="merged_relu1")(m)
    m = keras.layers.Dropout(hp["dropout"], name="merged_dropout")(m)
    out = dense(1, "output_dense")(m)
    out = QActivation("sigmoid", name="output")(out)
    return keras.Model(list(inputs.values()), out)


def train_four_input(model, seed, epochs=2):
    x, y = four_input_data(4096, seed)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=256, verbose=0)
    return model


def make_four_input(out):
    model = train_four_input(four_input({"branch_units": 16, "merged_units": 16, "dropout": 0.1}), 0)
    model.save(os.path.join(out, "four_input.h5"), save_format="h5")


def make_two_output(out):
    keras.utils.set_random_seed(1)
    inp = keras.Input(shape=(16,), name="features")
    code = keras.layers.Dense(6, activation="relu", name="encoder")(inp)
    recon = keras.layers.Dense(16, name="reconstruction")(code)
    hidden = keras.layers.Dense(8, activation="relu", name="head")(code)
    label = keras.layers.Dense(4, activation="softmax", name="label")(hidden)
    model = keras.Model(inp, [recon, label])
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(2048, 16)).astype(np.float32)
    y = keras.utils.to_categorical(np.argmax(x[:, :4], axis=1), 4)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=["mse", "categorical_crossentropy"])
    model.fit(x, [x, y], epochs=3, batch_size=128, verbose=0)
    model.save(os.path.join(out, "two_output.h5"), save_format="h5")
    # A labelled validation set for the softmax output, one-hot as Keras takes it, and the
    # accuracy Keras's own metric gives on it.
    x_val = rng.uniform(-1, 1, size=(512, 16)).astype(np.float32)
    y_val = keras.utils.to_categorical(np.argmax(x_val[:, :4], axis=1), 4)
    np.savez(os.path.join(out, "two_output_validation.npz"), features=x_val, y_label=y_val)
    metric = keras.metrics.CategoricalAccuracy()
    metric.update_state(y_val, model.predict(x_val, verbose=0)[1])
    with open(os.path.join(out, "two_output_validation.json"), "w") as f:
        json.dump({"label_accuracy": float(metric.result().numpy())}, f)


def make_pruned_cnn(out):
    import tensorflow_model_optimization as tfmot
    from qkeras import QActivation, QConv2D, QConv2DBatchnorm, QDense, quantized_bits, quantized_relu

    keras.utils.set_random_seed(2)
    q = quantized_bits(6, 0, alpha=1)
    prune = tfmot.sparsity.keras.prune_low_magnitude
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=1)
    inp = keras.Input(shape=(8, 8, 1), name="image")
    x = prune(QConv2DBatchnorm(4, (3, 3), kernel_quantizer=q, bias_quantizer=q, name="conv1"),
              pruning_schedule=schedule)(inp)
    x = QActivation(quantized_relu(6, 0), name="relu1")(x)
    x = prune(QConv2D(4, (3, 3), kernel_quantizer=q, bias_quantizer=q, name="conv2"),
              pruning_schedule=schedule)(x)
    x = QActivation(quantized_relu(6, 0), name="relu2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = prune(QDense(3, kernel_quantizer=q, bias_quantizer=q, name="dense"), pruning_schedule=schedule)(x)
    outp = keras.layers.Activation("softmax", name="softmax")(x)
    model = keras.Model(inp, outp)
    rng = np.random.default_rng(2)
    x_train = rng.uniform(-1, 1, size=(512, 8, 8, 1)).astype(np.float32)
    y_train = keras.utils.to_categorical(np.argmax(x_train[:, :3, 0, 0], axis=1), 3)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="categorical_crossentropy")
    model.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    model.save(os.path.join(out, "pruned_cnn.h5"), save_format="h5")


def make_overflow(out):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input(shape=(8,), name="x"),
        keras.layers.Dense(16, activation="linear", name="wide_dense"),
        keras.layers.Dense(1, activation="linear", name="value"),
    ])
    # Weights that carry inputs in [-1, 1] to +-30..100 in the hidden layer: beyond the
    # +-32 of the default ap_fixed<16,6>, well inside float.
    w = np.full((8, 16), 20.0, dtype=np.float32) * np.sign(np.random.default_rng(3).normal(size=(1, 16)))
    model.get_layer("wide_dense").set_weights([w, np.zeros(16, dtype=np.float32)])
    w2 = np.random.default_rng(4).normal(0, 0.5, size=(16, 1)).astype(np.float32)
    model.get_layer("value").set_weights([w2, np.zeros(1, dtype=np.float32)])
    model.save(os.path.join(out, "overflow.h5"), save_format="h5")


def make_big_cnn(out):
    keras.utils.set_random_seed(5)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input(shape=(32, 32, 3), name="image"),
        layers.Conv2D(16, (3, 3), activation="relu", name="conv1"),
        layers.Conv2D(16, (3, 3), activation="relu", name="conv2"),
        layers.MaxPooling2D((2, 2), name="pool1"),
        layers.Conv2D(32, (3, 3), activation="relu", name="conv3"),
        layers.MaxPooling2D((2, 2), name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(10, activation="softmax", name="classes"),
    ])
    model.save(os.path.join(out, "big_cnn.h5"), save_format="h5")


def make_lfs_pointer(out):
    with open(os.path.join(out, "lfs_pointer.h5"), "w") as f:
        f.write("version https://git-lfs.github.com/spec/v1\n"
                "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
                "size 123456\n")


KINDS = {
    "four_input": make_four_input,
    "two_output": make_two_output,
    "pruned_cnn": make_pruned_cnn,
    "overflow": make_overflow,
    "big_cnn": make_big_cnn,
    "lfs_pointer": make_lfs_pointer,
}


def make_search(out, count, seed):
    """A Keras Tuner-style search folder over the four-input model."""
    rng = np.random.default_rng(seed)
    x_val, y_val = four_input_data(1024, seed + 1000)
    summary = []
    for i in range(count):
        hp = {
            "branch_units": int(rng.choice([4, 8, 16, 32])),
            "merged_units": int(rng.choice([4, 8, 16, 32])),
            "dropout": float(rng.choice([0.0, 0.1, 0.2])),
            "learning_rate": 0.01,
        }
        trial_id = f"{i:02d}"
        model = train_four_input(four_input(hp, seed + i), seed + i, epochs=1 + i % 3)
        model_file = f"model_trial_{trial_id}.h5"
        hp_file = f"hyperparams_trial_{trial_id}.json"
        model.save(os.path.join(out, model_file), save_format="h5")
        with open(os.path.join(out, hp_file), "w") as f:
            json.dump(hp, f, indent=2)
        _, accuracy = model.evaluate(x_val, y_val, verbose=0)
        summary.append({
            "trial_id": trial_id,
            "model_file": model_file,
            "hyperparams_file": hp_file,
            "hyperparameters": hp,
            "val_accuracy": float(accuracy),
            "total_params": int(model.count_params()),
            "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        })
        print(f"{model_file}: {hp} val_accuracy {accuracy:.3f}")
    summary.sort(key=lambda t: -t["val_accuracy"])
    for rank, t in enumerate(summary, 1):
        t["rank"] = rank
    with open(os.path.join(out, "trials_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    np.savez(os.path.join(out, "validation.npz"), y=y_val, **x_val)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("kinds", nargs="*", help="any of: " + ", ".join(KINDS))
    parser.add_argument("--search", action="store_true")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    if args.search:
        make_search(args.out_dir, args.count, args.seed)
        return 0
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kind(s) {', '.join(unknown)}; kinds are: {', '.join(KINDS)}")
    for kind in args.kinds or list(KINDS):
        KINDS[kind](args.out_dir)
        print(f"{kind}: written to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
