"""Small built-in Keras models. Each is a gin configurable called as
`model_fn(input_shape, num_classes)` and returns a model that outputs logits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gin
import keras

INITS = ("keras", "torch")


def _numbered(name: str, i: int) -> str:
    """Keras's own naming in a fresh process: `name`, `name_1`, `name_2`, ..."""
    return name if i == 0 else f"{name}_{i}"


def _check_init(owner: str, init: str) -> None:
    if init not in INITS:
        raise ValueError(f"{owner}.init must be one of {', '.join(map(repr, INITS))}, got {init!r}")


def _init(init: str, fan_in: int) -> dict[str, Any]:
    """Initializer arguments of a `Dense`/`Conv1D` layer with `fan_in` inputs per output
    (`kernel_size * in_channels` for a convolution). "keras": Keras's defaults
    (Glorot-uniform kernel, zero bias). "torch": PyTorch's defaults for `nn.Linear` and
    `nn.Conv1d` (`kaiming_uniform_(a=sqrt(5))` and its bias rule), kernel and bias both
    uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`."""
    if init == "keras":
        return {}
    bound = 1.0 / math.sqrt(fan_in)
    return {
        # sqrt(3 * scale / fan_in) with scale 1/3 is 1/sqrt(fan_in)
        "kernel_initializer": keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform"),
        "bias_initializer": keras.initializers.RandomUniform(-bound, bound),
    }


@gin.configurable
def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (128,),
    activation: str = "relu",
) -> keras.Model:
    """Flatten, then `Dense(h, activation)` for each `h` in `hidden`, then logits.

    Layers are named `dense`, `dense_1`, ..., `logits` explicitly (Keras would number
    them per process), so the `grad/<layer>/kernel` tags of every run in one process
    (a sweep) line up in TensorBoard."""
    layers = [keras.Input(tuple(input_shape)), keras.layers.Flatten()]
    layers += [
        keras.layers.Dense(int(h), activation=activation, name=_numbered("dense", i))
        for i, h in enumerate(hidden)
    ]
    layers.append(keras.layers.Dense(num_classes, name="logits"))
    return keras.Sequential(layers, name="mlp")


@gin.configurable
def cnn(
    input_shape: Sequence[int],
    num_classes: int,
    filters: Sequence[int] = (16, 32),
    kernel_size: int = 3,
    dense: int = 64,
) -> keras.Model:
    """`Conv2D(f, kernel_size, same) + ReLU + 2x2 max-pool` for each `f` in `filters`
    (pooling stops once the image is 1 pixel wide), then `Dense(dense)` and logits.
    Needs image input `[height, width, channels]`."""
    if len(input_shape) != 3:
        raise ValueError(
            f"cnn needs image input [height, width, channels], got input shape "
            f"{tuple(input_shape)}; use Trainer.model = @mlp for flat features"
        )
    layers: list = [keras.Input(tuple(input_shape))]
    size = min(input_shape[:2])
    for i, f in enumerate(filters):
        layers.append(
            keras.layers.Conv2D(
                int(f), kernel_size, padding="same", activation="relu", name=_numbered("conv2d", i)
            )
        )
        if size >= 2:
            layers.append(keras.layers.MaxPooling2D(2))
            size //= 2
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dense(int(dense), activation="relu", name="dense"),
        keras.layers.Dense(num_classes, name="logits"),
    ]
    return keras.Sequential(layers, name="cnn")


def _as_sequence(x: keras.KerasTensor, input_shape: Sequence[int]) -> keras.KerasTensor:
    """`[batch, length]` signals as `[batch, length, 1]`; `[batch, length, channels]` as is."""
    if len(input_shape) == 1:
        return keras.layers.Reshape((int(input_shape[0]), 1), name="to_sequence")(x)
    if len(input_shape) == 2:
        return x
    raise ValueError(
        f"mnist1d_cnn needs 1-D signals [length] or [length, channels], got input shape "
        f"{tuple(input_shape)}"
    )


