"""Small built-in Keras models. Each is a gin configurable called as
`model_fn(input_shape, num_classes)` and returns a model that outputs logits."""

from __future__ import annotations

from collections.abc import Sequence

import gin
import keras


def _numbered(name: str, i: int) -> str:
    """Keras's own naming in a fresh process: `name`, `name_1`, `name_2`, ..."""
    return name if i == 0 else f"{name}_{i}"


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
