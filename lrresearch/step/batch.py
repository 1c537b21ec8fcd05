"""The parts of one batch shared by the trainer's compiled loop and `ControlledModel`:
signals, the controller with its guard, and the per-batch summaries. TF ops only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import tensorflow as tf

from lrresearch.controllers import Controller, ControllerOutput
from lrresearch.controllers.base import momentum_attribute
from lrresearch.controllers.signals import MovingAverage, Signals, global_norm
from lrresearch.logs import summaries
from lrresearch.optimizers.weight_decay import weight_decay_attribute

if TYPE_CHECKING:
    import keras


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


class _TraceTimeNonzero:
    """Stands in for a float hyperparameter that Keras branches on when it traces
    (`if self.momentum != 0` in `SGD`, `if self.momentum` in `MomentumSGD`): those
    branches see a non-zero momentum, the arithmetic reads `variable` (see the tensor
    conversion registered below), so the value can change every batch in-graph."""

    def __init__(self, variable: tf.Variable):
        self.variable = variable

    @property
    def dtype(self) -> tf.DType:
        return self.variable.dtype

    def __bool__(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return other is self

    def __ne__(self, other: object) -> bool:
        return other is not self

    __hash__ = object.__hash__

    def __float__(self) -> float:  # host-side readers, such as `get_config`
        return float(self.variable.numpy())


tf.register_tensor_conversion_function(
    _TraceTimeNonzero,
    lambda value, dtype=None, name=None, as_ref=False: tf.cast(
        value.variable.read_value(), dtype or value.variable.dtype
    ),
)


class OptimizerHyperparameters(tf.Module):
    """The optimizer's momentum and weight decay as variables its controller sets every
    batch (only those in `Controller.optimizer_hyperparameters`; none by default).

    Keras's optimizers read `momentum` / `beta_1` / `weight_decay` when the update is
    traced, as Python floats baked into the graph. Here the one the controller sets is
    replaced by a float32 `tf.Variable` before the first trace: `beta_1` and
    `weight_decay` by the variable (Keras only computes with them), SGD's `momentum`
    by a `_TraceTimeNonzero` around it (Keras branches on it in Python); the weight
    decay is the attribute `lrresearch.optimizers.weight_decay.weight_decay_attribute`
    names (Schedule-Free's and Prodigy's own decay, which they read through
    `decay_coefficient`). Not saved in checkpoints: the controller sets every value
    before the batch uses it.

    Attributes:
      variables_by_name: `{"momentum": variable, ...}`, logged as `optimizer/<name>`.
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer, names: frozenset[str]):
        super().__init__(name="optimizer_hyperparameters")
        self.variables_by_name: dict[str, tf.Variable] = {}
        for name in sorted(names):
            attribute = {
                "momentum": momentum_attribute(optimizer),
                "weight_decay": weight_decay_attribute(optimizer),
            }.get(name)
            value = getattr(optimizer, attribute, None) if attribute else None
            if value is None:
                raise ValueError(
                    f"Trainer.controller sets the optimizer's {name}, which "
                    f"{type(optimizer).__name__} does not have (or has as None); pick an "
                    f"optimizer with it, or a controller that leaves it"
                )
            variable = tf.Variable(float(value), trainable=False, dtype=tf.float32, name=name)
            self.variables_by_name[name] = variable
            stand_in = _TraceTimeNonzero(variable) if attribute == "momentum" else variable
            # Set untracked, so the optimizer's checkpoint keeps its layout.
            object.__setattr__(optimizer, attribute, stand_in)

    def assign(self, out: ControllerOutput) -> None:
        """Assigns this batch's values from the controller's output; a NaN/Inf value is
        not applied (the previous one is kept), as for the LR."""
        for name, variable in self.variables_by_name.items():
            value = tf.cast(getattr(out, name), tf.float32)
            variable.assign(tf.where(tf.math.is_finite(value), value, variable))

    def summaries(self) -> dict[str, tf.Tensor]:
        """`{"optimizer/<name>": value}` for the batch summaries."""
        return {f"optimizer/{n}": v.read_value() for n, v in self.variables_by_name.items()}


def set_lr(
    controller: Controller,
    signals: Signals,
    lr_variable: tf.Variable,
    scale: tf.Tensor | float = 1.0,
    hyperparameters: OptimizerHyperparameters | None = None,
) -> tuple[tf.Tensor, tf.Tensor, ControllerOutput]:
    """Runs the controller (name scope `lr_controller`) and assigns `lr * scale` to the
    optimizer's LR variable, and its momentum / weight decay to `hyperparameters`.
    Guard: a NaN/Inf or negative LR is never applied; the previous LR is kept. Returns
    (applied LR, accepted flag, controller output)."""
    with tf.name_scope("lr_controller"):
        out = controller.compute(signals)
        proposed = tf.cast(out.lr, tf.float32)
        accepted = tf.logical_and(tf.math.is_finite(proposed), proposed >= 0.0)
        lr = tf.where(accepted, proposed * scale, signals.lr)
        lr_variable.assign(tf.cast(lr, lr_variable.dtype))
        if hyperparameters is not None:
            hyperparameters.assign(out)
    return lr, accepted, out


def batch_row(
    signals: Signals,
    lr: tf.Tensor,
    out: ControllerOutput,
    extra: Mapping[str, tf.Tensor] | None = None,
) -> dict[str, tf.Tensor]:
    """The every-batch scalars as a row `{tag: float32 scalar}` (name scope
    `summaries`, exact tags, in this order): `lr`, the loss and its moving averages,
    the global norm, `controller/<name>`, then `extra`. The compiled loop stacks the
    rows into a block (`lrresearch.logs.rows`); no summary op runs per batch."""
    with tf.name_scope("summaries"):
        values = (
            lr,
            signals.loss,
            signals.loss_ma_short,
            signals.loss_ma_long,
            signals.global_norm,
        )
        row = dict(zip(summaries.BATCH_TAGS, values, strict=True))
        row.update({f"controller/{name}": v for name, v in out.diagnostics.items()})
        row.update(extra or {})
        return {tag: tf.cast(value, tf.float32) for tag, value in row.items()}


def write_batch_summaries(
    signals: Signals,
    lr: tf.Tensor,
    out: ControllerOutput,
    extra: Mapping[str, tf.Tensor] | None = None,
) -> None:
    """Writes `batch_row` with summary ops at the batch's step (name scope
    `summaries`), for code that writes as it goes."""
    row = batch_row(signals, lr, out, extra)
    with tf.name_scope("summaries"):
        for tag, value in row.items():
            summaries.scalar(tag, value, signals.step)
