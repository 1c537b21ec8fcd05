"""Composition and guards: controllers built from controllers.

`Product(base, factor)` multiplies a schedule by a feedback factor (the seed's
"cosine x loss nudge" is `Product(CosineCycle, LossNudgeFactor)`), `Chain`
(`chain.py`) switches controllers at step boundaries, `Warmup` ramps any controller
in, `Clamp` bounds it and `MaxChange` limits how far the LR may move in one batch (the
seed's "smooth, controlled adjustments"). Each logs its parts under `controller/` (`base`, `factor`,
and the parts' own signals as `base/<name>`, `factor/<name>`), so a reader sees why
the LR moved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import gin
import keras
import tensorflow as tf

from lrresearch.checks import check_int, check_number, check_positive
from lrresearch.controllers.base import Controller, ControllerOutput
from lrresearch.controllers.signals import Signals


def check_controller(owner: str, name: str, value: object) -> None:
    if not isinstance(value, Controller):
        raise ValueError(
            f"{owner}.{name} must be a controller such as @ConstantController() "
            f"(with the parentheses), got {value!r}"
        )


def nested(prefix: str, diagnostics: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {f"{prefix}/{key}": value for key, value in diagnostics.items()}


class Composite(Controller):
    """A controller made of others: the host-side hooks forward to every part."""

    def _children(self) -> list[Controller]:
        raise NotImplementedError

    @property
    def optimizer_hyperparameters(self) -> frozenset[str]:
        """What the parts set besides the LR; a composite passes their values on."""
        return frozenset().union(*(part.optimizer_hyperparameters for part in self._children()))

    def check_optimizer(self, optimizer: keras.optimizers.Optimizer) -> None:
        for part in self._children():
            part.check_optimizer(optimizer)

    def set_run_length(self, steps: int | None, span: str = "Trainer.steps") -> dict[str, int]:
        lengths = [part.set_run_length(steps, span) for part in self._children()]
        return {binding: n for each in lengths for binding, n in each.items()}

    def run_warnings(self, steps: int | None) -> list[str]:
        return [w for part in self._children() for w in part.run_warnings(steps)]

    def state_warnings(self) -> list[str]:
        return [w for part in self._children() for w in part.state_warnings()]


@gin.configurable
class LossNudgeFactor(Controller):
    """A multiplier, not an LR: `factor` while the batch loss is strictly below
    `below_loss`, else 1 (a NaN loss never nudges). Meant for `Product`.

    Args:
      below_loss: loss threshold.
      factor: multiplier applied below it.

    Examples:
      Trainer.controller = @Product()
      Product.base = @CosineCycleController()
      Product.factor = @LossNudgeFactor()
      LossNudgeFactor.below_loss = 0.5
    """

    standalone = False

    def __init__(self, below_loss: float = 1.0, factor: float = 1.01, name: str | None = None):
        super().__init__(name=name)
        check_number("LossNudgeFactor", "below_loss", below_loss)
        check_positive("LossNudgeFactor", factor=factor)
        self.below_loss, self.factor = float(below_loss), float(factor)
        self.initial_lr = 1.0

    def compute(self, signals: Signals) -> ControllerOutput:
        nudge = tf.where(tf.cast(signals.loss, tf.float32) < self.below_loss, self.factor, 1.0)
        return ControllerOutput(nudge, {})


@gin.configurable
class Product(Composite):
    """`lr = base(signals) * factor(signals)`; logs `base` and `factor`.

    Args:
      base: usually a schedule (the LR before feedback).
      factor: usually a feedback multiplier such as `LossNudgeFactor`.

    Examples:
      Trainer.controller = @Product()
      Product.base = @CosineRestartsController()
      Product.factor = @LossNudgeFactor()
    """

    standalone = False

    def __init__(
        self,
        base: Controller = gin.REQUIRED,
        factor: Controller = gin.REQUIRED,
        name: str | None = None,
    ):
        super().__init__(name=name)
        check_controller("Product", "base", base)
        check_controller("Product", "factor", factor)
        if factor.optimizer_hyperparameters:
            raise ValueError(
                f"Product.factor must set the LR factor only, got {type(factor).__name__} "
                f"which also sets {sorted(factor.optimizer_hyperparameters)}; make it the base"
            )
        self.base, self.factor = base, factor
        self.initial_lr = base.initial_lr * factor.initial_lr

    def build(self, variables: Sequence[tf.Variable]) -> None:
        self.base.build(variables)
        self.factor.build(variables)

    def _children(self) -> list[Controller]:
        return [self.base, self.factor]

    def compute(self, signals: Signals) -> ControllerOutput:
        base, factor = self.base.compute(signals), self.factor.compute(signals)
        return base._replace(
            lr=base.lr * factor.lr,
            diagnostics={
                "base": base.lr,
                "factor": factor.lr,
                **nested("base", base.diagnostics),
                **nested("factor", factor.diagnostics),
            },
        )


class _Wrapper(Composite):
    """A controller around one other, `self.base`."""

    base: Controller

    def build(self, variables: Sequence[tf.Variable]) -> None:
        self.base.build(variables)

    def _children(self) -> list[Controller]:
        return [self.base]


@gin.configurable
class Warmup(_Wrapper):
    """Ramps `controller`'s LR in over `warmup_steps` batches: `lr = base * factor`.

    `shape="linear"`: `factor = start_factor + (1 - start_factor) * min(t, W) / W`
    (PyTorch's `LinearLR(start_factor, end_factor=1, total_iters=W)`);
    `shape="exponential"`: `factor = start_factor ** (1 - min(t, W) / W)`, a geometric
    ramp (equal ratios per batch; `start_factor` must be > 0).

    Args:
      controller: the controller being warmed up (called every batch).
      warmup_steps: ramp length in batches (>= 1).
      start_factor: factor at batch 0.
      shape: "linear" or "exponential".

    Examples:
      Trainer.controller = @Warmup()
      Warmup.controller = @PolyakController()
      Warmup.warmup_steps = 200                     # batches

    References:
      PyTorch, `torch.optim.lr_scheduler.LinearLR`
      (https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.LinearLR.html).
      Goyal et al. "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour."
      arXiv:1706.02677 (2017).
    """

    standalone = False

    def __init__(
        self,
        controller: Controller = gin.REQUIRED,
        warmup_steps: int = 100,
        start_factor: float = 0.01,
        shape: str = "linear",
        name: str | None = None,
    ):
        super().__init__(name=name)
        check_controller("Warmup", "controller", controller)
        check_int("Warmup", "warmup_steps", warmup_steps, 1)
        check_number("Warmup", "start_factor", start_factor)
        if shape not in ("linear", "exponential"):
            raise ValueError(f"Warmup.shape must be 'linear' or 'exponential', got {shape!r}")
        if shape == "linear" and not 0.0 <= start_factor <= 1.0:
            raise ValueError(f"Warmup.start_factor must be in [0, 1], got {start_factor!r}")
        if shape == "exponential" and not 0.0 < start_factor <= 1.0:
            raise ValueError(
                f"Warmup.start_factor must be in (0, 1] for an exponential ramp, "
                f"got {start_factor!r}"
            )
        self.base, self.warmup_steps = controller, warmup_steps
        self.start_factor, self.shape = float(start_factor), shape
        self.initial_lr = controller.initial_lr * self.start_factor

    def run_warnings(self, steps: int | None) -> list[str]:
        """The controller's warnings, and a ramp that outlasts the run."""
        warnings = super().run_warnings(steps)
        if steps is not None and self.warmup_steps >= steps:
            warnings.append(
                f"Warmup.warmup_steps = {self.warmup_steps} is not over in Trainer.steps = "
                f"{steps} batches, so the LR never reaches the warmed-up controller's (the "
                f"last batch gets {self._factor_at(steps - 1):.3g} of it); lower "
                f"Warmup.warmup_steps"
            )
        return warnings

    def _factor_at(self, step: int) -> float:
        """The ramp's factor at `step`, host-side (for messages)."""
        progress = min(step / self.warmup_steps, 1.0)
        if self.shape == "linear":
            return self.start_factor + (1.0 - self.start_factor) * progress
        return self.start_factor ** (1.0 - progress)

    def known_peak_lr(self) -> float | None:
        """Its controller's: the warmup never raises the LR."""
        return self.base.known_peak_lr()

    def compute(self, signals: Signals) -> ControllerOutput:
        out = self.base.compute(signals)
        # float64, rounded once at the end, as the schedules (see WarmupCosineController).
        progress = tf.minimum(tf.cast(signals.step, tf.float64) / self.warmup_steps, 1.0)
        if self.shape == "linear":
            factor = self.start_factor + (1.0 - self.start_factor) * progress
        else:
            factor = tf.exp(math.log(self.start_factor) * (1.0 - progress))
        lr = tf.cast(tf.cast(out.lr, tf.float64) * factor, tf.float32)
        # `_replace` passes the base's other optimizer hyperparameters on.
        return out._replace(
            lr=lr,
            diagnostics={
                "base": out.lr,
                "factor": tf.cast(factor, tf.float32),
                **nested("base", out.diagnostics),
            },
        )


@gin.configurable
class Clamp(_Wrapper):
    """`lr = clip(controller(signals), min_lr, max_lr)`; logs `base` and `clamped`.

    Args:
      controller: the controller being bounded.
      min_lr: lower bound (>= 0).
      max_lr: upper bound (>= min_lr).

    Examples:
      Trainer.controller = @Clamp()
      Clamp.controller = @PolyakController()
      Clamp.min_lr = 0.01
      Clamp.max_lr = 0.5
    """

    standalone = False

    def __init__(
        self,
        controller: Controller = gin.REQUIRED,
        min_lr: float = 0.0,
        max_lr: float = gin.REQUIRED,
        name: str | None = None,
    ):
        super().__init__(name=name)
        check_controller("Clamp", "controller", controller)
        check_number("Clamp", "min_lr", min_lr)
        check_positive("Clamp", max_lr=max_lr)
        if not 0 <= min_lr <= max_lr:
            raise ValueError(f"Clamp.min_lr ({min_lr}) must be in [0, max_lr ({max_lr})]")
        self.base, self.min_lr, self.max_lr = controller, float(min_lr), float(max_lr)
        self.initial_lr = min(max(controller.initial_lr, self.min_lr), self.max_lr)

    def known_peak_lr(self) -> float | None:
        """The smaller of its controller's and `max_lr`."""
        peak = self.base.known_peak_lr()
        return None if peak is None else min(peak, self.max_lr)

    def compute(self, signals: Signals) -> ControllerOutput:
        out = self.base.compute(signals)
        lr = tf.clip_by_value(tf.cast(out.lr, tf.float32), self.min_lr, self.max_lr)
        # `_replace` passes the base's other optimizer hyperparameters on.
        return out._replace(
            lr=lr,
            diagnostics={
                "base": out.lr,
                "clamped": tf.cast(tf.not_equal(lr, out.lr), tf.float32),
                **nested("base", out.diagnostics),
            },
        )


@gin.configurable
class MaxChange(_Wrapper):
    """Limits the change per batch: the LR stays within
    `[previous / (1 + max_change_ratio), previous * (1 + max_change_ratio)]`, where
    `previous` is the LR applied to the previous batch (`Signals.lr`; the controller's
    `initial_lr` at step 0). Logs `base` and `limited`.

    Args:
      controller: the controller being smoothed.
      max_change_ratio: largest relative change per batch (> 0), e.g. 0.05 = 5%.

    Examples:
      Trainer.controller = @MaxChange()
      MaxChange.controller = @PolyakController()
      MaxChange.max_change_ratio = 0.05             # at most 5% per batch
    """

    standalone = False

    def __init__(
        self,
        controller: Controller = gin.REQUIRED,
        max_change_ratio: float = 0.05,
        name: str | None = None,
    ):
        super().__init__(name=name)
        check_controller("MaxChange", "controller", controller)
        check_positive("MaxChange", max_change_ratio=max_change_ratio)
        self.base, self.ratio = controller, float(max_change_ratio)
        self.initial_lr = controller.initial_lr

    def known_peak_lr(self) -> float | None:
        """Its controller's: a limited change never overshoots it."""
        return self.base.known_peak_lr()

    def compute(self, signals: Signals) -> ControllerOutput:
        out = self.base.compute(signals)
        previous = tf.cast(signals.lr, tf.float32)
        proposed = tf.cast(out.lr, tf.float32)
        lr = tf.clip_by_value(
            proposed, previous / (1.0 + self.ratio), previous * (1.0 + self.ratio)
        )
        # A zero previous LR would pin the LR at zero forever: let it start.
        lr = tf.where(previous > 0, lr, proposed)
        # `_replace` passes the base's other optimizer hyperparameters on.
        return out._replace(
            lr=lr,
            diagnostics={
                "base": out.lr,
                "limited": tf.cast(tf.not_equal(lr, proposed), tf.float32),
                **nested("base", out.diagnostics),
            },
        )
