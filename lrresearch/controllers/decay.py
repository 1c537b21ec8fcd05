"""Decay families from Keras, optax, transformers and t5x: the LR is a closed-form
function of the batch index, computed in float64 and rounded to float32 once.

Batch `t` (0-based) gets the value the reference schedule gives at step `t`: Keras's
optimizer calls its schedule with `iterations` (0 on the first update), optax's with
the update count, and transformers' `LambdaLR` after `t` calls of `scheduler.step()`.
`tools/check_schedule_families_reference.py` compares every family with the
reference's own code and writes `docs/parity/schedule_families.md`.
"""

from __future__ import annotations

import gin
import tensorflow as tf

from lrresearch.checks import check_bool, check_int, check_nonnegative, check_positive
from lrresearch.controllers.base import Controller, ControllerOutput, length_warning, run_length
from lrresearch.controllers.signals import Signals, make_signals, step64


@gin.configurable
class InverseSqrtController(Controller):
    """Inverse square root decay after a linear warmup, the sequence of transformers'
    `get_inverse_sqrt_schedule` times `peak_lr`, and of t5x's `rsqrt_decay` factors.

    For batch index `t` (0-based), with `W = warmup_steps` and `s = timescale`:
      `lr = max(min_lr, peak_lr * warm(t) * sqrt(s / max(t - W + s, s)))`,
    where `warm(t) = min(1, t / W)` with `linear_warmup` (and `W > 0`), else 1. So the
    LR rises linearly from 0 to `peak_lr` over the first `W` batches, then falls as
    `1 / sqrt(t)`: it is `peak_lr * sqrt(s / (t - W + s))` from batch `W` on, which
    halves the LR `3 s` batches after the warmup.

    From the references (same sequence, to float32 rounding):
      * transformers `get_inverse_sqrt_schedule(optimizer, num_warmup_steps, timescale)`
        on an optimizer with LR `lr0`: `peak_lr = lr0`, `warmup_steps =
        num_warmup_steps`, `timescale = timescale` (None: `num_warmup_steps`, or 10,000
        when that is 0, transformers' own default).
      * t5x `create_learning_rate_scheduler(factors='constant * linear_warmup *
        rsqrt_decay', base_learning_rate=b, warmup_steps=W, min_learning_rate=m)`
        (its default factors): `peak_lr = b / sqrt(W)`, `warmup_steps = W`,
        `timescale = None` (= W), `min_lr = m` (t5x's default 1e-8 is what batch 0
        gets); without `linear_warmup` in the factors, `linear_warmup = False` (the LR
        is held at `peak_lr` for the first `W` batches). `'constant *
        rsqrt_normalized_decay'` is the same with `peak_lr = b`. t5x's `step_offset`
        is not covered (start the schedule later with a `Chain`).

    Args:
      peak_lr: the LR at the end of the warmup (> 0).
      warmup_steps: warmup length `W` in batches (>= 0).
      timescale: batches `s` of the decay's time scale (>= 1); None: `warmup_steps`,
        or 10,000 when `warmup_steps` is 0 (as transformers).
      linear_warmup: rise linearly from 0 over the warmup (True), or hold `peak_lr`
        there (False, t5x's `constant * rsqrt_decay`).
      min_lr: the floor (>= 0).

    Examples:
      Trainer.controller = @InverseSqrtController()
      InverseSqrtController.peak_lr = 0.01
      InverseSqrtController.warmup_steps = 200      # batches; then lr ~ 1 / sqrt(t)

      >>> from lrresearch.controllers import InverseSqrtController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = InverseSqrtController(peak_lr=0.1, warmup_steps=100)
      >>> [round(float(c.compute(make_signals(t, 1.0)).lr), 4) for t in (0, 50, 100, 400)]
      [0.0, 0.05, 0.1, 0.05]

    References:
      Hugging Face transformers, `transformers.get_inverse_sqrt_schedule`
      (`src/transformers/optimization.py`). t5x, `t5x.utils.create_learning_rate_scheduler`
      (`t5x/utils.py`). Vaswani et al. "Attention Is All You Need." NeurIPS 2017.
    """

    def __init__(
        self,
        peak_lr: float = 0.01,
        warmup_steps: int = 1000,
        timescale: int | None = None,
        linear_warmup: bool = True,
        min_lr: float = 0.0,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "InverseSqrtController"
        check_positive(owner, peak_lr=peak_lr)
        check_int(owner, "warmup_steps", warmup_steps, 0)
        if timescale is not None:
            check_int(owner, "timescale", timescale, 1)
        check_bool(owner, "linear_warmup", linear_warmup)
        check_nonnegative(owner, min_lr=min_lr)
        self.peak_lr, self.min_lr = float(peak_lr), float(min_lr)
        self.warmup_steps, self.linear_warmup = warmup_steps, linear_warmup
        self.timescale = timescale if timescale is not None else (warmup_steps or 10_000)
        rising = linear_warmup and warmup_steps > 0
        self.initial_lr = max(self.min_lr, 0.0 if rising else self.peak_lr)

    def run_warnings(self, steps: int | None) -> list[str]:
        """Warns when the run ends inside the warmup (the LR only ever rises)."""
        if steps is None or not self.linear_warmup or self.warmup_steps < steps:
            return []
        return [
            f"InverseSqrtController.warmup_steps = {self.warmup_steps} is not over in "
            f"Trainer.steps = {steps} batches, so the LR only rises and never decays; "
            f"lower InverseSqrtController.warmup_steps"
        ]

    def compute(self, signals: Signals) -> ControllerOutput:
        t = step64(signals)
        w, s = self.warmup_steps, float(self.timescale)
        warm = tf.ones_like(t)
        if self.linear_warmup and w > 0:
            warm = tf.minimum(t / w, 1.0)
        decay = tf.sqrt(s / tf.maximum(t - w + s, s))
        lr = tf.maximum(self.peak_lr * warm * decay, self.min_lr)
        warming = tf.cast(t < w, tf.float32)
        return ControllerOutput(tf.cast(lr, tf.float32), {"warmup": warming})


@gin.configurable
class PolynomialDecayController(Controller):
    """Polynomial decay from `initial_lr` to `end_lr`, the sequence of Keras's
    `PolynomialDecay` and optax's `polynomial_schedule`.

    For batch index `t` (0-based), with `s = max(t - transition_begin, 0)` and
    `T = decay_steps`: `lr = (initial_lr - end_lr) * (1 - p)**power + end_lr`, where
      * `p = min(s, T) / T` (after the decay the LR stays at `end_lr`), or
      * with `cycle`, `p = s / (T * c)`, `c = ceil(s / T)` (1 at `s = 0`), as Keras
        does: the LR reaches `end_lr` at every multiple of `T`, and the next batch
        jumps back up onto a decay from `initial_lr` that ends one multiple later.

    From the references: Keras `PolynomialDecay(initial_learning_rate, decay_steps,
    end_learning_rate, power, cycle)` maps name for name (`initial_lr`, `decay_steps`,
    `end_lr`, `power`, `cycle`); optax `polynomial_schedule(init_value, end_value,
    power, transition_steps, transition_begin)` is `initial_lr = init_value`, `end_lr
    = end_value`, `power`, `decay_steps = transition_steps`, `transition_begin`
    (optax's `linear_schedule` is `power = 1`).

    Args:
      initial_lr: the LR at the start (>= 0).
      decay_steps: the decay's length `T` in batches (>= 1); None (the default): the
        rest of the run, `Trainer.steps - transition_begin` (required under Keras
        `fit`, where the run's length is unknown).
      end_lr: the LR at the end (>= 0; above `initial_lr` it rises, as a warmup).
      power: the polynomial's power (> 0; 1 is linear).
      cycle: after each end, jump back up onto a longer decay (Keras's `cycle`).
      transition_begin: batches held at `initial_lr` before the decay starts (>= 0).

    Examples:
      Trainer.controller = @PolynomialDecayController()
      PolynomialDecayController.initial_lr = 0.1
      PolynomialDecayController.end_lr = 1e-4
      PolynomialDecayController.power = 2.0         # decays over Trainer.steps

      >>> from lrresearch.controllers import PolynomialDecayController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = PolynomialDecayController(initial_lr=0.1, decay_steps=100, end_lr=0.0, power=2.0)
      >>> [round(float(c.compute(make_signals(t, 1.0)).lr), 4) for t in (0, 50, 100, 150)]
      [0.1, 0.025, 0.0, 0.0]

    References:
      Keras, `keras.optimizers.schedules.PolynomialDecay`
      (https://keras.io/api/optimizers/learning_rate_schedules/polynomial_decay/).
      optax, `optax.schedules.polynomial_schedule`
      (https://optax.readthedocs.io/en/latest/api/optimizer_schedules.html).
    """

    def __init__(
        self,
        initial_lr: float = 0.1,
        decay_steps: int | None = None,
        end_lr: float = 1e-4,
        power: float = 1.0,
        cycle: bool = False,
        transition_begin: int = 0,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "PolynomialDecayController"
        check_nonnegative(owner, initial_lr=initial_lr, end_lr=end_lr)
        if not (initial_lr > 0 or end_lr > 0):
            raise ValueError(
                f"{owner}.end_lr must be > 0 when {owner}.initial_lr is 0 (the LR would "
                f"stay 0), got {end_lr!r}; raise one of them"
            )
        if decay_steps is not None:
            check_int(owner, "decay_steps", decay_steps, 1)
        check_positive(owner, power=power)
        check_bool(owner, "cycle", cycle)
        check_int(owner, "transition_begin", transition_begin, 0)
        self.initial_lr, self.end_lr, self.power = float(initial_lr), float(end_lr), float(power)
        self.cycle, self.transition_begin = cycle, transition_begin
        self.decay_steps_argument, self.decay_steps = decay_steps, decay_steps
        self.run_span: tuple[int | None, str] = (None, "Trainer.steps")

    def set_run_length(self, steps: int | None, span: str = "Trainer.steps") -> dict[str, int]:
        """`decay_steps = None` becomes the rest of the run after `transition_begin`
        (at least 1)."""
        owner, argument = "PolynomialDecayController", self.decay_steps_argument
        rest = None if steps is None else steps - self.transition_begin
        self.decay_steps = run_length(owner, "decay_steps", argument, rest, 1)
        self.run_span = (steps, span)
        return {} if argument is not None else {f"{owner}.decay_steps": self.decay_steps}

    def run_warnings(self, steps: int | None) -> list[str]:
        """Warns when a bound `decay_steps` ends before the run or is cut by it (not
        with `cycle`, which has no end)."""
        span, name = self.run_span if self.run_span[0] is not None else (steps, "Trainer.steps")
        if span is None or self.cycle or self.decay_steps_argument is None:
            return []
        length = self.transition_begin + self.decay_steps_argument
        copy = PolynomialDecayController.from_config(self.get_config())
        last = float(copy(make_signals(span - 1, 0.0)))
        binding = "PolynomialDecayController.decay_steps"
        if self.transition_begin:
            binding = "PolynomialDecayController.transition_begin + decay_steps"
        return length_warning(binding, length, span, name, f"end_lr = {self.end_lr:g}", last)

    def known_peak_lr(self) -> float | None:
        """The larger of `initial_lr` and `end_lr`."""
        return max(self.initial_lr, self.end_lr)

    def compute(self, signals: Signals) -> ControllerOutput:
        owner = "PolynomialDecayController"
        if self.decay_steps is None:
            run_length(owner, "decay_steps", None, None, 1)  # raises
        s = tf.maximum(step64(signals) - self.transition_begin, 0.0)
        span = float(self.decay_steps)
        if self.cycle:
            cycles = tf.where(tf.equal(s, 0.0), tf.ones_like(s), tf.math.ceil(s / span))
            p = s / (span * cycles)
        else:
            cycles = tf.ones_like(s)
            p = tf.minimum(s, span) / span
        lr = (self.initial_lr - self.end_lr) * tf.pow(1.0 - p, self.power) + self.end_lr
        diagnostics = {"progress": tf.cast(p, tf.float32)}
        if self.cycle:
            diagnostics["cycle"] = tf.cast(cycles, tf.float32)
        return ControllerOutput(tf.cast(lr, tf.float32), diagnostics)


@gin.configurable
class ExponentialDecayController(Controller):
    """Exponential decay, `initial_lr * decay_rate**(t / decay_steps)`, the sequence of
    Keras's `ExponentialDecay` and optax's `exponential_decay`.

    For batch index `t` (0-based), with `s = t - transition_begin` and `p = s /
    decay_steps` (`floor(p)` with `staircase`): `lr = initial_lr` while `s <= 0`, else
    `initial_lr * decay_rate**p`; with `end_lr`, bounded by it (from below when
    `decay_rate < 1`, from above otherwise), as optax does.

    From the references: Keras `ExponentialDecay(initial_learning_rate, decay_steps,
    decay_rate, staircase)` maps name for name (`initial_lr`, `decay_steps`,
    `decay_rate`, `staircase`); optax `exponential_decay(init_value, transition_steps,
    decay_rate, transition_begin, staircase, end_value)` is `initial_lr = init_value`,
    `decay_steps = transition_steps`, `decay_rate`, `transition_begin`, `staircase`,
    `end_lr = end_value`. PyTorch's `ExponentialLR(gamma)` stepped per batch is
    `decay_steps = 1, decay_rate = gamma` (or `StepController(step_size=1)`).

    Args:
      initial_lr: the LR at the start (> 0).
      decay_steps: batches over which the LR is multiplied by `decay_rate` (>= 1).
      decay_rate: the factor per `decay_steps` batches (> 0; above 1 the LR grows).
      staircase: decay in steps, every `decay_steps` batches (True), or every batch.
      transition_begin: batches held at `initial_lr` before the decay starts (>= 0).
      end_lr: None, or the bound the LR does not cross (>= 0).

    Examples:
      Trainer.controller = @ExponentialDecayController()
      ExponentialDecayController.initial_lr = 0.1
      ExponentialDecayController.decay_steps = 1000 # batches per factor of decay_rate
      ExponentialDecayController.decay_rate = 0.5

      >>> from lrresearch.controllers import ExponentialDecayController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = ExponentialDecayController(0.1, decay_steps=100, decay_rate=0.5, staircase=True)
      >>> [round(float(c.compute(make_signals(t, 1.0)).lr), 4) for t in (0, 99, 100, 250)]
      [0.1, 0.1, 0.05, 0.025]

    References:
      Keras, `keras.optimizers.schedules.ExponentialDecay`
      (https://keras.io/api/optimizers/learning_rate_schedules/exponential_decay/).
      optax, `optax.schedules.exponential_decay`
      (https://optax.readthedocs.io/en/latest/api/optimizer_schedules.html).
    """

    def __init__(
        self,
        initial_lr: float = 0.1,
        decay_steps: int = 1000,
        decay_rate: float = 0.5,
        staircase: bool = False,
        transition_begin: int = 0,
        end_lr: float | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "ExponentialDecayController"
        check_positive(owner, initial_lr=initial_lr, decay_rate=decay_rate)
        check_int(owner, "decay_steps", decay_steps, 1)
        check_bool(owner, "staircase", staircase)
        check_int(owner, "transition_begin", transition_begin, 0)
        if end_lr is not None:
            check_nonnegative(owner, end_lr=end_lr)
        self.initial_lr, self.decay_rate = float(initial_lr), float(decay_rate)
        self.decay_steps, self.staircase = decay_steps, staircase
        self.transition_begin = transition_begin
        self.end_lr = None if end_lr is None else float(end_lr)

    def known_peak_lr(self) -> float | None:
        """`initial_lr` (or a larger `end_lr`); a growing LR's bound `end_lr`, if any."""
        if self.decay_rate <= 1:
            return max(self.initial_lr, self.end_lr or 0.0)
        return self.end_lr  # a growing LR: its bound, if any

    def compute(self, signals: Signals) -> ControllerOutput:
        s = step64(signals) - self.transition_begin
        p = s / self.decay_steps
        if self.staircase:
            p = tf.floor(p)
        p = tf.where(s <= 0.0, tf.zeros_like(p), p)
        lr = self.initial_lr * tf.pow(tf.constant(self.decay_rate, tf.float64), p)
        if self.end_lr is not None:
            bound = tf.maximum if self.decay_rate < 1.0 else tf.minimum
            lr = bound(lr, self.end_lr)
        return ControllerOutput(tf.cast(lr, tf.float32), {"exponent": tf.cast(p, tf.float32)})


@gin.configurable
class InverseTimeDecayController(Controller):
    """Inverse time decay, `initial_lr / (1 + decay_rate * t / decay_steps)`, the
    sequence of Keras's `InverseTimeDecay`.

    For batch index `t` (0-based), with `p = t / decay_steps` (`floor(p)` with
    `staircase`): `lr = initial_lr / (1 + decay_rate * p)`. Keras's
    `InverseTimeDecay(initial_learning_rate, decay_steps, decay_rate, staircase)` maps
    name for name (`initial_lr`, `decay_steps`, `decay_rate`, `staircase`).

    Args:
      initial_lr: the LR at the start (> 0).
      decay_steps: batches per unit of `p` (>= 1).
      decay_rate: how fast the LR falls (> 0): it halves at `t = decay_steps /
        decay_rate`.
      staircase: decay in steps, every `decay_steps` batches (True), or every batch.

    Examples:
      Trainer.controller = @InverseTimeDecayController()
      InverseTimeDecayController.initial_lr = 0.1
      InverseTimeDecayController.decay_steps = 1000 # batches
      InverseTimeDecayController.decay_rate = 1.0   # halves at batch 1000

      >>> from lrresearch.controllers import InverseTimeDecayController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = InverseTimeDecayController(0.1, decay_steps=100, decay_rate=1.0)
      >>> [round(float(c.compute(make_signals(t, 1.0)).lr), 4) for t in (0, 100, 300)]
      [0.1, 0.05, 0.025]

    References:
      Keras, `keras.optimizers.schedules.InverseTimeDecay`
      (https://keras.io/api/optimizers/learning_rate_schedules/inverse_time_decay/).
    """

    def __init__(
        self,
        initial_lr: float = 0.1,
        decay_steps: int = 1000,
        decay_rate: float = 1.0,
        staircase: bool = False,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "InverseTimeDecayController"
        check_positive(owner, initial_lr=initial_lr, decay_rate=decay_rate)
        check_int(owner, "decay_steps", decay_steps, 1)
        check_bool(owner, "staircase", staircase)
        self.initial_lr, self.decay_rate = float(initial_lr), float(decay_rate)
        self.decay_steps, self.staircase = decay_steps, staircase

    def known_peak_lr(self) -> float | None:
        """Its `initial_lr`."""
        return self.initial_lr

    def compute(self, signals: Signals) -> ControllerOutput:
        p = step64(signals) / self.decay_steps
        if self.staircase:
            p = tf.floor(p)
        lr = self.initial_lr / (1.0 + self.decay_rate * p)
        return ControllerOutput(tf.cast(lr, tf.float32), {"periods": tf.cast(p, tf.float32)})
