"""`WholeStepOptimizer`: the base of the optimizers whose update needs every variable
at once (Prodigy's and D-Adaptation's `d`, Mechanic's scale), and of those that log
their effective step size per batch.

Keras 3 calls `update_step(gradient, variable, lr)` once per variable. A method whose
step size comes from sums over all variables (`<g, x0 - x>`, `||s||`) instead
implements `update_all(grads, variables, lr)`, called once per applied batch with every
gradient (dense; `None` as zeros), in the cross-replica context:

* without a strategy, or when the caller is already cross-replica (the trainer applies
  the all-reduced gradients there), it runs as is;
* in a replica context (`ControlledModel.fit` under a strategy), the gradients are
  all-reduced (SUM, as Keras's own optimizers do) and `update_all` runs once in a
  `merge_call` on replica 0's copy of them; assigning a mirrored variable there writes
  every replica's copy.

`step_summaries()` gives the scalars the trainer and `ControlledModel` log for each
batch after the update, as `optimizer/<name>` (see `lrresearch.logs.summaries.TAGS`), e.g.
`optimizer/effective_lr`, the step size the update applied.

An optimizer whose update needs the batch's loss (MoMo's Polyak-type step) sets
`needs_batch_loss = True` and reads `self.batch_loss()` in `update_all`. Its two callers
hand the loss over with `hand_batch_loss(optimizer, loss)` right before
`optimizer.apply`, in the same trace and inside the guarded branch (a skipped batch hands
nothing over): the trainer's `train_step` and `ControlledModel`'s update, both with the
unscaled, all-reduced global-batch mean loss the signals use, which includes the model's
regularization losses (`model.losses`), as the applied gradient does. The loss is a
tensor of that trace, consumed by the `update_all` that reads it; an optimizer that was
never handed one (plain `keras.Model.fit`, which calls `apply` with the gradients only)
raises `BatchLossError` when its update is traced.

An optimizer whose weights to evaluate are not the ones it trains (Schedule-Free's
average `x` against its `y`) also has `swap_to_eval(variables)` and
`swap_to_train(variables)`; `eval_weights` puts the evaluation weights in place around
evaluation, checkpoints and saving.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import tensorflow as tf


class BatchLossError(ValueError):
    """An optimizer that needs the batch loss was applied without it."""


class _LossHandoff:
    """Holds the loss tensor handed over for the next `update_all` (a plain object, so
    Keras's attribute tracking never sees the tensor)."""

    def __init__(self) -> None:
        self.loss: tf.Tensor | None = None


class WholeStepOptimizer(keras.optimizers.Optimizer):
    """A Keras 3 optimizer that updates every variable in one call (see the module)."""

    # True: `update_all` reads `batch_loss()`, which the caller hands over per batch.
    needs_batch_loss = False

    def set_batch_loss(self, loss: tf.Tensor) -> None:
        """Hands over this batch's loss (a scalar: the global-batch mean, unscaled) for
        the next `update_all` traced in this same trace."""
        self.__dict__.setdefault("_loss_handoff", _LossHandoff()).loss = tf.convert_to_tensor(loss)

    def batch_loss(self) -> tf.Tensor:
        """The loss handed over by `set_batch_loss`, consumed (a second update needs a
        second hand-over, so a tensor of an old trace is never read).

        Raises:
          BatchLossError: none was handed over (e.g. plain `keras.Model.fit`).
        """
        handoff = self.__dict__.get("_loss_handoff")
        loss = None if handoff is None else handoff.loss
        if loss is None:
            name = type(self).__name__
            raise BatchLossError(
                f"{name} needs each batch's loss in its update, and this training loop "
                f"did not hand it over (plain keras.Model.fit and optimizer.apply pass "
                f"the gradients only). Train with `lrresearch train` (Trainer.optimizer "
                f"= @{name}) or wrap the model in lrresearch.ControlledModel(model, "
                f"controller) before compile/fit; a custom loop calls "
                f"optimizer.set_batch_loss(loss) right before optimizer.apply(grads)."
            )
        handoff.loss = None
        return loss

    def update_all(
        self,
        grads: Sequence[tf.Tensor],
        variables: Sequence[keras.Variable],
        learning_rate: tf.Tensor,
    ) -> None:
        """Applies one batch: `grads[i]` (dense, the variable's shape) to `variables[i]`
        at the LR `learning_rate` (a scalar tensor). TF ops only; use `self.assign`."""
        raise NotImplementedError

    def step_summaries(self) -> dict[str, tf.Tensor]:
        """`{"optimizer/<name>": scalar}` logged for every batch, read after the update
        (after a skipped batch: the last applied batch's values)."""
        return {}

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} updates all variables at once")

    def _backend_update_step(
        self, grads: Sequence[Any], trainable_variables: Sequence[Any], learning_rate: Any
    ) -> None:
        grads = [_dense(g, v) for g, v in zip(grads, trainable_variables, strict=True)]
        if tf.distribute.in_cross_replica_context() or not tf.distribute.has_strategy():
            self.update_all(grads, list(trainable_variables), learning_rate)
            return
        pairs = self._all_reduce_sum_gradients(list(zip(grads, trainable_variables, strict=True)))

        def merged(distribution: tf.distribute.Strategy, pairs, lr) -> None:
            first = [distribution.experimental_local_results(g)[0] for g, _ in pairs]
            self.update_all(first, [v for _, v in pairs], lr)

        tf.distribute.get_replica_context().merge_call(merged, args=(pairs, learning_rate))


