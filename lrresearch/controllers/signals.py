"""Per-batch signals shared by the controller and the summaries.

Everything here is computed with TF ops only, so it runs inside the compiled train step
and is computed once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import tensorflow as tf


class Signals(NamedTuple):
    """What a controller may read about the current batch.

    Attributes:
      step: int64 scalar, index of this batch (0 for the first batch of a run).
      loss: float32 scalar, mean loss over the batch (never a sum, never a running mean).
      global_norm: float32 scalar, global L2 norm of all gradients, before any clipping.
      loss_ma_short: float32 scalar, short moving average of the batch losses, this one
        included (see `MovingAverage`).
      loss_ma_long: float32 scalar, long moving average of the batch losses.
      lr: float32 scalar, the LR that was applied to the previous batch (for step 0,
        the controller's `initial_lr`).
      grads: the gradients of this batch, one tensor per trainable variable (may be
        empty when a controller is driven by hand).
    """

    step: tf.Tensor
    loss: tf.Tensor
    global_norm: tf.Tensor
    loss_ma_short: tf.Tensor
    loss_ma_long: tf.Tensor
    lr: tf.Tensor
    grads: tuple[tf.Tensor, ...] = ()


def step64(signals: Signals) -> tf.Tensor:
    """The batch index as a float64 scalar, for schedules computed in float64 and rounded
    to float32 once (as PyTorch's and Keras's with float64 arguments)."""
    return tf.cast(signals.step, tf.float64)


def make_signals(
    step: int | tf.Tensor,
    loss: float | tf.Tensor,
    global_norm: float | tf.Tensor | None = None,
    *,
    grads: Sequence[tf.Tensor] = (),
    loss_ma_short: float | tf.Tensor | None = None,
    loss_ma_long: float | tf.Tensor | None = None,
    lr: float | tf.Tensor = 0.0,
) -> Signals:
    """Builds `Signals` from plain numbers, for tests, notebooks and custom loops.

    Missing moving averages default to the loss itself; a missing `global_norm` is
    computed from `grads` (0 if there are none).
    """
    loss = tf.convert_to_tensor(loss, tf.float32)
    grads = tuple(tf.convert_to_tensor(g) for g in grads)
    if global_norm is None:
        global_norm = tf.linalg.global_norm(grads) if grads else tf.constant(0.0)
    return Signals(
        step=tf.cast(step, tf.int64),
        loss=loss,
        global_norm=tf.cast(global_norm, tf.float32),
        loss_ma_short=loss if loss_ma_short is None else tf.cast(loss_ma_short, tf.float32),
        loss_ma_long=loss if loss_ma_long is None else tf.cast(loss_ma_long, tf.float32),
        lr=tf.cast(lr, tf.float32),
        grads=grads,
    )


def update_slot(variable: tf.Variable, index: tf.Tensor, value: tf.Tensor) -> None:
    """`variable[index] = value` for a 1-D variable, in place.

    A mirrored variable (created in a `tf.distribute` strategy's scope, e.g. inside
    `ControlledModel`) has no `scatter_nd_update`: it is rewritten whole (windows are
    small). Elsewhere the scatter writes one element.
    """
    if isinstance(variable, tf.distribute.DistributedValues):
        variable.assign(tf.tensor_scatter_nd_update(variable, [[index]], [value]))
    else:
        variable.scatter_nd_update([[index]], [value])


class MovingAverage(tf.Module):
    """Moving average of a scalar series (the batch loss), updated in-graph.

    Two kinds, chosen by `kind`:
      * ``"window"`` (default): the plain mean of the last `window` finite values,
        held in a ring buffer. Before `window` values have been seen it is the mean of
        all values so far (so the first batch's average is that batch's loss).
      * ``"ema"``: an exponential moving average with decay
        ``beta = 1 - 2 / (window + 1)`` (the usual span-to-decay rule), bias-corrected as
        in Adam: ``ema_n / (1 - beta**n)``. The first batch's average is its loss.

    Non-finite values (NaN/Inf losses) are not added, so one bad batch does not poison
    the next `window` averages. Until a finite value has been seen the average is NaN.

    Not a gin configurable: its callers pass every argument. The trainer's averages are
    bound as `Trainer.loss_ma_short`, `Trainer.loss_ma_long` and `Trainer.loss_ma_kind`.

    Args:
      window: length of the window in batches (>= 1).
      kind: ``"window"`` or ``"ema"``.
      name: module name (shows up in checkpoints).
    """

    def __init__(self, window: int = 10, kind: str = "window", name: str | None = None):
        super().__init__(name=name)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"MovingAverage.window must be an int >= 1, got {window!r}")
        if kind not in ("window", "ema"):
            raise ValueError(f"MovingAverage.kind must be 'window' or 'ema', got {kind!r}")
        self.window = window
        self.kind = kind
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="count")
        if kind == "window":
            self.buffer = tf.Variable(tf.zeros([window]), trainable=False, name="buffer")
        else:
            self.ema = tf.Variable(0.0, trainable=False, name="ema")
            self.beta = 1.0 - 2.0 / (window + 1.0)

    def update(self, value: tf.Tensor) -> tf.Tensor:
        """Adds `value` (float32 scalar) if finite; returns the current average."""
        value = tf.cast(value, tf.float32)
        finite = tf.math.is_finite(value)
        count = self.count + tf.cast(finite, tf.int64)
        self.count.assign(count)
        n = tf.cast(count, tf.float32)
        if self.kind == "window":
            slot = tf.math.floormod(count - 1, self.window)
            old = tf.gather(self.buffer, slot)  # not buffer[slot]: XLA would recompile per slot
            update_slot(self.buffer, slot, tf.where(finite, value, old))
            return tf.reduce_sum(self.buffer) / tf.minimum(n, float(self.window))
        ema = tf.where(finite, self.beta * self.ema + (1.0 - self.beta) * value, self.ema)
        self.ema.assign(ema)
        return ema / (1.0 - tf.pow(self.beta, n))

    @property
    def value(self) -> tf.Tensor:
        """The current average without adding anything (NaN before the first value)."""
        n = tf.cast(self.count, tf.float32)
        if self.kind == "window":
            return tf.reduce_sum(self.buffer) / tf.minimum(n, float(self.window))
        return self.ema / (1.0 - tf.pow(self.beta, n))


def global_norm(grads: Sequence[tf.Tensor | tf.IndexedSlices | None]) -> tf.Tensor:
    """Global L2 norm of `grads` (float32 scalar); `None` entries count as zero.

    A `tf.IndexedSlices` gradient (an embedding lookup's) holds one row per lookup, so
    a row looked up twice appears twice; its rows are summed per index first, as the
    update applies them. `tf.linalg.global_norm` squares the rows one by one: on the
    byte transformer (`workloads/stdlib_lm.py`) its norm read 10-30% low.
    """
    present = [_rows_summed(tf.cast(g, tf.float32)) for g in grads if g is not None]
    if not present:
        return tf.constant(0.0)
    return tf.linalg.global_norm(present)


def _rows_summed(grad: tf.Tensor | tf.IndexedSlices) -> tf.Tensor:
    """A dense gradient as it is; an `IndexedSlices` one as its rows summed per index
    (`[unique indices, ...]`, the same norm as the dense gradient, without building it)."""
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    unique, position = tf.unique(grad.indices)
    return tf.math.unsorted_segment_sum(grad.values, position, tf.size(unique))
