"""`IAM`: SGD with a Polyak-type step on an anchor `z`, the weights moving toward it.

step-back's `IAM` (fabian-sp/step-back, `stepback/optim/iam.py`, branch `f-iap`),
operation by operation. It needs each batch's loss in the update: the trainer and
`ControlledModel` hand it over (`WholeStepOptimizer.needs_batch_loss`); plain
`keras.Model.fit` cannot and is refused with an error that says so. The scalars are
float64 (the authors' `.item()`s); `z` has each variable's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gin
import keras
import tensorflow as tf

from lrresearch.checks import check_nonnegative, check_number
from lrresearch.optimizers.float64_state import (
    STATE_DTYPE,
    float32_summaries,
    scalar_state,
    sum64,
)
from lrresearch.optimizers.whole_step import WholeStepOptimizer


@keras.saving.register_keras_serializable(package="lrresearch")
@gin.configurable
class IAM(WholeStepOptimizer):
    """IAM: a capped Polyak step on an anchor `z`; the weights average toward `z`.

    Per applied batch with weights `x`, gradient `g`, batch loss `f` (handed over by the
    trainer), this batch's LR `lr` (the cap) and `lmbda` (every variable as one flat
    vector; `z` starts at the weights of the first batch):

        eta = max(f - lb + <g, z - x>, 0) / ||g||^2
        tau = min(lr, eta)      (Python's min: a zero gradient, eta NaN or inf, gives lr)
        z   = z - tau g
        x   = lmbda / (1 + lmbda) x + 1 / (1 + lmbda) z

    The first step is a capped Polyak step on `z = x`, then `x` moves a fraction
    `1 / (1 + lmbda)` of the way. The authors' class also takes a `weight_decay`, which
    it never uses: not offered. Logged every batch (`step_summaries`):
    `optimizer/effective_lr` (tau, the step on `z`) and `optimizer/polyak` (eta).
    Memory beyond SGD: `z` (1x the weights).

    Args:
      learning_rate: the cap `lr` on tau (the authors' class default 1.0); the trainer
        assigns the controller's LR to it every batch.
      lmbda: the averaging weight `lmbda >= 0` (the authors' default 9).
      lower_bound: `lb`, a lower bound of the loss (0 for a non-negative loss).
      name: the optimizer's name.
      **kwargs: Keras's other optimizer arguments.

    Examples:
      In gin::

        Trainer.optimizer = @IAM
        Trainer.controller = @ConstantController()
        ConstantController.lr = 1.0   # IAM's cap on its step
        IAM.lmbda = 9.0

      >>> from lrresearch.optimizers import IAM
      >>> IAM(lmbda=4.0).get_config()["lmbda"]
      4.0

    References:
      The authors' code, followed here: github.com/fabian-sp/step-back,
      `stepback/optim/iam.py` (class `IAM`, branch `f-iap`).
    """

    needs_batch_loss = True

    def __init__(
        self,
        learning_rate: float = 1.0,
        lmbda: float = 9.0,
        lower_bound: float = 0.0,
        name: str = "IAM",
        **kwargs: Any,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if isinstance(learning_rate, float | int):  # not a Keras schedule
            check_nonnegative("IAM", learning_rate=learning_rate)
        check_nonnegative("IAM", lmbda=lmbda)
        check_number("IAM", "lower_bound", lower_bound)
        self.lmbda, self.lower_bound = float(lmbda), float(lower_bound)

    def build(self, variables: list[keras.Variable]) -> None:
        """Creates `z` (one slot per variable) and the float64 scalars."""
        if self.built:
            return
        super().build(variables)
        self.anchor = self.add_optimizer_variables(variables, "z")
        self.effective_lr = scalar_state(self, "effective_lr")
        self.polyak = scalar_state(self, "polyak")

    def update_all(
        self,
        grads: Sequence[tf.Tensor],
        variables: Sequence[keras.Variable],
        learning_rate: tf.Tensor,
    ) -> None:
        """One batch of IAM (the class docstring), with the handed-over loss."""
        loss = tf.cast(self.batch_loss(), STATE_DTYPE)
        lr = tf.cast(tf.convert_to_tensor(learning_rate), STATE_DTYPE)
        first = tf.equal(self.iterations, 0)
        weights = [tf.convert_to_tensor(v) for v in variables]
        grads = [tf.cast(g, w.dtype) for g, w in zip(grads, weights, strict=True)]
        slots = [self.anchor[self._get_variable_index(v)] for v in variables]
        anchors = [
            tf.where(first, w, tf.convert_to_tensor(z)) for z, w in zip(slots, weights, strict=True)
        ]
        dot = tf.add_n(
            [sum64(g * (z - w)) for g, z, w in zip(grads, anchors, weights, strict=True)]
        )
        norm = tf.add_n([sum64(g * g) for g in grads])
        eta = tf.maximum(loss - self.lower_bound + dot, 0.0) / norm  # inf/NaN at g = 0
        tau = tf.where(eta < lr, eta, lr)  # Python's min(lr, eta)
        keep, move = self.lmbda / (1.0 + self.lmbda), 1.0 / (1.0 + self.lmbda)
        for w, g, z, slot, variable in zip(weights, grads, anchors, slots, variables, strict=True):
            new_z = z + tf.cast(-tau, w.dtype) * g
            self.assign(slot, new_z)
            self.assign(variable, w * keep + new_z * move)
        self.assign(self.effective_lr, tau)
        self.assign(self.polyak, eta)

    def step_summaries(self) -> dict[str, tf.Tensor]:
        """`optimizer/effective_lr` (tau) and `optimizer/polyak` (eta), float32."""
        return float32_summaries({"effective_lr": self.effective_lr, "polyak": self.polyak})

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "lmbda": self.lmbda, "lower_bound": self.lower_bound}
