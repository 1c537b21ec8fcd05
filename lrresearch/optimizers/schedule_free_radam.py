"""`ScheduleFreeRAdam`: Schedule-Free RAdam (the authors' `RAdamScheduleFree`), step
for step: RAdam's rectification of the LR instead of a warmup, on `_ScheduleFree`'s
interpolation, average and eval/train swap (`schedule_free.py`)."""

from __future__ import annotations

from typing import Any

import gin
import keras
import tensorflow as tf

from lrresearch.checks import check_bool, check_interval, check_nonnegative
from lrresearch.optimizers.schedule_free import _SecondMoment


def sma_lengths(beta_2: float, step: tf.Tensor) -> tuple[tf.Tensor, float]:
    """RAdam's `(rho_t, rho_inf)` at the 1-based batch `step` (a float64 scalar):
    `rho_inf = 2 / (1 - beta_2) - 1`, `rho_t = rho_inf - 2 step beta_2^step / (1 -
    beta_2^step)`; the adaptive phase is `rho_t > 4`."""
    beta_2_t = tf.pow(tf.constant(beta_2, tf.float64), step)
    rho_inf = 2 / (1 - beta_2) - 1
    return rho_inf - 2 * step * beta_2_t / (1 - beta_2_t), rho_inf


def rectification(beta_2: float, step: tf.Tensor, silent_sgd_phase: bool) -> tf.Tensor:
    """RAdam's factor on the LR at the 1-based batch `step` (float64 scalar), as the
    authors' `radam_schedulefree.py`: with `rho_t, rho_inf = sma_lengths(...)`,

        rect = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))

    while `rho_t > 4` (the adaptive phase), else 0 with `silent_sgd_phase` and 1 without
    (the SGD phase: the raw gradient at the plain LR)."""
    rho_t, rho_inf = sma_lengths(beta_2, step)
    adaptive = rho_t > 4
    safe_rho_t = tf.where(adaptive, rho_t, rho_inf)  # no sqrt of a negative number
    ratio = (safe_rho_t - 4) * (safe_rho_t - 2) * rho_inf
    rect = tf.sqrt(ratio / ((rho_inf - 4) * (rho_inf - 2) * safe_rho_t))
    return tf.where(adaptive, rect, tf.constant(float(not silent_sgd_phase), tf.float64))


