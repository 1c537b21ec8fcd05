"""The float64 scalar state of the optimizers that follow authors' code written with
Python floats (D-Adaptation, Prodigy, MoMo, IAM): a checkpointed scalar created exactly
at its value, float64 sums of a tensor's entries, and the per-batch summaries in
float32."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

STATE_DTYPE = tf.float64  # the authors' scalars are Python floats


def sum64(x: tf.Tensor) -> tf.Tensor:
    """The sum of every entry of `x`, taken in `x`'s dtype, as a float64 scalar."""
    return tf.cast(tf.reduce_sum(x), STATE_DTYPE)


def scalar_state(optimizer: keras.optimizers.Optimizer, name: str, value: float = 0.0):
    """A float64 scalar state variable of `optimizer` (checkpointed with it), starting at
    exactly `value`. Not `keras.initializers.Constant`: it rounds the value through
    float32 (1e-6 would start as 9.99999997e-7)."""

    def initializer(shape: Any, dtype: Any = None) -> tf.Tensor:
        return tf.constant(value, STATE_DTYPE, shape)

    return optimizer.add_variable(shape=(), initializer=initializer, dtype=STATE_DTYPE, name=name)


def float32_summaries(values: Mapping[str, Any]) -> dict[str, tf.Tensor]:
    """`{"optimizer/<name>": float32 scalar}` for `WholeStepOptimizer.step_summaries`."""
    return {
        f"optimizer/{k}": tf.cast(tf.convert_to_tensor(v), tf.float32) for k, v in values.items()
    }
