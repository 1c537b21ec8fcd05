"""The parts of one batch shared by the trainer's compiled loop and `ControlledModel`:
signals, the controller with its guard, and the per-batch summaries. TF ops only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf

from lrresearch import summaries
from lrresearch.controllers import Controller, ControllerOutput
from lrresearch.signals import MovingAverage, Signals, global_norm


def batch_signals(
    step: tf.Tensor,
    loss: tf.Tensor,
    grads: Sequence[tf.Tensor | None],
    variables: Sequence[tf.Variable],
    ma_short: MovingAverage,
    ma_long: MovingAverage,
    lr_variable: tf.Variable,
) -> Signals:
    """This batch's `Signals`; updates the moving averages. `None` gradients count as
    zeros (the global norm is taken before any clipping)."""
    loss = tf.cast(loss, tf.float32)
    norm = global_norm(grads)
    grads = dense_grads(grads, variables)
    previous_lr = tf.cast(tf.identity(lr_variable.value), tf.float32)
    return Signals(
        tf.cast(step, tf.int64),
        loss,
        norm,
        ma_short.update(loss),
        ma_long.update(loss),
        previous_lr,
        grads,
    )


def dense_grads(
    grads: Sequence[tf.Tensor | None], variables: Sequence[tf.Variable]
) -> tuple[tf.Tensor, ...]:
    """The gradients with `None` (a variable the loss does not touch) as zeros."""
    return tuple(
        tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables, strict=True)
    )


def all_reduce_sum(
    loss: tf.Tensor, grads: Sequence[tf.Tensor | None], variables: Sequence[tf.Variable]
) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """In a replica context: the SUM over replicas of `loss` and of the gradients
    (`None` as zeros), in one batched all-reduce; every replica gets the same values."""
    context = tf.distribute.get_replica_context()
    loss, *grads = context.all_reduce(
        tf.distribute.ReduceOp.SUM, [loss, *dense_grads(grads, variables)]
    )
    return loss, grads


def first_replica(strategy: tf.distribute.Strategy, values):
    """Replica 0's copy of every per-replica value in the structure `values` (for
    values that are equal on all replicas, such as all-reduced ones)."""
    return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], values)


def set_lr(
    controller: Controller,
    signals: Signals,
    lr_variable: tf.Variable,
    scale: tf.Tensor | float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor, ControllerOutput]:
    """Runs the controller (name scope `lr_controller`) and assigns `lr * scale` to the
    optimizer's LR variable. Guard: a NaN/Inf or negative LR is never applied; the
    previous LR is kept. Returns (applied LR, accepted flag, controller output)."""
    with tf.name_scope("lr_controller"):
        out = controller.compute(signals)
        proposed = tf.cast(out.lr, tf.float32)
        accepted = tf.logical_and(tf.math.is_finite(proposed), proposed >= 0.0)
        lr = tf.where(accepted, proposed * scale, signals.lr)
        lr_variable.assign(tf.cast(lr, lr_variable.dtype))
    return lr, accepted, out


def write_batch_summaries(
    signals: Signals,
    lr: tf.Tensor,
    out: ControllerOutput,
    extra: Mapping[str, tf.Tensor] | None = None,
) -> None:
    """The every-batch scalars (name scope `summaries`, exact tags): `lr`, the loss and
    its moving averages, the global norm, `controller/<name>`, then `extra`."""
    step = signals.step
    with tf.name_scope("summaries"):
        values = (
            lr,
            signals.loss,
            signals.loss_ma_short,
            signals.loss_ma_long,
            signals.global_norm,
        )
        for tag, value in zip(summaries.BATCH_TAGS, values, strict=True):
            summaries.scalar(tag, value, step)
        for name, value in out.diagnostics.items():
            summaries.scalar(f"controller/{name}", value, step)
        for tag, value in (extra or {}).items():
            summaries.scalar(tag, value, step)
