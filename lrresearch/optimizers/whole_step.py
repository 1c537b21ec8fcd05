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
batch after the update, as `optimizer/<name>` (see `lrresearch.summaries.TAGS`), e.g.
`optimizer/effective_lr`, the step size the update applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf


class WholeStepOptimizer(keras.optimizers.Optimizer):
    """A Keras 3 optimizer that updates every variable in one call (see the module)."""

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
