"""`MoMo` and `MoMoAdam`: SGD with momentum and Adam with a Polyak-type step size built
from a model of the loss (Schaipp, Ohana, Eickenberg, Defazio & Gower, ICML 2024).

Both keep, next to the momentum `d` of the gradients, moving averages of the batch
loss (`f_bar`) and of `<g, x>` (`gamma`), so that `f_bar + <d, x_new - x> - ...` models
the loss along the step; the step size is the largest one that does not take that model
below a lower bound of the loss (`lower_bound`, or its online estimate with
`use_fstar`), capped at the LR. They need each batch's loss in the update: the trainer
and `ControlledModel` hand it over (`WholeStepOptimizer.needs_batch_loss`); plain
`keras.Model.fit` cannot and is refused with an error that says so.

Followed exactly: the authors' torch code (github.com/fabian-sp/MoMo, `momo/momo.py` and
`momo/momo_adam.py`; `docs/parity/momo.md`). optax's `contrib.momo`/`momo_adam` differ
with weight decay and at a zero momentum (see the classes' docstrings).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gin
import keras
import tensorflow as tf

from lrresearch.checks import check_number
from lrresearch.optimizers.float64_state import (
    STATE_DTYPE,
    float32_summaries,
    scalar_state,
    sum64,
)
from lrresearch.optimizers.weight_decay import decay_coefficient
from lrresearch.optimizers.whole_step import WholeStepOptimizer

# Python numbers enter as `x * 0.9`, never `tf.cast(0.9, dtype)` (float32 rounding).


def _check(owner: str, values: dict[str, Any], ranges: dict[str, tuple[Any, str]]) -> None:
    """Raises ValueError naming `owner.arg` unless each value passes its range test;
    an argument without a range must be True or False."""
    for arg, value in values.items():
        if arg not in ranges:
            if not isinstance(value, bool):
                raise ValueError(f"{owner}.{arg} must be True or False, got {value!r}")
            continue
        check_number(owner, arg, value)
        test, must = ranges[arg]
        if not test(value):
            raise ValueError(f"{owner}.{arg} must be {must}, got {value!r}")


class _MomoBase(WholeStepOptimizer):
    """What `MoMo` and `MoMoAdam` share: arguments, the scalar state (loss average,
    `gamma`, the lower bound, the step size applied) and the step size rule."""

    needs_batch_loss = True
    # The decay a controller may set every batch (`lrresearch.optimizers.weight_decay`).
    weight_decay_attribute = "decay_rate"
    _RANGES: ClassVar[dict[str, tuple[Any, str]]] = {
        "learning_rate": (lambda v: v >= 0, ">= 0"),
        "weight_decay": (lambda v: v >= 0, ">= 0"),
        "lower_bound": (lambda v: True, "a number"),
    }

    def __init__(self, learning_rate: Any, name: str, settings: dict[str, Any], **kwargs):
        """`settings`: the arguments by our names, checked and kept for `get_config`."""
        # Keras's own `weight_decay` would run outside the update; MoMo's is its own.
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        numbers = {"learning_rate": learning_rate} if isinstance(learning_rate, float | int) else {}
        _check(type(self).__name__, {**numbers, **settings}, self._RANGES)
        self._settings = dict(settings)
        self.decay_rate = float(settings["weight_decay"])
        self.lower_bound = float(settings["lower_bound"])
        self.use_fstar = settings["use_fstar"]

    def build(self, variables: list[keras.Variable]) -> None:
        """Creates the float64 scalar state and the momentum `d` (one slot per variable)."""
        if self.built:
            return
        super().build(variables)
        self.loss_avg = scalar_state(self, "loss_avg", 0.0)
        self.gamma = scalar_state(self, "gamma", 0.0)
        self.lb = scalar_state(self, "lb", self.lower_bound)
        self.effective_lr = scalar_state(self, "effective_lr", 0.0)
        self.grad_avg = self.add_optimizer_variables(variables, "grad_avg")

    def _step_size(
        self, lr: tf.Tensor, rho: tf.Tensor, dot: tf.Tensor, norm: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """`(tau, lr_decay)` from the new `loss_avg` and `gamma`; updates the lower
        bound (`use_fstar`) and records `tau` as the effective LR.

        `lr_decay` is `lr * weight_decay` (None without decay). `dot = <d, x>`,
        `norm = ||d||^2` (MoMo-Adam: `||d||^2_{D^-1}`); `rho` the bias correction.
        """
        decay = decay_coefficient(self.decay_rate, STATE_DTYPE)
        lr_decay = None if decay is None else lr * decay
        c = 1.0 if lr_decay is None else 1.0 + lr_decay
        loss_avg, gamma = tf.convert_to_tensor(self.loss_avg), tf.convert_to_tensor(self.gamma)
        lb = tf.convert_to_tensor(self.lb)
        if self.use_fstar:  # the reset: the model's value at the new x is below c rho lb
            cap = c * loss_avg + dot - c * gamma
            reset = tf.maximum(cap / (2.0 * c * rho), self.lower_bound)
            lb = tf.where(cap < c * rho * lb, reset, lb)
        numerator = c * (loss_avg - rho * lb) + dot - c * gamma
        # The authors' `max(nom, 0) / norm`, then Python's `min(lr / rho, t1)`: with a
        # zero `norm` (no momentum) t1 is inf or NaN and the step size is lr / rho.
        safe_norm = tf.where(norm > 0.0, norm, tf.ones_like(norm))
        t1 = tf.where(norm > 0.0, tf.maximum(numerator, 0.0) / safe_norm, numerator.dtype.max)
        tau = tf.minimum(lr / rho, t1)
        if self.use_fstar:
            h = loss_avg + dot - gamma
            lb = tf.maximum((h - 0.5 * tau * norm) / rho, self.lower_bound)
        self.assign(self.lb, lb)
        self.assign(self.effective_lr, tau)
        return tau, lr_decay

    def step_summaries(self) -> dict[str, tf.Tensor]:
        """`optimizer/effective_lr` (tau, the step size applied to the momentum),
        `optimizer/lb` (the lower bound after the update; the online estimate with
        `use_fstar`) and `optimizer/loss_avg` (the loss average `f_bar`), float32."""
        values = {"effective_lr": self.effective_lr, "lb": self.lb, "loss_avg": self.loss_avg}
        return float32_summaries(values)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._settings}


@keras.saving.register_keras_serializable(package="lrresearch")
@gin.configurable
class MoMo(_MomoBase):
    """MoMo: SGD with momentum whose step size is a Polyak step on a model of the loss.

    Per applied batch `k = 1, 2, ...` with weights `x`, gradient `g`, batch loss `f`
    (handed over by the trainer), this batch's LR `lr` and `wd = weight_decay` (every
    variable as one flat vector):

        (k = 1, bias_correction=False: f_bar, d, gamma start at f, g, <g, x>; else at 0)
        f_bar = beta f_bar + (1 - beta) f
        d     = beta d + (1 - beta) g
        gamma = beta gamma + (1 - beta) <g, x>
        rho   = 1 - beta^k   with bias_correction, else 1
        c     = 1 + lr wd
        (use_fstar) if c f_bar + <d, x> - c gamma < c rho lb:
                        lb = max((c f_bar + <d, x> - c gamma) / (2 c rho), lower_bound)
        tau   = min(lr / rho, max(c (f_bar - rho lb) + <d, x> - c gamma, 0) / ||d||^2)
        (use_fstar) lb = max((f_bar + <d, x> - gamma - tau ||d||^2 / 2) / rho, lower_bound)
        x     = (x - tau d) / c

    With `d = 0` (every gradient so far zero) `tau = lr / rho` and only the decay moves
    `x`. `lr` caps the step: the authors recommend a large one (1.0 and up) and the
    Polyak term does the rest. The controller's LR is `lr` (a schedule shapes the cap).

    Logged every batch (`step_summaries`): `optimizer/effective_lr` (tau),
    `optimizer/lb`, `optimizer/loss_avg`.

    Memory beyond SGD: one copy of the weights (`d`), plus four float64 scalars.
    optax's `contrib.momo` differs: no `bias_correction` (it is False there), weight
    decay `x = x / c - tau d` (the step not divided by `c`), and `tau = 0` when
    `||d||^2 <= 2.2e-16` (`docs/parity/momo.md` measures the difference).

    Args:
      learning_rate: the cap `lr` on the step size (the authors' default 1.0); the
        trainer assigns the controller's LR to it every batch.
      beta: the momentum of `d`, `f_bar` and `gamma`, in [0, 1].
      weight_decay: `wd` >= 0, applied as above (the authors' proximal form).
      lower_bound: a lower bound of the loss (the authors' `lb`; 0 for a
        non-negative loss).
      bias_correction: the paper's averaging with `rho = 1 - beta^k` (state starts at
        0) instead of starting the averages at the first batch's values.
      use_fstar: estimate the lower bound online (the authors' `use_fstar`), never
        below `lower_bound`.
      name: the optimizer's name.
      **kwargs: Keras's other optimizer arguments (`clipnorm`, `global_clipnorm`, ...).

    Examples:
      In gin::

        Trainer.optimizer = @MoMo
        Trainer.controller = @ConstantController()
        ConstantController.lr = 1.0   # MoMo's cap on its step size
        MoMo.beta = 0.9

      In Keras (`ControlledModel` hands the loss over; plain `Model.fit` cannot)::

        model = lrresearch.ControlledModel(model, ConstantController(1.0))
        model.compile(optimizer=MoMo(), loss="sparse_categorical_crossentropy")

      >>> from lrresearch.optimizers import MoMo
      >>> MoMo(beta=0.8).get_config()["beta"]
      0.8

    References:
      Schaipp, Ohana, Eickenberg, Defazio, Gower. "MoMo: Momentum Models for Adaptive
      Learning Rates." ICML 2024. https://arxiv.org/abs/2305.07583
      The authors' code, followed here: github.com/fabian-sp/MoMo, `momo/momo.py`
      (`Momo.step`), PyPI `momo-opt`.
    """

    _RANGES: ClassVar = {**_MomoBase._RANGES, "beta": (lambda v: 0 <= v <= 1, "in [0, 1]")}

    def __init__(
        self,
        learning_rate: float = 1.0,
        beta: float = 0.9,
        weight_decay: float = 0.0,
        lower_bound: float = 0.0,
        bias_correction: bool = False,
        use_fstar: bool = False,
        name: str = "MoMo",
        **kwargs: Any,
    ):
        settings = {"beta": beta, "weight_decay": weight_decay, "lower_bound": lower_bound,
                    "bias_correction": bias_correction, "use_fstar": use_fstar}  # fmt: skip
        super().__init__(learning_rate, name, settings, **kwargs)
        self.beta = float(beta)
        self.bias_correction = bias_correction

    def update_all(
        self,
        grads: Sequence[tf.Tensor],
        variables: Sequence[keras.Variable],
        learning_rate: tf.Tensor,
    ) -> None:
        """One batch of `MoMo` (the class docstring), with the handed-over loss."""
        loss = tf.cast(self.batch_loss(), STATE_DTYPE)
        beta = self.beta
        first = tf.equal(self.iterations, 0)
        k = tf.cast(self.iterations, STATE_DTYPE) + 1.0
        lr = tf.cast(tf.convert_to_tensor(learning_rate), STATE_DTYPE)
        start = not self.bias_correction  # the averages start at the first batch's values
        grads = [tf.cast(g, v.dtype) for g, v in zip(grads, variables, strict=True)]
        weights = [tf.convert_to_tensor(v) for v in variables]
        grad_dot_w = tf.add_n([sum64(w * g) for w, g in zip(weights, grads, strict=True)])
        loss_avg = tf.convert_to_tensor(self.loss_avg)
        gamma = tf.convert_to_tensor(self.gamma)
        if start:
            loss_avg = tf.where(first, loss, loss_avg)
            gamma = tf.where(first, grad_dot_w, gamma)
        self.assign(self.loss_avg, beta * loss_avg + (1.0 - beta) * loss)
        self.assign(self.gamma, beta * gamma + (1.0 - beta) * grad_dot_w)
        directions, dot, norm = [], [], []
        for w, g, variable in zip(weights, grads, variables, strict=True):
            slot = self.grad_avg[self._get_variable_index(variable)]
            previous = tf.convert_to_tensor(slot)
            if start:
                previous = tf.where(first, g, previous)
            d = previous * beta + g * (1.0 - beta)
            self.assign(slot, d)
            directions.append(d)
            dot.append(sum64(w * d))
            norm.append(sum64(d * d))
        rho = 1.0 - beta**k if self.bias_correction else tf.constant(1.0, STATE_DTYPE)
        tau, lr_decay = self._step_size(lr, rho, tf.add_n(dot), tf.add_n(norm))
        for w, d, variable in zip(weights, directions, variables, strict=True):
            new = w + tf.cast(-tau, w.dtype) * d
            if lr_decay is not None:
                new = new / tf.cast(1.0 + lr_decay, w.dtype)
            self.assign(variable, new)
