"""Schedules with PyTorch's exact LR sequences, so results port across frameworks.

Batch `t` (0-based) gets the LR that PyTorch's scheduler gives after `t` calls of
`scheduler.step()` (i.e. at `last_epoch = t`), computed in float64 and applied as
float32. Deliberate differences are listed in each docstring.
"""

from __future__ import annotations

import math

import gin
import tensorflow as tf

from lrresearch.checks import check_bool, check_int, check_number, check_positive
from lrresearch.controllers.base import (
    Controller,
    ControllerOutput,
    check_cycle_momentum,
    length_warning,
    run_length,
)
from lrresearch.controllers.signals import Signals, make_signals, step64


def _check_momenta(owner: str, cycle_momentum: object, **momenta: float) -> None:
    check_bool(owner, "cycle_momentum", cycle_momentum)
    for name, value in momenta.items():
        check_number(owner, name, value)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{owner}.{name} must be in [0, 1), got {value!r}")


@gin.configurable
class OneCycleController(Controller):
    """`torch.optim.lr_scheduler.OneCycleLR`'s LR sequence.

    From `max_lr / div_factor` up to `max_lr` over the first `pct_start` of
    `total_steps`, then down to `max_lr / div_factor / final_div_factor`; with
    `three_phase`, up, back down to the initial LR, then down to the minimum. Phase `i`
    ends at step `pct_start * total_steps - 1` (and `2 * pct_start * total_steps - 2`
    for the second of three), exactly as PyTorch computes it.

    With `cycle_momentum`, the optimizer's momentum (SGD's `momentum`, Adam's `beta_1`,
    logged as `optimizer/momentum`) moves the other way over the same phases and with
    the same anneal: from `max_momentum` down to `base_momentum` while the LR rises,
    back up to `max_momentum` while it falls (three-phase: down, up, then held).

    Differences from PyTorch: `cycle_momentum` defaults to False (PyTorch: True), so
    existing configurations keep their results; after `total_steps` batches the LR
    (and momentum) stay at their final values where PyTorch raises.

    Args:
      max_lr: peak LR.
      total_steps: schedule length in batches (>= 2); None (the default): the run's
        length, `Trainer.steps` (required under Keras `fit`, where it is unknown).
      pct_start: fraction of the schedule spent increasing.
      anneal_strategy: "cos" or "linear".
      div_factor: initial LR = max_lr / div_factor.
      final_div_factor: minimum LR = initial LR / final_div_factor.
      three_phase: use PyTorch's three-phase variant.
      cycle_momentum: also set the optimizer's momentum every batch (needs one with
        momentum: SGD or MomentumSGD with momentum > 0, or Adam's kin).
      base_momentum: momentum at the LR's peak, in [0, 1).
      max_momentum: momentum at the LR's ends, in [0, 1).

    Examples:
      Trainer.controller = @OneCycleController()
      OneCycleController.max_lr = 0.1               # over Trainer.steps batches

      `OneCycleController(max_lr=0.1, total_steps=2000, cycle_momentum=True)` with
      `Trainer.optimizer = 'momentum'` is PyTorch's `OneCycleLR(optimizer, max_lr=0.1,
      total_steps=2000)` on `SGD(momentum=0.9)`, momentum included.

    References:
      PyTorch, `torch.optim.lr_scheduler.OneCycleLR`
      (https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.OneCycleLR.html).
      Smith, Topin. "Super-Convergence: Very Fast Training of Neural Networks Using
      Large Learning Rates." arXiv:1708.07120 (2017).
    """

    def __init__(
        self,
        max_lr: float = 0.1,
        total_steps: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        cycle_momentum: bool = False,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "OneCycleController"
        check_positive(
            owner, max_lr=max_lr, div_factor=div_factor, final_div_factor=final_div_factor
        )
        if total_steps is not None:
            check_int(owner, "total_steps", total_steps, 2)
        check_number(owner, "pct_start", pct_start)
        if not 0 < pct_start < 1:
            raise ValueError(f"{owner}.pct_start must be in (0, 1), got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"{owner}.anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}"
            )
        _check_momenta(
            owner, cycle_momentum, base_momentum=base_momentum, max_momentum=max_momentum
        )
        self.max_lr, self.total_steps_argument = float(max_lr), total_steps
        self.pct_start, self.run_span = float(pct_start), (None, "Trainer.steps")
        self.initial_lr = float(max_lr / div_factor)
        self.final_lr = self.initial_lr / final_div_factor
        self.momenta = (float(base_momentum), float(max_momentum))
        self.anneal_strategy, self.three_phase = anneal_strategy, bool(three_phase)
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.optimizer_hyperparameters = frozenset({"momentum"})
        self.total_steps, self.phases = None, None
        if total_steps is not None:
            self._set_phases(total_steps)

    def _set_phases(self, total_steps: int) -> None:
        """PyTorch's phases for a schedule of `total_steps` batches."""
        initial, minimum, max_lr = self.initial_lr, self.final_lr, self.max_lr
        (low, high), pct_start = self.momenta, self.pct_start
        self.total_steps = total_steps
        up_end = float(pct_start * total_steps) - 1
        # (end step, start LR, end LR, start momentum, end momentum), as PyTorch's phases.
        if self.three_phase:
            self.phases = [
                (up_end, initial, max_lr, high, low),
                (float(2 * pct_start * total_steps) - 2, max_lr, initial, low, high),
                (total_steps - 1.0, initial, minimum, high, high),
            ]
        else:
            self.phases = [
                (up_end, initial, max_lr, high, low),
                (total_steps - 1.0, max_lr, minimum, low, high),
            ]

    def set_run_length(self, steps: int | None, span: str = "Trainer.steps") -> dict[str, int]:
        """`total_steps = None` becomes `steps` (at least 2)."""
        owner, argument = "OneCycleController", self.total_steps_argument
        self._set_phases(run_length(owner, "total_steps", argument, steps, 2))
        self.run_span = (steps, span)
        return {} if argument is not None else {f"{owner}.total_steps": self.total_steps}

    def run_warnings(self, steps: int | None) -> list[str]:
        """Warns when the schedule ends before the run or is cut by it."""
        span, name = self.run_span if self.run_span[0] is not None else (steps, "Trainer.steps")
        if span is None or self.total_steps_argument is None:
            return []
        copy = OneCycleController.from_config(self.get_config())
        last = float(copy(make_signals(span - 1, 0.0)))
        end = f"max_lr / div_factor / final_div_factor = {self.final_lr:.3g}"
        binding = "OneCycleController.total_steps"
        return length_warning(binding, self.total_steps_argument, span, name, end, last)

    def check_optimizer(self, optimizer) -> None:
        """Refuses an optimizer without momentum when `cycle_momentum` is set."""
        if self.cycle_momentum:
            check_cycle_momentum("OneCycleController", optimizer)

    def _anneal(self, start: float, end: float, pct: tf.Tensor) -> tf.Tensor:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (tf.cos(math.pi * pct) + 1.0)
        return (end - start) * pct + start

    def known_peak_lr(self) -> float | None:
        """Its `max_lr`."""
        return self.max_lr

    def compute(self, signals: Signals) -> ControllerOutput:
        if self.total_steps is None:
            run_length("OneCycleController", "total_steps", None, None, 2)  # raises
        t = tf.minimum(step64(signals), self.total_steps - 1.0)
        lr = momentum = tf.constant(0.0, tf.float64)
        phase_index = tf.constant(0.0, tf.float64)
        chosen = tf.constant(False)
        start_step = 0.0
        for i, (end_step, start, end, start_momentum, end_momentum) in enumerate(self.phases):
            last = i == len(self.phases) - 1
            here = tf.logical_and(~chosen, t <= end_step) if not last else ~chosen
            pct = (t - start_step) / (end_step - start_step)
            lr = tf.where(here, self._anneal(start, end, pct), lr)
            if self.cycle_momentum:
                momentum = tf.where(here, self._anneal(start_momentum, end_momentum, pct), momentum)
            phase_index = tf.where(here, tf.constant(float(i), tf.float64), phase_index)
            chosen = tf.logical_or(chosen, here)
            start_step = end_step
        return ControllerOutput(
            tf.cast(lr, tf.float32),
            {"phase": tf.cast(phase_index, tf.float32)},
            momentum=tf.cast(momentum, tf.float32) if self.cycle_momentum else None,
        )


