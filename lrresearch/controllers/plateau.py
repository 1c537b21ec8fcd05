"""Reduce-on-plateau: per batch on a training-loss average (PyTorch's rule), or at the
eval cadence on any logged `eval/<name>` (Keras's `ReduceLROnPlateau` rule).

All state lives in `tf.Variable`s (checkpointed); every decision is computed in-graph.
An evaluation's value reaches the controller host-side, between compiled calls
(`lrresearch.controllers.evaluation`), and the next batch acts on it.
"""

from __future__ import annotations

from collections.abc import Mapping

import gin
import numpy as np
import tensorflow as tf

from lrresearch.checks import check_int, check_number, check_positive
from lrresearch.controllers.base import Controller, ControllerOutput
from lrresearch.controllers.evaluation import FIT_PREFIX, TRAINER_PREFIX
from lrresearch.controllers.signals import Signals

LOSS_MONITORS = ("loss_ma_long", "loss_ma_short", "loss")
# The defaults a monitor kind does not use: binding another value there is an error.
_THRESHOLD, _MIN_DELTA = 1e-4, 1e-4
# `patience=None`: PyTorch's scale for batches (ours since issue 5), Keras's for epochs.
_PATIENCE_BATCHES, _PATIENCE_EVALUATIONS = 200, 10


