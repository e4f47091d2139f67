"""Writes a small MobileNet-like Keras net as .keras, .h5, a SavedModel (Keras 3
``model.export``) and a weights-only file, plus a sample input and Keras' own output on it,
for tests/convert/test_tf.py.

    python tests/convert/tf_models.py OUT_DIR

Run as a script (in a child process): importing TensorFlow costs seconds.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

SHAPE = (1, 24, 24, 3)


def mobilenet_like() -> keras.Model:
    """Conv-BN-ReLU6, depthwise-separable blocks (one residual), pooling, a softmax head."""
    inp = keras.Input(SHAPE[1:], name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
    for filters, stride in ((8, 1), (16, 2)):
        y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        y = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(y))
        y = keras.layers.BatchNormalization()(keras.layers.Conv2D(filters, 1, use_bias=False)(y))
        x = keras.layers.Add()([x, y]) if stride == 1 and filters == x.shape[-1] else y
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(6, activation="softmax", name="probs")(x)
    return keras.Model(inp, out)


def main(out: str) -> None:
    keras.utils.set_random_seed(0)
    m = mobilenet_like()
    for layer in m.layers:  # non-trivial BatchNorm statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, _, _ = layer.get_weights()
            rng = np.random.default_rng(len(g))
            layer.set_weights([g + 0.1, b + 0.1, rng.standard_normal(g.shape) * 0.1, rng.random(g.shape) + 0.5])
    x = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    y = np.asarray(m(x, training=False))
    m.save(os.path.join(out, "net.keras"))
    m.save(os.path.join(out, "net.h5"))
    m.save_weights(os.path.join(out, "only.weights.h5"))
    m.export(os.path.join(out, "saved"), verbose=False)
    np.savez(os.path.join(out, "sample.npz"), x=x, y=y)


if __name__ == "__main__":
    main(sys.argv[1])
