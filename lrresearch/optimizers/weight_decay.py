"""Where an optimizer keeps its weight decay coefficient, so that a controller can set
it every batch (`ControllerOutput.weight_decay`, `lrresearch.step.batch.
OptimizerHyperparameters`), and how an update reads it when it is traced.

Keras 3's optimizers keep it in `weight_decay` (None: no decay) and apply it, decoupled,
before the update: `variable -= variable * weight_decay * learning_rate`
(`BaseOptimizer._apply_weight_decay`). The optimizers here whose decay is their
authors' own (Schedule-Free's `d = g + weight_decay * y`, Prodigy's and D-Adaptation's
`w -= weight_decay * d * lr * w`) keep it in another attribute, named by their class
attribute `weight_decay_attribute`: Keras's base never sees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tensorflow as tf

if TYPE_CHECKING:
    import keras


def weight_decay_attribute(optimizer: keras.optimizers.Optimizer) -> str:
    """The name of the attribute that holds `optimizer`'s weight decay coefficient:
    its class's `weight_decay_attribute`, else Keras's `weight_decay`."""
    return getattr(type(optimizer), "weight_decay_attribute", "weight_decay")


def weight_decay_value(optimizer: keras.optimizers.Optimizer) -> float | None:
    """`optimizer`'s weight decay coefficient (host-side, a Python float), or None when
    it has none (Keras's `weight_decay=None`: Adam, SGD and the others by default)."""
    value = getattr(optimizer, weight_decay_attribute(optimizer), None)
    return None if value is None else float(value)


def decay_coefficient(value: Any, dtype: tf.DType) -> float | tf.Tensor | None:
    """The coefficient as an update uses it when it is traced: None for a Python 0 (no
    decay op is built), a Python float as it is (so float64 arithmetic stays exact), a
    variable a controller sets every batch read and cast to `dtype`."""
    if isinstance(value, (int, float)):
        return float(value) or None
    return tf.cast(tf.convert_to_tensor(value), dtype)