@gin.configurable
class PlateauController(Controller):
    """Reduce-on-plateau, per batch on a training-loss average or at the eval cadence on
    an eval metric (`monitor = 'eval/<name>'`).

    On a training loss (`monitor` "loss_ma_long", the default, "loss_ma_short" or
    "loss", the noisy batch loss): `torch.optim.lr_scheduler.ReduceLROnPlateau`'s
    logic (mode "min", relative `threshold`), every batch. A batch is an improvement if
    `metric < best * (1 - threshold)`. After more than `patience` batches without one,
    `lr = max(lr * factor, min_lr)` and `cooldown` batches follow during which bad
    batches are not counted. A non-finite metric is ignored (no count, no change).
    Logs `best` and `bad_batches`.

    On an evaluation (`monitor = 'eval/<name>'`: `eval/loss` or any metric of
    `Trainer.metrics`; Keras's spelling `'val_<name>'` is the same): Keras's
    `ReduceLROnPlateau(monitor, factor, patience, mode, min_delta, cooldown, min_lr)`,
    one evaluation counting as one of its epochs. At each evaluation, in Keras's order:
    in cooldown, `cooldown -= 1` and `wait = 0`; an improvement (the first value, or
    `value + min_delta < best` in mode "min", `value - min_delta > best` in "max"; a
    NaN never is) sets `best = value, wait = 0`; otherwise, out of cooldown, `wait += 1`,
    and at `wait >= patience`, if `lr > min_lr`, `lr = max(lr * factor, min_lr)`,
    `cooldown = cooldown` and `wait = 0`. Mode "auto" is "min" for the loss and follows
    the metric's Keras direction (accuracy: "max") otherwise. The evaluation runs on the
    host between compiled calls; its value is handed to the controller there, and the
    decision takes effect at the next batch, the batch where `controller/reduced` is 1.
    Logs `monitored` (the latest value), `best`, `wait`, `cooldown` and `reduced`. A
    `monitor` the run does not log is an error before training that lists those it
    does. Under Keras `fit` (`ControlledModel`) the values come from the epoch logs.

    Args:
      initial_lr: starting LR.
      monitor: "loss_ma_long", "loss_ma_short", "loss", or "eval/<name>".
      patience: batches (training loss) or evaluations (eval metric) without
        improvement before a cut; None: 200 batches, or 10 evaluations (Keras's
        default).
      factor: multiplier of a cut (0 < factor < 1).
      cooldown: batches (evaluations) after a cut during which bad ones are not counted.
      min_lr: floor.
      threshold: relative improvement that counts, for a training-loss monitor.
      mode: "auto", "min" or "max", for an eval monitor ("auto" or "min" otherwise).
      min_delta: absolute improvement that counts, for an eval monitor.

    Examples:
      Trainer.controller = @PlateauController()
      PlateauController.initial_lr = 0.1
      PlateauController.patience = 150              # batches
      PlateauController.cooldown = 50               # batches

      # On an eval metric, Keras's rule; strategies/plateau_eval.gin
      PlateauController.monitor = 'eval/accuracy'
      PlateauController.mode = 'max'
      PlateauController.patience = 2                # evaluations
      Trainer.eval_every = 100                      # batches

    References:
      PyTorch, `torch.optim.lr_scheduler.ReduceLROnPlateau`
      (https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.ReduceLROnPlateau.html).
      Keras, `keras.callbacks.ReduceLROnPlateau`
      (keras/src/callbacks/reduce_lr_on_plateau.py).
    """

    def __init__(
        self,
        initial_lr: float = 0.1,
        monitor: str = "loss_ma_long",
        patience: int | None = None,
        factor: float = 0.5,
        cooldown: int = 0,
        min_lr: float = 1e-5,
        threshold: float = _THRESHOLD,
        mode: str = "auto",
        min_delta: float = _MIN_DELTA,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "PlateauController"
        check_positive(owner, initial_lr=initial_lr, factor=factor)
        check_int(owner, "cooldown", cooldown, 0)
        check_number(owner, "min_lr", min_lr)
        check_number(owner, "threshold", threshold)
        check_number(owner, "min_delta", min_delta)
        if factor >= 1:
            raise ValueError(f"{owner}.factor must be < 1, got {factor!r}")
        if not 0 <= min_lr <= initial_lr:
            raise ValueError(f"{owner}.min_lr ({min_lr}) must be in [0, initial_lr]")
        self.evaluation_name = _evaluation_name(monitor)
        on_eval = self.evaluation_name is not None
        _check_mode(mode, on_eval, threshold, min_delta)
        if patience is None:
            patience = _PATIENCE_EVALUATIONS if on_eval else _PATIENCE_BATCHES
        check_int(owner, "patience", patience, 0)
        self.initial_lr, self.monitor, self.patience = float(initial_lr), monitor, patience
        self.factor, self.cooldown, self.min_lr = float(factor), cooldown, float(min_lr)
        self.threshold, self.mode, self.min_delta = float(threshold), mode, float(min_delta)
        self.lr = tf.Variable(self.initial_lr, trainable=False, name="lr")
        self.cooldown_left = tf.Variable(0, dtype=tf.int64, trainable=False, name="cooldown_left")
        if not on_eval:  # the variables (and checkpoint layout) of the per-batch rule
            self.best = tf.Variable(float("inf"), trainable=False, name="best")
            self.num_bad = tf.Variable(0, dtype=tf.int64, trainable=False, name="num_bad")
            return
        # Keras compares Python floats: best and the value in float64.
        nan = float("nan")
        self.best = tf.Variable(nan, dtype=tf.float64, trainable=False, name="best")
        self.monitored = tf.Variable(nan, dtype=tf.float64, trainable=False, name="monitored")
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="wait")
        # 1 from an evaluation (host) until the next batch has acted on it.
        self.pending = tf.Variable(0, dtype=tf.int64, trainable=False, name="pending")
        self.evaluations = tf.Variable(0, dtype=tf.int64, trainable=False, name="evaluations")
        # +1 "max", -1 "min"; 0 until `bind_evaluation` resolves mode "auto".
        sign = {"max": 1, "min": -1}.get(mode, -1 if self.evaluation_name == "loss" else 0)
        self.direction = tf.Variable(sign, dtype=tf.int64, trainable=False, name="direction")
        self._evaluations_before_end: int | None = None

    # -- host side: warnings, and the evaluation's value ---------------------------------
    def run_warnings(self, steps: int | None) -> list[str]:
        """Warns when the run is too short for a single cut."""
        if self.evaluation_name is not None:
            return self._evaluation_warnings()
        # The first batch always improves on best = inf; the earliest cut is at batch
        # patience + 1.
        if steps is None or self.patience + 1 < steps:
            return []
        return [
            f"PlateauController.patience = {self.patience} leaves no room for a cut in "
            f"Trainer.steps = {steps} batches (the earliest is at batch patience + 1), so "
            f"the LR stays at initial_lr = {self.initial_lr:g}; lower "
            f"PlateauController.patience"
        ]

    def _evaluation_warnings(self) -> list[str]:
        # The first evaluation sets `best`; a cut needs `patience` more after it, and
        # acts at the batch after the evaluation: none after the last batch counts.
        count = self._evaluations_before_end
        if count is None or count >= self.patience + 1:
            return []
        return [
            f"PlateauController.patience = {self.patience} evaluations leaves no room for "
            f"a cut: the run evaluates {count} times before its last batch, and the "
            f"earliest cut follows evaluation patience + 1, so the LR stays at "
            f"initial_lr = {self.initial_lr:g}; lower Trainer.eval_every or "
            f"PlateauController.patience"
        ]

    def bind_evaluation(
        self, available: Mapping[str, str | None], prefix: str, evaluations: int | None
    ) -> None:
        """Checks that the run logs the monitored value and resolves mode "auto" (see
        `lrresearch.controllers.evaluation.EvaluationWatcher`)."""
        name = self.evaluation_name
        if name not in available:
            raise ValueError(_missing_message(self.monitor, available, prefix))
        if self.mode == "auto":
            direction = "down" if name == "loss" else available[name]
            if direction not in ("up", "down"):
                raise ValueError(
                    f"PlateauController.mode = 'auto' cannot tell whether "
                    f"{prefix}{name} should go up or down (Keras's metric gives no "
                    f"direction); set PlateauController.mode = 'max' or 'min'"
                )
            self.direction.assign(1 if direction == "up" else -1)
        self._evaluations_before_end = evaluations

    def observe_evaluation(self, value: float) -> None:
        """The evaluation's new value; the next batch decides on it (host-side)."""
        self.monitored.assign(value)
        self.pending.assign(1)

    # -- in-graph ------------------------------------------------------------------------
    def compute(self, signals: Signals) -> ControllerOutput:
        if self.evaluation_name is not None:
            return self._compute_on_evaluation()
        metric = tf.cast(getattr(signals, self.monitor), tf.float32)
        finite = tf.math.is_finite(metric)
        better = metric < self.best * (1.0 - self.threshold)
        best = tf.where(finite & better, metric, self.best)
        num_bad = tf.where(better, tf.constant(0, tf.int64), self.num_bad + 1)
        cooling = self.cooldown_left > 0
        cooldown_left = tf.where(cooling, self.cooldown_left - 1, self.cooldown_left)
        num_bad = tf.where(cooling, tf.constant(0, tf.int64), num_bad)
        cut = num_bad > self.patience
        new_lr = tf.maximum(self.lr * self.factor, self.min_lr)
        reduced = cut & (self.lr - new_lr > 1e-8)
        lr = tf.where(reduced, new_lr, self.lr)
        cooldown_left = tf.where(cut, tf.constant(self.cooldown, tf.int64), cooldown_left)
        num_bad = tf.where(cut, tf.constant(0, tf.int64), num_bad)
        # A non-finite metric changes nothing.
        self.best.assign(best)
        self.num_bad.assign(tf.where(finite, num_bad, self.num_bad))
        self.cooldown_left.assign(tf.where(finite, cooldown_left, self.cooldown_left))
        self.lr.assign(tf.where(finite, lr, self.lr))
        return ControllerOutput(
            self.lr.read_value(),
            {
                "best": self.best.read_value(),
                "bad_batches": tf.cast(self.num_bad, tf.float32),
            },
        )

    def _compute_on_evaluation(self) -> ControllerOutput:
        """Keras's `ReduceLROnPlateau.on_epoch_end` on the pending value, if any."""
        zero = tf.constant(0, tf.int64)
        pending = self.pending > 0
        value = self.monitored.read_value()
        cooling = self.cooldown_left > 0
        cooldown_left = tf.where(cooling, self.cooldown_left - 1, self.cooldown_left)
        wait = tf.where(cooling, zero, self.wait)
        # Keras: `monitor_op(value - min_delta, best)`, min_delta negated in mode min.
        better = tf.where(
            self.direction > 0, value - self.min_delta > self.best,
            value + self.min_delta < self.best,
        )  # fmt: skip
        improved = tf.equal(self.evaluations, 0) | better
        counting = ~improved & ~(cooldown_left > 0)
        wait = tf.where(improved, zero, tf.where(counting, wait + 1, wait))
        old = tf.cast(self.lr, tf.float64)  # Keras reads the float32 LR as a float
        can_cut = old > float(np.float32(self.min_lr))
        cut = pending & counting & (wait >= self.patience) & can_cut
        new_lr = tf.cast(tf.maximum(old * self.factor, self.min_lr), tf.float32)
        cooldown_left = tf.where(cut, tf.constant(self.cooldown, tf.int64), cooldown_left)
        wait = tf.where(cut, zero, wait)
        self.lr.assign(tf.where(cut, new_lr, self.lr))
        self.best.assign(tf.where(pending & improved, value, self.best))
        self.wait.assign(tf.where(pending, wait, self.wait))
        self.cooldown_left.assign(tf.where(pending, cooldown_left, self.cooldown_left))
        self.evaluations.assign_add(tf.cast(pending, tf.int64))
        self.pending.assign(zero)
        return ControllerOutput(
            self.lr.read_value(),
            {
                "monitored": tf.cast(value, tf.float32),
                "best": tf.cast(self.best, tf.float32),
                "wait": tf.cast(self.wait, tf.float32),
                "cooldown": tf.cast(self.cooldown_left, tf.float32),
                "reduced": tf.cast(cut, tf.float32),
            },
        )


