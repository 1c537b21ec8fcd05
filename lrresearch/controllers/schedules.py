"""Step-only schedules: the LR depends on the batch index alone."""

from __future__ import annotations

import math

import gin
import tensorflow as tf

from lrresearch.checks import check_int, check_number, check_positive
from lrresearch.controllers.base import Controller, ControllerOutput, length_warning, run_length
from lrresearch.controllers.signals import Signals, make_signals


@gin.configurable
class ConstantController(Controller):
    """A fixed LR: the baseline every other strategy is measured against.

    Args:
      lr: the learning rate (> 0).

    Examples:
      Trainer.controller = @ConstantController()
      ConstantController.lr = 0.05

      >>> from lrresearch.controllers import ConstantController
      >>> from lrresearch.controllers.signals import make_signals
      >>> round(float(ConstantController(lr=0.05).compute(make_signals(0, 2.3)).lr), 6)
      0.05
    """

    def __init__(self, lr: float = 0.01, name: str | None = None):
        super().__init__(name=name)
        check_positive("ConstantController", lr=lr)
        self.initial_lr = float(lr)

    def known_peak_lr(self) -> float | None:
        """Its `lr`."""
        return self.initial_lr

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
      decay_steps: total schedule length in batches, warmup included (> warmup_steps);
        None (the default): the run's length, `Trainer.steps` (required under Keras
        `fit`, where the run's length is unknown).
      init_lr: LR of batch 0 (>= 0).
      end_lr: final LR (>= 0).

    Examples:
      Trainer.controller = @WarmupCosineController()
      WarmupCosineController.base_lr = 0.1
      WarmupCosineController.warmup_steps = 100     # batches; decays to Trainer.steps

      >>> from lrresearch.controllers import WarmupCosineController
      >>> from lrresearch.controllers.signals import make_signals
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
        decay_steps: int | None = None,
        init_lr: float = 0.0,
        end_lr: float = 0.0,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "WarmupCosineController"
        check_positive(owner, base_lr=base_lr)
        check_int(owner, "warmup_steps", warmup_steps, 0)
        if decay_steps is not None:
            check_int(owner, "decay_steps", decay_steps, warmup_steps + 1)
        for arg, value in (("init_lr", init_lr), ("end_lr", end_lr)):
            check_number(owner, arg, value)
            if value < 0:
                raise ValueError(f"{owner}.{arg} must be >= 0, got {value!r}")
        self.base_lr, self.init_lr, self.end_lr = float(base_lr), float(init_lr), float(end_lr)
        self.warmup_steps, self.decay_steps_argument = warmup_steps, decay_steps
        self.decay_steps, self.run_span = decay_steps, (None, "Trainer.steps")
        self.initial_lr = self.init_lr if warmup_steps else self.base_lr

    def set_run_length(self, steps: int | None, span: str = "Trainer.steps") -> dict[str, int]:
        """`decay_steps = None` becomes `steps` (at least `warmup_steps + 1`)."""
        owner, argument = "WarmupCosineController", self.decay_steps_argument
        self.decay_steps = run_length(owner, "decay_steps", argument, steps, self.warmup_steps + 1)
        self.run_span = (steps, span)
        return {} if argument is not None else {f"{owner}.decay_steps": self.decay_steps}

    def run_warnings(self, steps: int | None) -> list[str]:
        """Warns when the run ends inside the warmup (the LR only ever rises), and when
        the decay ends before the run or is cut by it."""
        warnings = []
        if steps is not None and self.warmup_steps >= steps:
            warnings.append(
                f"WarmupCosineController.warmup_steps = {self.warmup_steps} is not over in "
                f"Trainer.steps = {steps} batches, so the LR only rises and never decays; "
                f"lower WarmupCosineController.warmup_steps"
            )
        span, name = self.run_span if self.run_span[0] is not None else (steps, "Trainer.steps")
        if span is not None and self.warmup_steps < span:
            length = self.decay_steps_argument or span
            last = float(_length_copy(self, decay_steps=length)(make_signals(span - 1, 0.0)))
            end = f"end_lr = {self.end_lr:g}"
            binding = "WarmupCosineController.decay_steps"
            warnings += length_warning(binding, length, span, name, end, last)
        return warnings

    def known_peak_lr(self) -> float | None:
        """The largest of `base_lr`, `init_lr` and `end_lr`."""
        return max(self.base_lr, self.init_lr, self.end_lr)

    def compute(self, signals: Signals) -> ControllerOutput:
        # float64, rounded to float32 once at the end: in float32 the cosine tail towards
        # end_lr = 0 was 7e-4 relative off optax's float64 schedule.
        t = tf.cast(signals.step, tf.float64)
        if self.decay_steps is None:
            run_length("WarmupCosineController", "decay_steps", None, None, 0)  # raises
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


