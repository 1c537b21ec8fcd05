"""Piecewise-constant families: the LR jumps at given batches and is constant between
them (Keras's `PiecewiseConstantDecay`, optax's `piecewise_constant_schedule`,
PyTorch's `StepLR` and `MultiStepLR`), computed in float64, rounded to float32 once.

PyTorch's `StepLR` and `MultiStepLR`, stepped once per batch, return their chainable
form per step: the optimizer's LR multiplied by `gamma` (a float64 product) at each
decay. Ours is the closed form `base_lr * gamma**k` in float64. The two differ by at
most `k` float64 roundings (`k * 1.1e-16` relative: 1e-13 after 1,000 decays), far
below the float32 rounding of the LR the optimizer applies (6e-8), so both round to the
same float32 LR but in rare ties; `tools/check_schedule_families_reference.py` counts
the batches where they do not.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import gin
import tensorflow as tf

from lrresearch.checks import check_int, check_nonnegative, check_positive
from lrresearch.controllers.base import Controller, ControllerOutput
from lrresearch.controllers.signals import Signals

AT_BOUNDARY = ("previous", "next")


def _check_batches(owner: str, name: str, values: object, minimum: int, strict: bool) -> None:
    """Raises ValueError naming `owner.name` unless `values` is a non-empty list of ints
    >= `minimum` in increasing order (non-decreasing unless `strict`)."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{owner}.{name} must be a non-empty list of batches, got {values!r}")
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(
                f"{owner}.{name} must be ints >= {minimum} (batches), got {list(values)!r} "
                f"({name}[{i}] = {value!r})"
            )
    for i, (low, high) in enumerate(itertools.pairwise(values)):
        if high < low or (strict and high == low):
            order = "increasing" if strict else "non-decreasing"
            fix = f"sort it: {sorted(values)!r}" if high < low else "list each batch once"
            raise ValueError(
                f"{owner}.{name} must be {order}, got {list(values)!r} ({name}[{i + 1}] = "
                f"{high} after {low}); {fix}"
            )


def _unreached(
    owner: str, name: str, batches: Sequence[int], steps: int | None, span: str, delay: int = 0
) -> list[str]:
    """A warning for each of `batches` whose change (at `batch + delay`) a run of
    `steps` batches (named `span`) never reaches."""
    if steps is None:
        return []
    return [
        f"{owner}.{name}[{i}] = {b} is not reached in {span} = {steps} batches, so the LR "
        f"never changes there; lower it or raise {span}"
        for i, b in enumerate(batches)
        if b + delay >= steps
    ]