def _evaluation_name(monitor: object) -> str | None:
    """`"accuracy"` for `eval/accuracy` or `val_accuracy`; None for a training loss."""
    if isinstance(monitor, str):
        for prefix in (TRAINER_PREFIX, FIT_PREFIX):
            if monitor.startswith(prefix) and len(monitor) > len(prefix):
                return monitor[len(prefix) :]
        if monitor in LOSS_MONITORS:
            return None
    raise ValueError(
        f"PlateauController.monitor must be 'loss_ma_long', 'loss_ma_short', 'loss' (the "
        f"training loss, per batch) or 'eval/<name>' (an evaluation's eval/loss or "
        f"eval/<metric>, e.g. 'eval/accuracy'), got {monitor!r}"
    )


def _check_mode(mode: object, on_eval: bool, threshold: float, min_delta: float) -> None:
    """Each monitor kind's own arguments: mode and min_delta (Keras's, absolute) for an
    evaluation, threshold (PyTorch's, relative) for a training loss."""
    owner = "PlateauController"
    if mode not in ("auto", "min", "max") or (not on_eval and mode == "max"):
        allowed = "'auto', 'min' or 'max'" if on_eval else "'auto' or 'min' (a loss falls)"
        raise ValueError(f"{owner}.mode must be {allowed}, got {mode!r}")
    if min_delta < 0:
        raise ValueError(f"{owner}.min_delta must be >= 0, got {min_delta!r}")
    if on_eval and threshold != _THRESHOLD:
        raise ValueError(
            f"{owner}.threshold (PyTorch's relative improvement) applies to a training-loss "
            f"monitor, got threshold = {threshold!r} with an eval monitor; set "
            f"{owner}.min_delta (Keras's absolute improvement) instead"
        )
    if not on_eval and min_delta != _MIN_DELTA:
        raise ValueError(
            f"{owner}.min_delta (Keras's absolute improvement) applies to an 'eval/<name>' "
            f"monitor, got min_delta = {min_delta!r} with a training-loss monitor; set "
            f"{owner}.threshold (relative) instead"
        )


def _missing_message(monitor: str, available: Mapping[str, str | None], prefix: str) -> str:
    if not available:
        return (
            f"PlateauController.monitor = {monitor!r} needs an evaluation, but this run has "
            f"no held-out data (Trainer.dataset gives no eval split, or Keras fit got no "
            f"validation_data), so it logs no {prefix}<name>; use a dataset with an eval "
            f"split, or a training-loss monitor: 'loss_ma_long', 'loss_ma_short', 'loss'"
        )
    names = ", ".join(f"'{prefix}{n}'" for n in available)
    metrics = "Trainer.metrics" if prefix == TRAINER_PREFIX else "compile(metrics=...)"
    return (
        f"PlateauController.monitor = {monitor!r} is not logged by this run, which "
        f"logs {names} ({metrics} adds {prefix}<name>); set PlateauController.monitor "
        f"to one of them, or to a training-loss monitor: 'loss_ma_long', "
        f"'loss_ma_short', 'loss'"
    )