def _length_copy(controller: Controller, **lengths: int) -> Controller:
    """A fresh copy of a step-only schedule with its length arguments set (to read the
    LR of one batch in a warning)."""
    return type(controller).from_config({**controller.get_config(), **lengths})


WSD_SHAPES = ("linear", "cosine", "1-sqrt")


@gin.configurable
class WSDController(Controller):
    """Warmup-stable-decay: a warmup to `peak_lr`, a long stable phase at it, then a
    short cooldown, the same sequence as Hugging Face transformers'
    `get_wsd_schedule(num_warmup_steps, num_decay_steps, num_stable_steps, warmup_type,
    decay_type, min_lr_ratio, num_cycles)` times `peak_lr`.

    For batch index `t` (0-based) the LR is `peak_lr` times:
      * warmup, `t < warmup_steps`, with `p = t / warmup_steps`: `p` (linear),
        `(1 - cos(pi p)) / 2` (cosine) or `1 - sqrt(1 - p)` (1-sqrt), mapped to
        `[min_lr_ratio, 1]`;
      * stable, for `stable_steps` batches: 1;
      * decay, for `decay_steps` batches, with `p` its progress: `1 - p` (linear),
        `(1 + cos(2 pi num_cycles p)) / 2` (cosine) or `1 - sqrt(p)` (1-sqrt, the
        cooldown of Hägele et al.), mapped to `[min_lr_ratio, 1]`;
      * after it: `min_lr_ratio`.

    Args:
      peak_lr: the LR of the stable phase (> 0).
      warmup_steps: warmup length in batches (>= 0).
      stable_steps: stable length in batches (>= 0); None (the default): the rest of
        the run, `Trainer.steps - warmup_steps - decay_steps` (at least 0), so the
        cooldown ends with the run (required under Keras `fit`).
      decay_steps: cooldown length in batches (>= 1).
      warmup_shape: "linear", "cosine" or "1-sqrt".
      decay_shape: "linear", "cosine" or "1-sqrt".
      min_lr_ratio: the floor, as a fraction of `peak_lr` (in [0, 1]).
      num_cycles: the cosine cooldown's half-waves (0.5: one decay to the floor).

    Examples:
      Trainer.controller = @WSDController()
      WSDController.peak_lr = 0.1
      WSDController.warmup_steps = 100              # batches
      WSDController.decay_steps = 400               # the last 400 of Trainer.steps
      WSDController.decay_shape = '1-sqrt'

      >>> from lrresearch.controllers import WSDController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = WSDController(peak_lr=0.1, warmup_steps=10, stable_steps=80, decay_steps=10,
      ...                   decay_shape="linear")
      >>> [round(float(c.compute(make_signals(t, 1.0)).lr), 4) for t in (0, 5, 50, 95, 100)]
      [0.0, 0.05, 0.1, 0.05, 0.0]

    References:
      Hugging Face transformers, `transformers.get_wsd_schedule`
      (`src/transformers/optimization.py`). Hu et al. "MiniCPM." 2024. Hägele et al.
      "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations."
      NeurIPS 2024 (the 1-sqrt cooldown).
    """

    def __init__(
        self,
        peak_lr: float = 0.1,
        warmup_steps: int = 100,
        stable_steps: int | None = None,
        decay_steps: int = 400,
        warmup_shape: str = "linear",
        decay_shape: str = "cosine",
        min_lr_ratio: float = 0.0,
        num_cycles: float = 0.5,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "WSDController"
        check_positive(owner, peak_lr=peak_lr, num_cycles=num_cycles)
        check_int(owner, "warmup_steps", warmup_steps, 0)
        if stable_steps is not None:
            check_int(owner, "stable_steps", stable_steps, 0)
        check_int(owner, "decay_steps", decay_steps, 1)
        for arg, shape in (("warmup_shape", warmup_shape), ("decay_shape", decay_shape)):
            if shape not in WSD_SHAPES:
                raise ValueError(f"{owner}.{arg} must be one of {WSD_SHAPES}, got {shape!r}")
        check_number(owner, "min_lr_ratio", min_lr_ratio)
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"{owner}.min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
        self.peak_lr, self.min_lr_ratio = float(peak_lr), float(min_lr_ratio)
        self.warmup_steps, self.stable_steps, self.decay_steps = (
            warmup_steps, stable_steps, decay_steps,
        )  # fmt: skip
        self.stable_steps_argument, self.run_span = stable_steps, (None, "Trainer.steps")
        self.warmup_shape, self.decay_shape = warmup_shape, decay_shape
        self.num_cycles = float(num_cycles)
        first = self.min_lr_ratio if warmup_steps else 1.0
        self.initial_lr = self.peak_lr * first

    def _stable(self, steps: int | None) -> int:
        """`stable_steps`, or the rest of a run of `steps` batches when it is None."""
        rest = None if steps is None else steps - self.warmup_steps - self.decay_steps
        owner, argument = "WSDController", self.stable_steps_argument
        return run_length(owner, "stable_steps", argument, None if rest is None else rest, 0)

    def set_run_length(self, steps: int | None, span: str = "Trainer.steps") -> dict[str, int]:
        """`stable_steps = None` becomes the rest of the run (the cooldown ends with it)."""
        self.stable_steps, self.run_span = self._stable(steps), (steps, span)
        followed = self.stable_steps_argument is None
        return {"WSDController.stable_steps": self.stable_steps} if followed else {}

    def run_warnings(self, steps: int | None) -> list[str]:
        """Warns when the run ends before the cooldown starts (it never decays), and
        when the cooldown ends before the run or is cut by it."""
        span, name = self.run_span if self.run_span[0] is not None else (steps, "Trainer.steps")
        if span is None:
            return []
        stable = self._stable(span)
        start = self.warmup_steps + stable
        if start >= span:
            fix = "lower WSDController.warmup_steps"
            if self.stable_steps_argument is not None:
                fix = "lower WSDController.stable_steps (or bind it to None: the rest of the run)"
            return [
                f"WSDController's cooldown starts at batch {start} (warmup_steps + "
                f"stable_steps), after the run's {name} = {span}, so the LR never "
                f"decays; {fix}"
            ]
        end = f"the floor, min_lr_ratio * peak_lr = {self.min_lr_ratio * self.peak_lr:g}"
        copy = _length_copy(self, stable_steps=stable)
        last = float(copy(make_signals(span - 1, 0.0)))
        binding = "WSDController.warmup_steps + stable_steps + decay_steps"
        fix = "bind WSDController.stable_steps = None (the rest of the run)"
        return length_warning(binding, start + self.decay_steps, span, name, end, last, fix)

    def compute(self, signals: Signals) -> ControllerOutput:
        # float64, rounded to float32 once at the end (as WarmupCosineController).
        t = tf.cast(signals.step, tf.float64)
        if self.stable_steps is None:
            self._stable(None)  # raises: the run's length is unknown
        floor = self.min_lr_ratio
        p = t / max(1, self.warmup_steps)
        if self.warmup_shape == "linear":
            warm = p
        elif self.warmup_shape == "cosine":
            warm = 0.5 * (1.0 - tf.cos(math.pi * p))
        else:
            warm = 1.0 - tf.sqrt(tf.maximum(1.0 - p, 0.0))
        warm = tf.maximum(warm * (1.0 - floor) + floor, 0.0)
        start = self.warmup_steps + self.stable_steps
        q = tf.clip_by_value((t - start) / self.decay_steps, 0.0, 1.0)
        if self.decay_shape == "linear":
            cool = 1.0 - q
        elif self.decay_shape == "cosine":
            cool = 0.5 * (1.0 + tf.cos(math.pi * self.num_cycles * 2.0 * q))
        else:
            cool = 1.0 - tf.sqrt(q)
        cool = tf.maximum(cool * (1.0 - floor) + floor, 0.0)
        warming, stable = t < self.warmup_steps, t < start
        factor = tf.where(warming, warm, tf.where(stable, tf.ones_like(cool), cool))
        factor = tf.where(t >= start + self.decay_steps, tf.constant(floor, tf.float64), factor)
        lr = tf.cast(self.peak_lr * factor, tf.float32)
        # 0 warmup, 1 stable, 2 cooldown (and after it).
        phase = 2.0 - tf.cast(stable, tf.float32) - tf.cast(warming, tf.float32)
        return ControllerOutput(lr, {"phase": phase})
