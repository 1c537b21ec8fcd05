"""Step-only schedules: the LR depends on the batch index alone."""

from __future__ import annotations

import math

import gin
import tensorflow as tf

from lrresearch.controllers.base import (
    Controller,
    ControllerOutput,
    check_int,
    check_number,
    check_positive,
)
from lrresearch.signals import Signals


@gin.configurable
class ConstantController(Controller):
    """A fixed LR: the baseline every other strategy is measured against.

    Args:
      lr: the learning rate (> 0).

    Examples:
      Trainer.controller = @ConstantController()
      ConstantController.lr = 0.05

      >>> from lrresearch.controllers import ConstantController
      >>> from lrresearch.signals import make_signals
      >>> round(float(ConstantController(lr=0.05).compute(make_signals(0, 2.3)).lr), 6)
      0.05
    """

    def __init__(self, lr: float = 0.01, name: str | None = None):
        super().__init__(name=name)
        check_positive("ConstantController", lr=lr)
        self.initial_lr = float(lr)

    def compute(self, signals: Signals) -> ControllerOutput:
        del signals
        return ControllerOutput(tf.constant(self.initial_lr, tf.float32), {})


@gin.configurable
class WarmupCosineController(Controller):
    """Linear warmup then cosine decay, the same sequence as optax's
    `warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps, decay_steps,
    end_value)`.

    For batch index `t` (0-based):
      * `t < warmup_steps`: `init_lr + (base_lr - init_lr) * t / warmup_steps`;
      * otherwise, with `T = decay_steps - warmup_steps` and
        `s = min(t - warmup_steps, T)`:
        `end_lr + (base_lr - end_lr) * 0.5 * (1 + cos(pi * s / T))`.
    After `decay_steps` batches the LR stays at `end_lr`.

    Args:
      base_lr: the peak LR, reached at the end of warmup (> 0).
      warmup_steps: warmup length in batches (>= 0).
      decay_steps: total schedule length in batches, warmup included (> warmup_steps).
      init_lr: LR of batch 0 (>= 0).
      end_lr: final LR (>= 0).

    Examples:
      Trainer.controller = @WarmupCosineController()
      WarmupCosineController.base_lr = 0.1
      WarmupCosineController.warmup_steps = 100     # batches
      WarmupCosineController.decay_steps = 2000     # batches, about Trainer.steps

      >>> from lrresearch.controllers import WarmupCosineController
      >>> from lrresearch.signals import make_signals
      >>> c = WarmupCosineController(base_lr=0.1, warmup_steps=100, decay_steps=2000)
      >>> [round(float(c.compute(make_signals(t, 1.0)).lr), 4) for t in (0, 50, 100, 2000)]
      [0.0, 0.05, 0.1, 0.0]

    References:
      optax, `optax.schedules.warmup_cosine_decay_schedule`
      (https://optax.readthedocs.io/en/latest/api/optimizer_schedules.html).
      Loshchilov, Hutter. "SGDR: Stochastic Gradient Descent with Warm Restarts."
      ICLR 2017.
    """

    def __init__(
        self,
        base_lr: float = 0.1,
        warmup_steps: int = 100,
        decay_steps: int = 2000,
        init_lr: float = 0.0,
        end_lr: float = 0.0,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "WarmupCosineController"
        check_positive(owner, base_lr=base_lr)
        check_int(owner, "warmup_steps", warmup_steps, 0)
        check_int(owner, "decay_steps", decay_steps, warmup_steps + 1)
        for arg, value in (("init_lr", init_lr), ("end_lr", end_lr)):
            check_number(owner, arg, value)
            if value < 0:
                raise ValueError(f"{owner}.{arg} must be >= 0, got {value!r}")
        self.base_lr, self.init_lr, self.end_lr = float(base_lr), float(init_lr), float(end_lr)
        self.warmup_steps, self.decay_steps = warmup_steps, decay_steps
        self.initial_lr = self.init_lr if warmup_steps else self.base_lr

    def run_warnings(self, steps: int | None) -> list[str]:
        """Warns when the run ends inside the warmup (the LR only ever rises)."""
        if steps is None or self.warmup_steps < steps:
            return []
        return [
            f"WarmupCosineController.warmup_steps = {self.warmup_steps} is not over in "
            f"Trainer.steps = {steps} batches, so the LR only rises and never decays; "
            f"lower WarmupCosineController.warmup_steps (and decay_steps to about "
            f"Trainer.steps)"
        ]

    def compute(self, signals: Signals) -> ControllerOutput:
        # float64, rounded to float32 once at the end: in float32 the cosine tail towards
        # end_lr = 0 was 7e-4 relative off optax's float64 schedule.
        t = tf.cast(signals.step, tf.float64)
        if self.warmup_steps:
            warm = self.init_lr + (self.base_lr - self.init_lr) * t / self.warmup_steps
        else:
            warm = tf.constant(self.base_lr, tf.float64)
        span = float(self.decay_steps - self.warmup_steps)
        s = tf.clip_by_value(t - self.warmup_steps, 0.0, span)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * s / span))
        decayed = self.end_lr + (self.base_lr - self.end_lr) * cosine
        warming = t < self.warmup_steps
        lr = tf.where(warming, warm, decayed)
        return ControllerOutput(tf.cast(lr, tf.float32), {"warmup": tf.cast(warming, tf.float32)})
