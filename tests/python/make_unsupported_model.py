"""Writes a full Keras 2 model (`unsupported_layer.h5`, saved with tf_keras as QKeras users
save theirs) with a layer hls4ml has no converter for (GaussianNoise between two Dense
layers). Run in the hls4ml (Keras) venv:

    python make_unsupported_model.py OUT_DIR
"""
import os
import sys


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(shape=(16,)),
            keras.layers.Dense(8, activation="relu", name="fc1"),
            keras.layers.GaussianNoise(0.1, name="noise"),
            keras.layers.Dense(5, activation="softmax", name="out"),
        ]
    )
    model.save(os.path.join(out, "unsupported_layer.h5"))


if __name__ == "__main__":
    main()
