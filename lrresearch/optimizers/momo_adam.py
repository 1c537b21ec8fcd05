"""`MoMoAdam`: Adam with MoMo's Polyak-type step size (`lrresearch.optimizers.momo`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gin
import keras
import tensorflow as tf

from lrresearch.optimizers.float64_state import STATE_DTYPE, sum64
from lrresearch.optimizers.momo import _MomoBase


@keras.saving.register_keras_serializable(package="lrresearch")
@gin.configurable
class MoMoAdam(_MomoBase):
    """MoMo-Adam: Adam whose step size is a Polyak step on a model of the loss.

    Per applied batch `k = 1, 2, ...` with weights `x`, gradient `g`, batch loss `f`
    (handed over by the trainer), this batch's LR `lr` and `wd = weight_decay` (every
    variable as one flat vector; the state starts at 0; products elementwise):

        d     = beta_1 d + (1 - beta_1) g
        v     = beta_2 v + (1 - beta_2) g^2
        gamma = beta_1 gamma + (1 - beta_1) <g, x>
        f_bar = (1 - beta_1) f + beta_1 f_bar
        D     = sqrt(v / (1 - beta_2^k)) + epsilon
        rho   = 1 - beta_1^k,   c = 1 + lr wd
        (use_fstar) if c f_bar + <d, x> - c gamma < c rho lb:
                        lb = max((c f_bar + <d, x> - c gamma) / (2 c rho), lower_bound)
        tau   = min(lr / rho, max(c (f_bar - rho lb) + <d, x> - c gamma, 0) / <d, d / D>)
        (use_fstar) lb = max((f_bar + <d, x> - gamma - tau <d, d / D> / 2) / rho, lower_bound)
        x     = x (1 - lr wd)   (divide=False only: AdamW's decay)
        x     = x - tau d / D
        x     = x / c           (divide=True only: the proximal decay)

    With `d = 0` (every gradient so far zero) `tau = lr / rho`. A variable whose gradient
    is missing (`None`) takes a zero gradient here; the authors' code skips it.

    Logged every batch (`step_summaries`): `optimizer/effective_lr` (tau, the step size
    applied to `d / D`), `optimizer/lb`, `optimizer/loss_avg`.

    Memory beyond SGD: two copies of the weights (`d`, `v`), as Adam, plus four float64
    scalars. optax's `contrib.momo_adam` differs with weight decay, `x = x / c - tau d /
    D` (neither of the authors' forms), and takes `tau = 0` when `<d, d / D> <= 2.2e-16`
    (`docs/parity/momo.md` measures the difference).

    Args:
      learning_rate: the cap `lr` on the step size (the authors' default 1e-2); the
        trainer assigns the controller's LR to it every batch.
      beta_1: the momentum of `d`, `f_bar` and `gamma`, in [0, 1).
      beta_2: the decay of `v`, in [0, 1).
      epsilon: added to `D` (>= 0).
      weight_decay: `wd` >= 0.
      lower_bound: a lower bound of the loss (the authors' `lb`; 0 for a
        non-negative loss).
      divide: the proximal decay `x / (1 + lr wd)` (True, the authors' default) or
        AdamW's `x (1 - lr wd)` (False).
      use_fstar: estimate the lower bound online (the authors' `use_fstar`), never
        below `lower_bound`.
      name: the optimizer's name.
      **kwargs: Keras's other optimizer arguments (`clipnorm`, `global_clipnorm`, ...).

    Examples:
      In gin::

        Trainer.optimizer = @MoMoAdam
        Trainer.controller = @ConstantController()
        ConstantController.lr = 0.01   # MoMo-Adam's cap on its step size

      >>> from lrresearch.optimizers import MoMoAdam
      >>> MoMoAdam(beta_2=0.99).get_config()["beta_2"]
      0.99

    References:
      Schaipp, Ohana, Eickenberg, Defazio, Gower. "MoMo: Momentum Models for Adaptive
      Learning Rates." ICML 2024. https://arxiv.org/abs/2305.07583
      The authors' code, followed here: github.com/fabian-sp/MoMo, `momo/momo_adam.py`
      (`MomoAdam.step`), PyPI `momo-opt`.
    """

    _RANGES: ClassVar = {
        **_MomoBase._RANGES,
        "beta_1": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "beta_2": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "epsilon": (lambda v: v >= 0, ">= 0"),
    }

    def __init__(
        self,
        learning_rate: float = 1e-2,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float = 0.0,
        lower_bound: float = 0.0,
        divide: bool = True,
        use_fstar: bool = False,
        name: str = "MoMoAdam",
        **kwargs: Any,
    ):
        settings = {"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon,
                    "weight_decay": weight_decay, "lower_bound": lower_bound,
                    "divide": divide, "use_fstar": use_fstar}  # fmt: skip
        super().__init__(learning_rate, name, settings, **kwargs)
        self.beta_1, self.beta_2 = float(beta_1), float(beta_2)
        self.epsilon, self.divide = float(epsilon), divide

    def build(self, variables: list[keras.Variable]) -> None:
        """`MoMo`'s state plus Adam's second moment `v` (one slot per variable)."""
        if self.built:
            return
        super().build(variables)
        self.grad_avg_sq = self.add_optimizer_variables(variables, "grad_avg_sq")

    def update_all(
        self,
        grads: Sequence[tf.Tensor],
        variables: Sequence[keras.Variable],
        learning_rate: tf.Tensor,
    ) -> None:
        """One batch of `MoMoAdam` (the class docstring), with the handed-over loss."""
        loss = tf.cast(self.batch_loss(), STATE_DTYPE)
        beta_1, beta_2 = self.beta_1, self.beta_2
        k = tf.cast(self.iterations, STATE_DTYPE) + 1.0
        lr = tf.cast(tf.convert_to_tensor(learning_rate), STATE_DTYPE)
        grads = [tf.cast(g, v.dtype) for g, v in zip(grads, variables, strict=True)]
        weights = [tf.convert_to_tensor(v) for v in variables]
        directions, dot, norm, grad_dot_w = [], [], [], []
        for w, g, variable in zip(weights, grads, variables, strict=True):
            index = self._get_variable_index(variable)
            d = tf.convert_to_tensor(self.grad_avg[index]) * beta_1 + g * (1.0 - beta_1)
            v = tf.convert_to_tensor(self.grad_avg_sq[index]) * beta_2 + g * g * (1.0 - beta_2)
            self.assign(self.grad_avg[index], d)
            self.assign(self.grad_avg_sq[index], v)
            denominator = tf.sqrt(v / tf.cast(1.0 - beta_2**k, w.dtype)) + self.epsilon
            directions.append(d / denominator)
            grad_dot_w.append(sum64(w * g))
            dot.append(sum64(w * d))
            norm.append(sum64(d * (d / denominator)))
        gamma = tf.convert_to_tensor(self.gamma) * beta_1 + tf.add_n(grad_dot_w) * (1.0 - beta_1)
        self.assign(self.gamma, gamma)
        loss_avg = (1.0 - beta_1) * loss + beta_1 * tf.convert_to_tensor(self.loss_avg)
        self.assign(self.loss_avg, loss_avg)
        rho = 1.0 - beta_1**k
        tau, lr_decay = self._step_size(lr, rho, tf.add_n(dot), tf.add_n(norm))
        for w, direction, variable in zip(weights, directions, variables, strict=True):
            new = w
            if lr_decay is not None and not self.divide:  # AdamW's decay, before the step
                new = new * tf.cast(1.0 - lr_decay, w.dtype)
            new = new + tf.cast(-tau, w.dtype) * direction
            if lr_decay is not None and self.divide:
                new = new / tf.cast(1.0 + lr_decay, w.dtype)
            self.assign(variable, new)