@gin.configurable
def mnist1d_cnn(
    input_shape: Sequence[int],
    num_classes: int,
    channels: int = 25,
    batch_norm: bool = True,
    init: str = "keras",
) -> keras.Model:
    """The MNIST-1D paper's CNN (`ConvBase` in greydanus/mnist1d, notebooks/models.py),
    with BatchNorm after each convolution.

    `ConvBase` is three `Conv1d` layers and a linear classifier: `Conv1d(1, 25, 5,
    stride=2, padding=1)`, then twice `Conv1d(25, 25, 3, stride=2, padding=1)`, each
    followed by ReLU, then `Linear(125, 10)` on the flattened features. Here each
    convolution is `ZeroPadding1D(1)` + `Conv1D(channels, k, strides=2)` (PyTorch's
    symmetric `padding=1`), so a length-40 signal becomes 19, 10, then 5 positions:
    `5 * 25 = 125` features into the logits, as there. `batch_norm=True` (the default)
    inserts `BatchNormalization` between each convolution and its ReLU (the paper's
    model has none; `batch_norm=False` is `ConvBase`). `init="keras"` (the default)
    initializes as Keras does (Glorot-uniform kernels, zero biases), `init="torch"` as
    PyTorch does (uniform in `+-1/sqrt(fan_in)`, biases too): with both `batch_norm=False`
    and `init="torch"` the model is `ConvBase` as the paper trained it.

    Input `[length]` (as `@mnist1d` gives) or `[length, channels]`; outputs logits.
    Layers are named `conv1d`, `batch_norm`, `relu` (numbered `_1`, `_2`), `logits`.
    """
    _check_init("mnist1d_cnn", init)
    inputs = keras.Input(tuple(input_shape))
    h = _as_sequence(inputs, input_shape)
    for i, kernel_size in enumerate((5, 3, 3)):
        h = keras.layers.ZeroPadding1D(1, name=_numbered("pad", i))(h)
        h = keras.layers.Conv1D(
            int(channels),
            kernel_size,
            strides=2,
            use_bias=not batch_norm,  # BatchNorm's own offset makes a bias redundant
            name=_numbered("conv1d", i),
            **_init(init, kernel_size * int(h.shape[-1])),
        )(h)
        if batch_norm:
            h = keras.layers.BatchNormalization(name=_numbered("batch_norm", i))(h)
        h = keras.layers.ReLU(name=_numbered("relu", i))(h)
    h = keras.layers.Flatten(name="flatten")(h)
    outputs = keras.layers.Dense(num_classes, name="logits", **_init(init, int(h.shape[-1])))(h)
    return keras.Model(inputs, outputs, name="mnist1d_cnn")


@gin.configurable
def mnist1d_mlp(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: int = 100,
    init: str = "keras",
) -> keras.Model:
    """The MNIST-1D paper's MLP (`MLPBase` in greydanus/mnist1d, notebooks/models.py,
    default `hidden_size=100`): `h = relu(W1 x)`, then a residual hidden layer
    `h = h + relu(W2 h)`, then logits `W3 h`. `init` as in `mnist1d_cnn` ("torch":
    PyTorch's `nn.Linear` initialization, as the paper trained it).

    Layers are named `dense`, `dense_1`, `add`, `logits`."""
    _check_init("mnist1d_mlp", init)
    inputs = keras.Input(tuple(input_shape))
    x = keras.layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    width = int(hidden)
    h = keras.layers.Dense(width, "relu", name="dense", **_init(init, int(x.shape[-1])))(x)
    r = keras.layers.Dense(width, "relu", name="dense_1", **_init(init, width))(h)
    h = keras.layers.Add(name="add")([h, r])
    outputs = keras.layers.Dense(num_classes, name="logits", **_init(init, width))(h)
    return keras.Model(inputs, outputs, name="mnist1d_mlp")