@gin.configurable
class CyclicController(Controller):
    """`torch.optim.lr_scheduler.CyclicLR`'s LR sequence.

    With `total = step_size_up + step_size_down`, `cycle = floor(1 + t / total)` and
    `x = 1 + t / total - cycle`, the scale is `x / r` while `x <= r` (rising) and
    `(x - 1) / (r - 1)` after (falling), `r = step_size_up / total`; the LR is
    `base_lr + (max_lr - base_lr) * scale * f`, with `f = 1` (triangular),
    `1 / 2**(cycle - 1)` (triangular2) or `gamma**t` (exp_range).

    With `cycle_momentum`, the optimizer's momentum (SGD's `momentum`, Adam's `beta_1`,
    logged as `optimizer/momentum`) moves inversely to the LR:
    `max_momentum - (max_momentum - base_momentum) * scale * f`.

    Differences from PyTorch: `cycle_momentum` defaults to False (PyTorch: True), so
    existing configurations keep their results; `base_lr` is an argument here (PyTorch
    takes it from the optimizer's param groups).

    Args:
      base_lr: LR at the bottom of each cycle.
      max_lr: LR at the top of each cycle (before the mode's scaling).
      step_size_up: batches of the rising half.
      step_size_down: batches of the falling half (default: `step_size_up`).
      mode: "triangular", "triangular2" or "exp_range".
      gamma: decay per batch for "exp_range".
      cycle_momentum: also set the optimizer's momentum every batch (needs one with
        momentum: SGD or MomentumSGD with momentum > 0, or Adam's kin).
      base_momentum: momentum at the LR's peak, in [0, 1).
      max_momentum: momentum at `base_lr`, in [0, 1).

    Examples:
      Trainer.controller = @CyclicController()
      CyclicController.base_lr = 0.01
      CyclicController.max_lr = 0.1
      CyclicController.step_size_up = 250           # batches

      `CyclicController(base_lr=0.01, max_lr=0.1, step_size_up=250, cycle_momentum=True)`
      with `Trainer.optimizer = 'momentum'` is PyTorch's `CyclicLR(optimizer, 0.01, 0.1,
      step_size_up=250)` on `SGD(momentum=0.9)`, momentum included.

    References:
      PyTorch, `torch.optim.lr_scheduler.CyclicLR`
      (https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.CyclicLR.html).
      Smith. "Cyclical Learning Rates for Training Neural Networks." WACV 2017.
    """

    def __init__(
        self,
        base_lr: float = 1e-3,
        max_lr: float = 6e-3,
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        cycle_momentum: bool = False,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "CyclicController"
        check_positive(owner, base_lr=base_lr, max_lr=max_lr, gamma=gamma)
        check_int(owner, "step_size_up", step_size_up, 1)
        if step_size_down is not None:
            check_int(owner, "step_size_down", step_size_down, 1)
        if mode not in ("triangular", "triangular2", "exp_range"):
            raise ValueError(
                f"{owner}.mode must be 'triangular', 'triangular2' or 'exp_range', got {mode!r}"
            )
        self.base_lr, self.max_lr, self.mode, self.gamma = (
            float(base_lr),
            float(max_lr),
            mode,
            float(gamma),
        )
        _check_momenta(
            owner, cycle_momentum, base_momentum=base_momentum, max_momentum=max_momentum
        )
        self.cycle_momentum = cycle_momentum
        self.base_momentum, self.max_momentum = float(base_momentum), float(max_momentum)
        if cycle_momentum:
            self.optimizer_hyperparameters = frozenset({"momentum"})
        down = step_size_up if step_size_down is None else step_size_down
        self.total_size = float(step_size_up + down)
        self.step_ratio = step_size_up / self.total_size
        self.initial_lr = self.base_lr

    def check_optimizer(self, optimizer) -> None:
        """Refuses an optimizer without momentum when `cycle_momentum` is set."""
        if self.cycle_momentum:
            check_cycle_momentum("CyclicController", optimizer)

    def known_peak_lr(self) -> float | None:
        """Its `max_lr`."""
        return self.max_lr

    def compute(self, signals: Signals) -> ControllerOutput:
        t = step64(signals)
        cycle = tf.floor(1.0 + t / self.total_size)
        x = 1.0 + t / self.total_size - cycle
        scale = tf.where(
            x <= self.step_ratio, x / self.step_ratio, (x - 1.0) / (self.step_ratio - 1.0)
        )
        if self.mode == "triangular":
            factor = tf.ones_like(t)
        elif self.mode == "triangular2":
            factor = 1.0 / tf.pow(tf.constant(2.0, tf.float64), cycle - 1.0)
        else:
            factor = tf.pow(tf.constant(self.gamma, tf.float64), t)
        lr = self.base_lr + (self.max_lr - self.base_lr) * scale * factor
        momentum = None
        if self.cycle_momentum:
            height = (self.max_momentum - self.base_momentum) * scale * factor
            momentum = tf.cast(self.max_momentum - height, tf.float32)
        return ControllerOutput(
            tf.cast(lr, tf.float32),
            {"cycle": tf.cast(cycle, tf.float32), "scale": tf.cast(scale, tf.float32)},
            momentum=momentum,
        )


@gin.configurable
class CosineRestartsController(Controller):
    """`torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`'s LR sequence (SGDR),
    stepped once per batch.

    Cycle `n` lasts `T_0 * T_mult**n` batches; within it, with `T_cur` batches done,
    `lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2`.

    Differences from PyTorch: `base_lr` is an argument (PyTorch takes it from the
    optimizer); the cycle is found in closed form with exact integer arithmetic rather
    than by PyTorch's float `log`, which agree on every step we tested.

    Args:
      base_lr: LR at the start of every cycle.
      T_0: first cycle length in batches.
      T_mult: growth factor of the cycle length (int >= 1).
      eta_min: LR at the end of each cycle.

    Examples:
      Trainer.controller = @CosineRestartsController()
      CosineRestartsController.T_0 = 500            # batches
      CosineRestartsController.T_mult = 2

    References:
      PyTorch, `torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`
      (https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.CosineAnnealingWarmRestarts.html).
      Loshchilov, Hutter. "SGDR: Stochastic Gradient Descent with Warm Restarts."
      ICLR 2017.
    """

    def __init__(
        self,
        base_lr: float = 0.1,
        T_0: int = 500,  # noqa: N803 - PyTorch's name
        T_mult: int = 1,  # noqa: N803
        eta_min: float = 0.0,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "CosineRestartsController"
        check_positive(owner, base_lr=base_lr)
        check_int(owner, "T_0", T_0, 1)
        check_int(owner, "T_mult", T_mult, 1)
        check_number(owner, "eta_min", eta_min)
        if not 0 <= eta_min <= base_lr:
            raise ValueError(f"{owner}.eta_min must be in [0, base_lr], got {eta_min!r}")
        self.base_lr, self.T_0, self.T_mult, self.eta_min = (
            float(base_lr),
            T_0,
            T_mult,
            float(eta_min),
        )
        self.initial_lr, self.run_span = self.base_lr, (None, "Trainer.steps")

    def set_run_length(self, steps: int | None, span: str = "Trainer.steps") -> dict[str, int]:
        """Records the run's length (a `Chain` part's own span) for `run_warnings`."""
        self.run_span = (steps, span)
        return {}

    def run_warnings(self, steps: int | None) -> list[str]:
        """Warns when the run ends inside a cycle: SGDR anneals to `eta_min` at each
        cycle's end, and a cut cycle leaves the last batch at a higher LR."""
        steps, name = self.run_span if self.run_span[0] is not None else (steps, "Trainer.steps")
        if steps is None:
            return []
        if self.T_mult == 1:
            start, length, n = (steps - 1) // self.T_0 * self.T_0, self.T_0, (steps - 1) // self.T_0
        else:
            start, length, n = 0, self.T_0, 0
            while start + length < steps:  # cycles grow: at most ~log2(steps) of them
                start, length, n = start + length, length * self.T_mult, n + 1
        if start + length == steps:
            return []
        last = float(self(make_signals(steps - 1, 0.0)))
        ends = " or ".join(str(end) for end in (start, start + length) if end > 0)
        return [
            f"CosineRestartsController's cycle {n} (batches {start} to {start + length - 1}) "
            f"is cut by {name} = {steps}: the run stops at LR {last:.3g}, not at "
            f"eta_min = {self.eta_min:g}; end the run at a cycle's end ({name} = "
            f"{ends}) or change T_0 or T_mult"
        ]

    def _cycle_start(self, n: tf.Tensor) -> tf.Tensor:
        """First step of cycle `n` (int64): T_0 * (T_mult**n - 1) / (T_mult - 1)."""
        if self.T_mult == 1:
            return self.T_0 * n
        return self.T_0 * (tf.pow(tf.constant(self.T_mult, tf.int64), n) - 1) // (self.T_mult - 1)

    def known_peak_lr(self) -> float | None:
        """Its `base_lr`."""
        return self.base_lr

    def compute(self, signals: Signals) -> ControllerOutput:
        t = tf.cast(signals.step, tf.int64)
        if self.T_mult == 1:
            n = t // self.T_0
        else:
            guess = tf.math.log(tf.cast(t, tf.float64) * (self.T_mult - 1) / self.T_0 + 1.0)
            n = tf.cast(tf.floor(guess / math.log(self.T_mult)), tf.int64)
            n = tf.where(self._cycle_start(n) > t, n - 1, n)  # float log was high
            n = tf.where(self._cycle_start(n + 1) <= t, n + 1, n)  # or low
        t_cur = tf.cast(t - self._cycle_start(n), tf.float64)
        t_i = tf.cast(self.T_0 * tf.pow(tf.constant(self.T_mult, tf.int64), n), tf.float64)
        lr = (
            self.eta_min
            + (self.base_lr - self.eta_min) * (1.0 + tf.cos(math.pi * t_cur / t_i)) / 2.0
        )
        return ControllerOutput(
            tf.cast(lr, tf.float32),
            {"cycle": tf.cast(n, tf.float32), "cycle_progress": tf.cast(t_cur / t_i, tf.float32)},
        )
