"""The three seed strategies, with the write-up's default numbers, done right.

The write-up these come from does not run as written (numpy inside `tf.function`,
`math.floor` on tensors, an unreduced loss vector in `tf.cond`, a zero-filled loss
window). Each class below implements its *intent* with TF ops only; the README lists
every difference.
"""

from __future__ import annotations

import math

import gin
import tensorflow as tf

from lrresearch.checks import check_int, check_number, check_positive
from lrresearch.controllers.base import Controller, ControllerOutput
from lrresearch.controllers.compose import LossNudgeFactor, Product
from lrresearch.controllers.signals import Signals, update_slot


@gin.configurable
class GradNormController(Controller):
    """LR from the global gradient norm of the batch.

    `lr = low_norm_lr` if `global_norm < low_norm_threshold`, else
    `max(min_lr, base_lr - slope * global_norm)`. The norm is the global L2 norm of
    all gradients of the mean batch loss, before any clipping. A non-finite norm
    yields a non-finite LR, which the trainer's guard rejects (the previous LR is kept).

    Args:
      base_lr: LR at zero norm on the sloped branch.
      low_norm_threshold: norms strictly below this use `low_norm_lr` (a flat region:
        push harder).
      low_norm_lr: LR used in the flat region.
      slope: LR decrease per unit of gradient norm.
      min_lr: floor of the sloped branch.

    Examples:
      Trainer.controller = @GradNormController()
      GradNormController.base_lr = 0.1
      GradNormController.slope = 0.005

      >>> from lrresearch.controllers import GradNormController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = GradNormController()
      >>> [round(float(c.compute(make_signals(0, 1.0, norm)).lr), 4) for norm in (0, 2, 100)]
      [0.11, 0.09, 0.01]
    """

    def __init__(
        self,
        base_lr: float = 0.1,
        low_norm_threshold: float = 1e-3,
        low_norm_lr: float = 0.11,
        slope: float = 0.005,
        min_lr: float = 0.01,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "GradNormController"
        check_positive(owner, base_lr=base_lr, low_norm_lr=low_norm_lr, min_lr=min_lr)
        check_number(owner, "low_norm_threshold", low_norm_threshold)
        check_number(owner, "slope", slope)
        if slope < 0:
            raise ValueError(f"{owner}.slope must be >= 0, got {slope!r}")
        if min_lr > base_lr:
            raise ValueError(f"{owner}.min_lr ({min_lr}) must be <= base_lr ({base_lr})")
        self.base_lr, self.low_norm_threshold = float(base_lr), float(low_norm_threshold)
        self.low_norm_lr, self.slope, self.min_lr = float(low_norm_lr), float(slope), float(min_lr)
        self.initial_lr = self.base_lr

    def compute(self, signals: Signals) -> ControllerOutput:
        norm = tf.cast(signals.global_norm, tf.float32)
        low = norm < self.low_norm_threshold
        sloped = tf.maximum(self.min_lr, self.base_lr - self.slope * norm)
        # tf.maximum(x, NaN) is not NaN on every device; make a bad norm visibly bad.
        sloped = tf.where(tf.math.is_finite(norm), sloped, norm)
        lr = tf.where(low, self.low_norm_lr, sloped)
        return ControllerOutput(lr, {"low_norm": tf.cast(low, tf.float32)})


@gin.configurable
class LossTrendController(Controller):
    """Multiplicative LR steps from the trend of the batch loss over a moving window.

    The window holds the batch losses of the last `window` batches, the current one
    included. Once it is full, the mean of the newer `window // 2` losses is compared
    with the mean of the older `window - window // 2`: newer strictly higher means the
    loss is rising, so `lr *= decrease`; otherwise `lr *= increase`. The result is
    clipped to `[min_lr, max_lr]`. Until the window is full the LR stays at
    `initial_lr`. A non-finite batch loss is not added to the window and leaves the LR
    unchanged for that batch.

    Args:
      initial_lr: LR until the window is full (> 0).
      window: window length in batches (>= 2).
      decrease: factor applied when the loss rises (0 < decrease <= 1).
      increase: factor applied otherwise (>= 1).
      min_lr: lower bound of the LR.
      max_lr: upper bound of the LR (required: an unbounded x1.05 per batch grows
        ~1.3e21-fold in 1000 batches).

    The per-batch cost grows with the window (masks over it): measured compiled on 2
    CPU cores, ~0.02 ms at 100, ~0.1 ms at 1e4, ~0.4 ms at 1e5 (about the whole step of
    the default MLP), ~3.5 ms at 1e6; a window of 1e9 needs > 24 GB. Windows above
    `MAX_WINDOW` (1e5) are refused.

    Examples:
      Trainer.controller = @LossTrendController()
      LossTrendController.max_lr = 0.1              # required
      LossTrendController.window = 100              # batches
    """

    MAX_WINDOW = 100_000

    def __init__(
        self,
        initial_lr: float = 1e-3,
        window: int = 100,
        decrease: float = 0.95,
        increase: float = 1.05,
        min_lr: float = 1e-6,
        max_lr: float | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "LossTrendController"
        if max_lr is None:
            raise ValueError(
                f"{owner}.max_lr is required (an upper bound for the LR); "
                f"bind it, e.g. `{owner}.max_lr = 0.1`"
            )
        check_positive(
            owner,
            initial_lr=initial_lr,
            decrease=decrease,
            increase=increase,
            min_lr=min_lr,
            max_lr=max_lr,
        )
        check_int(owner, "window", window, 2)
        if window > self.MAX_WINDOW:
            raise ValueError(
                f"{owner}.window must be <= {self.MAX_WINDOW:,} batches, got {window:,}: "
                f"every batch averages both halves of the window (~0.4 ms per batch at 1e5, "
                f"~3.5 ms at 1e6, 7x the default step); use a window of at most a few "
                f"thousand batches"
            )
        if decrease > 1:
            raise ValueError(f"{owner}.decrease must be in (0, 1], got {decrease!r}")
        if increase < 1:
            raise ValueError(f"{owner}.increase must be >= 1, got {increase!r}")
        if min_lr > max_lr:
            raise ValueError(f"{owner}.min_lr ({min_lr}) must be <= max_lr ({max_lr})")
        if not min_lr <= initial_lr <= max_lr:
            raise ValueError(
                f"{owner}.initial_lr ({initial_lr}) must lie in [min_lr, max_lr] = "
                f"[{min_lr}, {max_lr}]"
            )
        self.initial_lr, self.window = float(initial_lr), window
        self.decrease, self.increase = float(decrease), float(increase)
        self.min_lr, self.max_lr = float(min_lr), float(max_lr)
        self.losses = tf.Variable(tf.zeros([window]), trainable=False, name="losses")
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="count")
        self.lr = tf.Variable(self.initial_lr, trainable=False, name="lr")

    def run_warnings(self, steps: int | None) -> list[str]:
        """Warns when the window cannot fill within the run (the LR never moves)."""
        if steps is None or self.window <= steps:
            return []
        return [
            f"LossTrendController.window = {self.window} never fills in Trainer.steps = "
            f"{steps} batches, so the LR stays at initial_lr = {self.initial_lr:g}; lower "
            f"the window"
        ]

    def compute(self, signals: Signals) -> ControllerOutput:
        loss = tf.cast(signals.loss, tf.float32)
        finite = tf.math.is_finite(loss)
        count = self.count + tf.cast(finite, tf.int64)
        slot = tf.math.floormod(count - 1, self.window)
        update_slot(self.losses, slot, tf.where(finite, loss, tf.gather(self.losses, slot)))
        self.count.assign(count)
        # Age of each slot (0 = this batch). Masks rather than tf.roll: Roll on a
        # 100-element vector cost ~0.3 ms per call on CPU, more than the whole step.
        age = tf.math.floormod(count - 1 - tf.range(self.window, dtype=tf.int64), self.window)
        newer = age < self.window // 2
        n_newer = float(self.window // 2)
        n_older = float(self.window - self.window // 2)
        newer_mean = tf.reduce_sum(tf.where(newer, self.losses, 0.0)) / n_newer
        older_mean = tf.reduce_sum(tf.where(newer, 0.0, self.losses)) / n_older
        trend = newer_mean - older_mean
        full = count >= self.window
        factor = tf.where(trend > 0, self.decrease, self.increase)
        adjusted = tf.clip_by_value(self.lr * factor, self.min_lr, self.max_lr)
        lr = tf.where(tf.logical_and(full, finite), adjusted, self.lr)
        self.lr.assign(lr)
        return ControllerOutput(
            lr,
            {
                "trend": tf.where(full, trend, 0.0),
                "window_fill": tf.minimum(tf.cast(count, tf.float32) / self.window, 1.0),
            },
        )


@gin.configurable
class CosineCycleController(Controller):
    """Cosine cycles from `max_lr` down to `min_lr`, restarting every `cycle_length`
    batches: with `x = (step mod cycle_length) / cycle_length`,
    `lr = min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * x))`.

    Args:
      min_lr: bottom of the cycle (> 0).
      max_lr: top of the cycle (>= min_lr).
      cycle_length: cycle length in batches (>= 1).

    Examples:
      Trainer.controller = @CosineCycleController()
      CosineCycleController.max_lr = 0.05
      CosineCycleController.cycle_length = 500      # batches
    """

    def __init__(
        self,
        min_lr: float = 1e-3,
        max_lr: float = 1e-2,
        cycle_length: int = 1000,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "CosineCycleController"
        check_positive(owner, min_lr=min_lr, max_lr=max_lr)
        check_int(owner, "cycle_length", cycle_length, 1)
        if min_lr > max_lr:
            raise ValueError(f"{owner}.min_lr ({min_lr}) must be <= max_lr ({max_lr})")
        self.min_lr, self.max_lr, self.cycle_length = float(min_lr), float(max_lr), cycle_length
        self.initial_lr = self.max_lr

    def compute(self, signals: Signals) -> ControllerOutput:
        phase = tf.math.floormod(tf.cast(signals.step, tf.int64), self.cycle_length)
        # float64, rounded once: in float32 the bottom of a cycle was a few ulps off.
        x = tf.cast(phase, tf.float64) / self.cycle_length
        lr = self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1.0 + tf.cos(math.pi * x))
        return ControllerOutput(tf.cast(lr, tf.float32), {})


@gin.configurable
class CyclicalController(Product):
    """The seed's third rule: cosine cycles between `max_lr` and `min_lr`, nudged up
    while the loss is low. A composition, `Product(CosineCycleController(min_lr,
    max_lr, cycle_length), LossNudgeFactor(nudge_below_loss, nudge_factor))`:

    with `x = (step mod cycle_length) / cycle_length` the base LR is
    `min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * x))`: each cycle starts at
    `max_lr` and falls to near `min_lr`, then restarts. The LR is that base times
    `nudge_factor` when the batch loss is strictly below `nudge_below_loss` (a NaN loss
    never nudges). Logged as `controller/base` and `controller/factor`.

    Args:
      min_lr: bottom of the cycle (> 0).
      max_lr: top of the cycle (>= min_lr).
      cycle_length: cycle length in batches (>= 1).
      nudge_below_loss: batch-loss threshold of the nudge.
      nudge_factor: multiplier applied below the threshold.

    Examples:
      Trainer.controller = @CyclicalController()
      CyclicalController.cycle_length = 500         # batches
      CyclicalController.nudge_below_loss = 0.5
    """

    def __init__(
        self,
        min_lr: float = 1e-3,
        max_lr: float = 1e-2,
        cycle_length: int = 1000,
        nudge_below_loss: float = 1.0,
        nudge_factor: float = 1.01,
        name: str | None = None,
    ):
        try:
            base = CosineCycleController(min_lr, max_lr, cycle_length)
            factor = LossNudgeFactor(nudge_below_loss, nudge_factor)
        except ValueError as e:
            raise ValueError(
                str(e)
                .replace("CosineCycleController.", "CyclicalController.")
                .replace("LossNudgeFactor.below_loss", "CyclicalController.nudge_below_loss")
                .replace("LossNudgeFactor.factor", "CyclicalController.nudge_factor")
            ) from None
        super().__init__(base=base, factor=factor, name=name)
        self.min_lr, self.max_lr, self.cycle_length = base.min_lr, base.max_lr, cycle_length
        self.nudge_below_loss, self.nudge_factor = factor.below_loss, factor.factor

    standalone = True
