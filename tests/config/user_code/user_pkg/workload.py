"""A model, a loss and data that lrresearch does not ship, made configurable by gin."""

from __future__ import annotations

import gin
import keras
import numpy as np


@gin.configurable
def tiny_regressor(input_shape: tuple[int, ...], width: int = 4) -> keras.Model:
    """One hidden layer of `width` units, one linear output."""
    inputs = keras.Input(input_shape)
    hidden = keras.layers.Dense(width, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1)(hidden), name="tiny_regressor")


@gin.configurable
def scaled_squared_error(scale: float = 1.0):
    """A per-example loss `(y_true, y_pred) -> scale * mean((y_true - y_pred)**2)`."""

    def loss(y_true, y_pred):
        return scale * keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)

    return loss


@gin.configurable
def noisy_line(examples: int = 32, noise: float = 0.1, seed: int = 0):
    """`(x, y)` float32 arrays: y = 2x + 1 plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(examples, 1)).astype("float32")
    return x, (2 * x + 1 + noise * rng.normal(size=x.shape)).astype("float32")


@gin.configurable
def experiment(model=gin.REQUIRED, loss=gin.REQUIRED, data=gin.REQUIRED) -> float:
    """Builds the workload as the trainer would and returns the untrained loss."""
    x, y = data
    net = model(input_shape=x.shape[1:])
    return float(keras.ops.mean(loss(y, net(x))))


@gin.configurable
def dropout_logit(input_shape: tuple[int, ...], width: int = 16, rate: float = 0.3):
    """One logit per example through BatchNorm and Dropout (issue 22's resumed model)."""
    inputs = keras.Input(input_shape)
    x = keras.layers.BatchNormalization()(keras.layers.Dense(width)(inputs))
    x = keras.layers.Dropout(rate)(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.Dense(1)(x), name="dropout_logit")


@gin.configurable
def digit_strings(examples: int = 512, length: int = 8, seed: int = 0):
    """A `tf.data` text pipeline of unbatched `(x, y)`: strings of `length` random
    digits, parsed in `map` to floats in [0, 1]; y = 1.0 if their sum is odd, shape [1]."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    texts = ["".join(map(str, rng.integers(0, 10, length))) for _ in range(examples)]

    def parse(text):
        digits = tf.strings.unicode_decode(text, "UTF-8") - ord("0")
        x = tf.cast(tf.reshape(digits, [length]), tf.float32) / 9.0
        return x, tf.cast(tf.reshape(tf.reduce_sum(digits) % 2, [1]), tf.float32)

    return tf.data.Dataset.from_tensor_slices(texts).map(parse)


@gin.configurable
def logit_cross_entropy(y_true, y_pred):
    """Per-example binary cross-entropy from one logit."""
    return keras.losses.binary_crossentropy(y_true, y_pred, from_logits=True)


@gin.configurable
def three_targets(examples: int = 64):
    """A tf.data input of unbatched `(x, y)`: x of shape (4,), y of shape (3,) floats."""
    import tensorflow as tf

    x = np.random.default_rng(0).normal(size=(examples, 4)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, x[:, :3]))