def _dense(gradient: Any, variable: Any) -> tf.Tensor:
    """The gradient as a dense tensor (`None`, a variable the loss misses, as zeros)."""
    if gradient is None:
        return tf.zeros(variable.shape, variable.dtype)
    return tf.convert_to_tensor(gradient)


def hand_batch_loss(optimizer: keras.optimizers.Optimizer, loss: tf.Tensor) -> None:
    """Hands `loss` (this batch's unscaled global-batch mean) to an optimizer that needs
    it (`needs_batch_loss`); nothing for any other. Call right before its `apply`."""
    if getattr(optimizer, "needs_batch_loss", False):
        optimizer.set_batch_loss(loss)


def has_own_step(optimizer: keras.optimizers.Optimizer) -> bool:
    """Whether the optimizer sets its own step size and logs it (`step_summaries`)."""
    return callable(getattr(optimizer, "step_summaries", None))


def optimizer_summaries(optimizer: keras.optimizers.Optimizer) -> dict[str, tf.Tensor]:
    """The optimizer's own per-batch values (`WholeStepOptimizer.step_summaries`), `{}`
    for any other optimizer."""
    return optimizer.step_summaries() if has_own_step(optimizer) else {}


@contextlib.contextmanager
def eval_weights(
    optimizer: keras.optimizers.Optimizer, variables: Sequence[keras.Variable]
) -> Iterator[None]:
    """Inside the block, `variables` hold the weights to evaluate and save (Schedule-
    Free's `x`); after it, the weights training continues from, bit for bit. Nothing
    changes for an optimizer without `swap_to_eval`. Eager or traced."""
    swap_to_eval = getattr(optimizer, "swap_to_eval", None)
    if swap_to_eval is None:
        yield
        return
    swap_to_eval(variables)
    try:
        yield
    finally:
        optimizer.swap_to_train(variables)


def to_train_weights(
    optimizer: keras.optimizers.Optimizer, variables: Sequence[keras.Variable]
) -> None:
    """Puts back the weights training continues from (after restoring a checkpoint saved
    inside `eval_weights`); nothing for an optimizer without `swap_to_train`."""
    swap_to_train = getattr(optimizer, "swap_to_train", None)
    if swap_to_train is not None:
        swap_to_train(variables)