@keras.saving.register_keras_serializable(package="lrresearch")
@gin.configurable
class ScheduleFreeRAdam(_SecondMoment):
    """Schedule-Free RAdam: the authors' `RAdamScheduleFree`. Batch `k` (0-based) at the
    LR `lr` the trainer set, with `rect` = `rectification(beta_2, k + 1, silent_sgd_phase)`:

        lr_k = lr * rect                                 # no warmup_steps: rect is it
        v    = beta_2 * v + (1 - beta_2) * g**2          # exp_avg_sq, from 0, always
        d    = g / (sqrt(v / (1 - beta_2 ** (k + 1))) + epsilon)   # adaptive phase
        d    = g                                         # while rho_t <= 4
        d   += weight_decay * y

    then `_ScheduleFree`'s average and update (see its docstring) with `lr_k`: the
    average's weight is `(k + 1) ** r * max_k(lr_k) ** weight_lr_power`, so the batches
    of the SGD phase get no weight when it is silent (`lr_k = 0`; with the default
    `weight_lr_power = 2`). With `beta_2 = 0.999` the SGD phase is batches 0-3
    (`rho_t` passes 4 at the 5th batch). Call `swap_to_eval` before evaluating or
    saving and `swap_to_train` after (the trainer does). Logs per batch
    `optimizer/effective_lr` (`lr_k`, the rectified LR; 0 in a silent SGD phase),
    `optimizer/average_weight` and `optimizer/weight_sum`.

    Memory: three copies of the weights (`z`, `stash`, `exp_avg_sq`), as
    `ScheduleFreeAdamW`.

    Args:
      learning_rate: the authors' `lr` (0.0025, as theirs; the trainer assigns it every
        batch).
      beta_1: the interpolation `beta` between `z` and `x` (`betas[0]`), in (0, 1] (0.9).
      beta_2: the second-moment decay (`betas[1]`), in (0.6, 1) (0.999): at or below
        0.6, `rho_inf <= 4` and the adaptive phase never starts.
      epsilon: added to the denominator (the authors' `eps`; 1e-8).
      weight_decay: coefficient of `y` added to the direction (>= 0; 0), on every
        variable as the authors'.
      r: the average's weights grow as `(k + 1) ** r` (0).
      weight_lr_power: the average's weights are `lr_max ** weight_lr_power` (2).
      silent_sgd_phase: True (the authors' default): no step while `rho_t <= 4`, only
        `exp_avg_sq` is updated; False: plain SGD steps at `lr` then.
      name: the optimizer's name.
      **kwargs: Keras's other optimizer arguments (`clipnorm`, `global_clipnorm`, ...).

    Examples:
      In a gin file (`lrresearch/config/gin/strategies/schedule_free_radam.gin`):

        Trainer.optimizer = @ScheduleFreeRAdam
        Trainer.controller = @ConstantController()
        ConstantController.lr = 0.0025

      In Keras, `model.compile(optimizer=ScheduleFreeRAdam(), ...)`.

    References:
      Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky. "The Road Less Scheduled."
      NeurIPS 2024 (arXiv:2405.15682). Liu et al. "On the Variance of the Adaptive
      Learning Rate and Beyond." ICLR 2020 (arXiv:1908.03265), RAdam's rectification.
      The authors' code, github.com/facebookresearch/schedule_free, PyPI
      `schedulefree` 1.4.1 (`schedulefree/radam_schedulefree.py`, `RAdamScheduleFree`).
    """

    _beta_attribute = "beta_1"

    def __init__(
        self,
        learning_rate: float = 0.0025,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float = 0.0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        silent_sgd_phase: bool = True,
        name: str = "ScheduleFreeRAdam",
        **kwargs: Any,
    ):
        if "warmup_steps" in kwargs:
            raise ValueError(
                "ScheduleFreeRAdam has no warmup_steps: RAdam's rectification replaces the "
                "warmup (as the authors' RAdamScheduleFree); use ScheduleFreeAdamW for one"
            )
        super().__init__(learning_rate, weight_decay, 0, r, weight_lr_power, name, **kwargs)
        owner = "ScheduleFreeRAdam"
        check_interval(owner, "beta_1", beta_1, "(0, 1]",
                       "x = y + (1 - 1/beta_1) (z - y) divides by it (0.9 by default)")  # fmt: skip
        check_interval(owner, "beta_2", beta_2, "(0.6, 1)",
                       "RAdam's adaptive phase needs rho_inf = 2/(1 - beta_2) - 1 > 4 "
                       "(0.999 by default)")  # fmt: skip
        check_nonnegative(owner, epsilon=epsilon)
        check_bool(owner, "silent_sgd_phase", silent_sgd_phase)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.silent_sgd_phase = silent_sgd_phase

    def _average_weight(
        self, learning_rate: tf.Tensor, step: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """`_ScheduleFree`'s, on the rectified LR `lr * rect`."""
        rect = rectification(self.beta_2, step + 1, self.silent_sgd_phase)
        return super()._average_weight(tf.cast(learning_rate, tf.float64) * rect, step)

    def _direction(
        self, grad: tf.Tensor, variable: keras.Variable, index: int, step: tf.Tensor
    ) -> tf.Tensor:
        normalized = self._normalized(grad, variable, index, step)
        adaptive = sma_lengths(self.beta_2, step + 1)[0] > 4
        return self._decayed(tf.where(adaptive, normalized, grad), variable)

    def get_config(self) -> dict[str, Any]:
        config = {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                  "epsilon": self.epsilon, "silent_sgd_phase": self.silent_sgd_phase}  # fmt: skip
        del config["warmup_steps"]
        return config