@gin.configurable
class PiecewiseConstantController(Controller):
    """A constant LR between given batches, the sequence of Keras's
    `PiecewiseConstantDecay` and optax's `piecewise_constant_schedule`.

    With `boundaries = [b0, b1, ...]` and `values = [v0, v1, ..., vn]` (one more value
    than boundaries), batch `t` (0-based) gets `values[k]`, `k` the number of
    boundaries before it: `b < t` with `at_boundary = 'previous'` (Keras: batch `b0`
    still gets `v0`, `v1` starts at `b0 + 1`), `b <= t` with `'next'` (optax and
    PyTorch: `v1` starts at batch `b0`).

    From the references: Keras `PiecewiseConstantDecay(boundaries, values)` is
    `boundaries`, `values`, `at_boundary = 'previous'`; optax
    `piecewise_constant_schedule(init_value, {b0: s0, b1: s1})` is `boundaries = [b0,
    b1]`, `values = [init_value, init_value * s0, init_value * s0 * s1]`,
    `at_boundary = 'next'`.

    Args:
      boundaries: batches where the value changes, increasing ints >= 0.
      values: the LRs, `len(boundaries) + 1` numbers >= 0 (the first > 0).
      at_boundary: which value a boundary batch itself gets, "previous" or "next".

    Examples:
      Trainer.controller = @PiecewiseConstantController()
      PiecewiseConstantController.boundaries = [1000, 1500]   # batches
      PiecewiseConstantController.values = [0.1, 0.01, 0.001]

      >>> from lrresearch.controllers import PiecewiseConstantController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = PiecewiseConstantController([100, 150], [0.1, 0.01, 0.001])
      >>> [round(float(c.compute(make_signals(t, 1.0)).lr), 4) for t in (0, 100, 101, 151)]
      [0.1, 0.1, 0.01, 0.001]

    References:
      Keras, `keras.optimizers.schedules.PiecewiseConstantDecay`
      (https://keras.io/api/optimizers/learning_rate_schedules/piecewise_constant_decay/).
      optax, `optax.schedules.piecewise_constant_schedule`
      (https://optax.readthedocs.io/en/latest/api/optimizer_schedules.html).
    """

    def __init__(
        self,
        boundaries: Sequence[int] = (1000, 1500),
        values: Sequence[float] = (0.1, 0.01, 0.001),
        at_boundary: str = "previous",
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "PiecewiseConstantController"
        _check_batches(owner, "boundaries", boundaries, 0, strict=True)
        if not isinstance(values, (list, tuple)) or len(values) != len(boundaries) + 1:
            raise ValueError(
                f"{owner}.values must be a list of len(boundaries) + 1 = "
                f"{len(boundaries) + 1} LRs, got {values!r}"
            )
        for i, value in enumerate(values):
            check = check_positive if i == 0 else check_nonnegative
            try:
                check(owner, **{f"values[{i}]": value})
            except ValueError as error:  # named by the binding, for the config's error
                message = str(error).replace(f"{owner}.values[{i}]", f"values[{i}]")
                raise ValueError(
                    f"{owner}.values must be LRs, got {list(values)!r}: {message}"
                ) from None
        if at_boundary not in AT_BOUNDARY:
            raise ValueError(
                f"{owner}.at_boundary must be 'previous' (Keras) or 'next' (optax), "
                f"got {at_boundary!r}"
            )
        self.boundaries, self.values = list(boundaries), [float(v) for v in values]
        self.at_boundary, self.initial_lr = at_boundary, self.values[0]
        if at_boundary == "next" and self.boundaries[0] == 0:
            self.initial_lr = self.values[1]
        self.run_span: tuple[int | None, str] = (None, "Trainer.steps")

    def set_run_length(self, steps: int | None, span: str = "Trainer.steps") -> dict[str, int]:
        """Records the run's length (a `Chain` part's own span) for `run_warnings`."""
        self.run_span = (steps, span)
        return {}

    def run_warnings(self, steps: int | None) -> list[str]:
        """Warns about boundaries the run never reaches."""
        span, name = self.run_span if self.run_span[0] is not None else (steps, "Trainer.steps")
        delay = int(self.at_boundary == "previous")  # the new value starts at b + 1
        owner = "PiecewiseConstantController"
        return _unreached(owner, "boundaries", self.boundaries, span, name, delay)

    def known_peak_lr(self) -> float | None:
        """The largest of its `values`."""
        return max(self.values)

    def compute(self, signals: Signals) -> ControllerOutput:
        t = tf.cast(signals.step, tf.int64)
        # `[..., None]`: a step of any shape (a vector of steps, in tests) broadcasts.
        boundaries, t = tf.constant(self.boundaries, tf.int64), t[..., None]
        before = t > boundaries if self.at_boundary == "previous" else t >= boundaries
        piece = tf.reduce_sum(tf.cast(before, tf.int32), axis=-1)
        lr = tf.gather(tf.constant(self.values, tf.float64), piece)
        return ControllerOutput(tf.cast(lr, tf.float32), {"piece": tf.cast(piece, tf.float32)})


@gin.configurable
class StepController(Controller):
    """`torch.optim.lr_scheduler.StepLR`'s LR sequence, stepped once per batch: the LR
    is multiplied by `gamma` every `step_size` batches.

    For batch index `t` (0-based): `lr = base_lr * gamma**floor(t / step_size)`, PyTorch's
    LR after `t` calls of `scheduler.step()` (see the module docstring for its
    chainable form). PyTorch's `ExponentialLR(gamma)` is `step_size = 1`.

    Differences from PyTorch: `base_lr` is an argument (PyTorch takes it from the
    optimizer); sizes are in batches (PyTorch's scheduler is stepped per epoch in
    its examples: multiply by the batches per epoch).

    Args:
      base_lr: the LR of the first `step_size` batches (> 0).
      step_size: batches between decays (>= 1).
      gamma: the factor per decay (> 0).

    Examples:
      Trainer.controller = @StepController()
      StepController.base_lr = 0.1
      StepController.step_size = 500                # batches
      StepController.gamma = 0.5

      >>> from lrresearch.controllers import StepController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = StepController(base_lr=0.1, step_size=100, gamma=0.5)
      >>> [round(float(c.compute(make_signals(t, 1.0)).lr), 4) for t in (0, 99, 100, 200)]
      [0.1, 0.1, 0.05, 0.025]

    References:
      PyTorch, `torch.optim.lr_scheduler.StepLR`
      (https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.StepLR.html).
    """

    def __init__(
        self,
        base_lr: float = 0.1,
        step_size: int = 1000,
        gamma: float = 0.1,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "StepController"
        check_positive(owner, base_lr=base_lr, gamma=gamma)
        check_int(owner, "step_size", step_size, 1)
        self.base_lr, self.step_size, self.gamma = float(base_lr), step_size, float(gamma)
        self.initial_lr = self.base_lr

    def known_peak_lr(self) -> float | None:
        """Its LR at batch 0, unless `gamma > 1` grows it without bound."""
        return self.initial_lr if self.gamma <= 1 else None

    def compute(self, signals: Signals) -> ControllerOutput:
        decays = tf.cast(tf.cast(signals.step, tf.int64) // self.step_size, tf.float64)
        lr = self.base_lr * tf.pow(tf.constant(self.gamma, tf.float64), decays)
        return ControllerOutput(tf.cast(lr, tf.float32), {"decays": tf.cast(decays, tf.float32)})


@gin.configurable
class MultiStepController(Controller):
    """`torch.optim.lr_scheduler.MultiStepLR`'s LR sequence, stepped once per batch: the
    LR is multiplied by `gamma` at each milestone.

    For batch index `t` (0-based): `lr = base_lr * gamma**k`, `k` the number of
    milestones `<= t` (a milestone listed twice counts twice, as in PyTorch), PyTorch's
    LR after `t` calls of `scheduler.step()` (see the module docstring for its
    chainable form).

    Differences from PyTorch: `base_lr` is an argument (PyTorch takes it from the
    optimizer); milestones are batches (multiply PyTorch's epochs by the batches per
    epoch) and must be in order (PyTorch sorts them silently).

    Args:
      base_lr: the LR before the first milestone (> 0).
      milestones: batches at which the LR is multiplied by `gamma`, non-decreasing
        ints >= 0.
      gamma: the factor per milestone (> 0).

    Examples:
      Trainer.controller = @MultiStepController()
      MultiStepController.base_lr = 0.1
      MultiStepController.milestones = [1000, 1500] # batches
      MultiStepController.gamma = 0.1

      >>> from lrresearch.controllers import MultiStepController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = MultiStepController(base_lr=0.1, milestones=[100, 150], gamma=0.1)
      >>> [round(float(c.compute(make_signals(t, 1.0)).lr), 4) for t in (0, 99, 100, 150)]
      [0.1, 0.1, 0.01, 0.001]

    References:
      PyTorch, `torch.optim.lr_scheduler.MultiStepLR`
      (https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.MultiStepLR.html).
    """

    def __init__(
        self,
        base_lr: float = 0.1,
        milestones: Sequence[int] = (1000, 1500),
        gamma: float = 0.1,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "MultiStepController"
        check_positive(owner, base_lr=base_lr, gamma=gamma)
        _check_batches(owner, "milestones", milestones, 0, strict=False)
        self.base_lr, self.milestones, self.gamma = float(base_lr), list(milestones), float(gamma)
        self.initial_lr = self.base_lr * self.gamma ** self.milestones.count(0)
        self.run_span: tuple[int | None, str] = (None, "Trainer.steps")

    def set_run_length(self, steps: int | None, span: str = "Trainer.steps") -> dict[str, int]:
        """Records the run's length (a `Chain` part's own span) for `run_warnings`."""
        self.run_span = (steps, span)
        return {}

    def run_warnings(self, steps: int | None) -> list[str]:
        """Warns about milestones the run never reaches."""
        span, name = self.run_span if self.run_span[0] is not None else (steps, "Trainer.steps")
        return _unreached("MultiStepController", "milestones", self.milestones, span, name)

    def known_peak_lr(self) -> float | None:
        """Its LR at batch 0, unless `gamma > 1` grows it without bound."""
        return self.initial_lr if self.gamma <= 1 else None

    def compute(self, signals: Signals) -> ControllerOutput:
        t = tf.cast(signals.step, tf.int64)
        passed = tf.cast(t[..., None] >= tf.constant(self.milestones, tf.int64), tf.float64)
        decays = tf.reduce_sum(passed, axis=-1)  # a step of any shape broadcasts
        lr = self.base_lr * tf.pow(tf.constant(self.gamma, tf.float64), decays)
        return ControllerOutput(tf.cast(lr, tf.float32), {"decays": tf.cast(decays, tf.float32)})
