"""Mixed precision for the trainer: the model's dtype policy and dynamic loss scaling.

`Trainer.mixed_precision` is "off", "mixed_bfloat16" or "mixed_float16". The model is
built under that Keras dtype policy (float32 variables, low-precision compute); the
loss is always computed in float32 from float32 predictions. Under "mixed_float16" the
loss is scaled before the gradients are taken (float16 gradients underflow otherwise)
and the gradients are unscaled right after, so every signal a controller sees, and
`grad/global_norm`, is the unscaled value. A batch whose scaled gradients overflow
(finite loss, non-finite gradients) is the loss scale's business, not a bad batch: its
update is skipped, the scale halves, and the non-finite guard does not count it. Both
are logged every batch, as `precision/loss_scale` and `precision/overflow`.

`ControlledModel` (Keras `fit`) does the same with `CountingLossScale` in place of the
`keras.optimizers.LossScaleOptimizer` that Keras's `compile` wraps around the optimizer
under the "mixed_float16" policy (`unwrap_loss_scale_optimizer`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
import tensorflow as tf

POLICIES = ("off", "mixed_bfloat16", "mixed_float16")


def check_policy(value: str | None) -> str:
    """The policy name (None means "off"); a clear error for anything else."""
    name = "off" if value is None else value
    if name not in POLICIES:
        raise ValueError(
            f"Trainer.mixed_precision must be one of {', '.join(repr(p) for p in POLICIES)}, "
            f"got {value!r}"
        )
    return name


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    """Builds layers under the Keras dtype policy `name` ("off": float32), then puts
    the global policy back, so later models in the process (a sweep) are unaffected."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if name == "off" else name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class LossScale(tf.Module):
    """Dynamic loss scaling, as Keras's `LossScaleOptimizer` does it: the scale starts at
    `initial_scale`, halves at every batch whose scaled gradients overflow, and doubles
    after `growth_steps` batches in a row that did not.

    Args:
      initial_scale: the first scale (Keras's default, 2**15).
      growth_steps: finite batches in a row before the scale doubles (Keras: 2000).
    """

    def __init__(self, initial_scale: float = 2.0**15, growth_steps: int = 2000):
        super().__init__(name="loss_scale")
        self.growth_steps = growth_steps
        self.scale = tf.Variable(float(initial_scale), trainable=False, name="scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")

    def update(self, overflow: tf.Tensor) -> None:
        """After a batch: halve on overflow, else count and double after `growth_steps`."""
        good = tf.where(overflow, tf.constant(0, tf.int64), self.good_steps + 1)
        grow = good >= self.growth_steps
        factor = tf.where(overflow, 0.5, tf.where(grow, 2.0, 1.0))
        self.scale.assign(self.scale * factor)
        self.good_steps.assign(tf.where(grow, tf.constant(0, tf.int64), good))


class CountingLossScale(LossScale):
    """`LossScale` that also counts the batches whose scaled gradients overflowed, for a
    host whose batch index is derived from the optimizer's iteration count
    (`ControlledModel`: `iterations + guard.skipped + overflows`). A class of its own so
    the trainer's checkpoints, which `--resume` matches variable for variable, keep
    their layout.

    Variables: `scale` and `good_steps` as `LossScale`'s; `overflows`, int64, the
    batches whose update the loss scale skipped so far.
    """

    def __init__(self, initial_scale: float = 2.0**15, growth_steps: int = 2000):
        super().__init__(initial_scale, growth_steps)
        self.overflows = tf.Variable(0, dtype=tf.int64, trainable=False, name="overflows")

    def update(self, overflow: tf.Tensor) -> None:
        """`LossScale.update`, and one more in `overflows` on overflow."""
        super().update(overflow)
        self.overflows.assign_add(tf.cast(overflow, tf.int64))


def unwrap_loss_scale_optimizer(
    optimizer: keras.optimizers.Optimizer, owner: str
) -> tuple[keras.optimizers.Optimizer, CountingLossScale | None]:
    """Keras's `LossScaleOptimizer` split into the optimizer it wraps and a
    `CountingLossScale` at its current scale (its `initial_scale` until built) and its
    `dynamic_growth_steps`; any other optimizer is returned as it is, with None.

    Raises:
      ValueError: an optimizer with a static `loss_scale_factor`, which `owner` (the
        host, named in the message) does not apply.
    """
    if getattr(optimizer, "loss_scale_factor", None) is not None:
        raise ValueError(
            f"{owner}: the optimizer's loss_scale_factor must be None, got "
            f"{optimizer.loss_scale_factor!r}: {owner} does not scale the loss by it, so "
            f"every update would be divided by it. For float16 loss scaling use the "
            f"'mixed_float16' dtype policy (compile then scales the loss dynamically)."
        )
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer, None
    scale = optimizer.dynamic_scale.numpy() if optimizer.built else optimizer.initial_scale
    loss_scale = CountingLossScale(float(scale), int(optimizer.dynamic_growth_steps))
    return optimizer.inner_optimizer, loss_scale


def unscale(grads: list[tf.Tensor | None], loss_scale: LossScale) -> list[tf.Tensor | None]:
    """The gradients of the scaled loss divided by the scale (`IndexedSlices` stay
    sparse; an overflowed Inf stays Inf; `None` stays `None`)."""
    scale = loss_scale.scale

    def one(grad: tf.Tensor | tf.IndexedSlices | None) -> tf.Tensor | tf.IndexedSlices | None:
        if grad is None:
            return None
        if isinstance(grad, tf.IndexedSlices):
            return tf.IndexedSlices(grad.values / scale, grad.indices, grad.dense_shape)
        return grad / scale

    return [one(g) for g in grads]


def apply_guarded(
    guard: Any,
    loss_scale: LossScale | None,
    batch: tuple[tf.Tensor, tf.Tensor, tf.Tensor],
    apply: Callable[[], Any],
) -> dict[str, tf.Tensor]:
    """The update of one batch `(step, loss, global_norm)` through the non-finite guard
    (`guard.NonFiniteGuard`). Under loss scaling, a batch whose scaled gradients
    overflowed (finite loss, non-finite norm) is the loss scale's: no update, the scale
    halves, and the guard does not count it.

    Returns the batch's `precision/` summaries: `{}` without loss scaling, else
    `precision/loss_scale` (the scale this batch's loss was multiplied by, float32) and
    `precision/overflow` (1.0 if its scaled gradients overflowed, else 0.0).
    """
    step, loss, norm = batch
    if loss_scale is None:
        guard.apply_if_finite(step, loss, norm, apply)
        return {}
    overflow = tf.logical_and(tf.math.is_finite(loss), ~tf.math.is_finite(norm))
    # Read before `update`: the scale the loss was multiplied by (ordered by the
    # automatic control dependencies on the variable).
    used = loss_scale.scale.read_value()

    def unless_overflow() -> tf.Tensor:
        def applied() -> tf.Tensor:
            apply()
            return tf.constant(True)

        return tf.cond(overflow, lambda: tf.constant(False), applied)

    guard.apply_if_finite(
        step, loss, tf.where(overflow, tf.zeros_like(norm), norm), unless_overflow
    )
    loss_scale.update(overflow)
    return {"precision/loss_scale": used, "precision/overflow": tf.cast(overflow, tf.float32)}
