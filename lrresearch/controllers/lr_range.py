"""The LR range test's ramp as a controller: the LR grows per batch from `start_lr` to
`end_lr`, with the smoothed loss and the divergence test kept in-graph. Used by both
range tests: `lrresearch lr-find` (`lrresearch.studies.lr_find`) and a user's own Keras
`fit` (`lrresearch.keras_fit.range_test`); `lrresearch.analysis.lr_curve` reads the
curve it recorded.

References:
  Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
  PyTorch Lightning `lightning/pytorch/tuner/lr_finder.py`: `mode="exponential"|"linear"`.
"""

from __future__ import annotations

import math

import tensorflow as tf

from lrresearch.checks import check_int, check_positive
from lrresearch.controllers.base import Controller, ControllerOutput
from lrresearch.controllers.signals import Signals

MODES = ("exponential", "linear")


class LRRangeController(Controller):
    """The range test's ramp, and the state it needs, all in-graph.

    `mode="exponential"`: `lr_t = start_lr * (end_lr / start_lr) ** (t / (num_steps - 1))`;
    `mode="linear"`: `lr_t = start_lr + (end_lr - start_lr) * t / (num_steps - 1)`
    (Lightning's two modes; both reach `end_lr` at the last batch). Beside it: the
    bias-corrected EMA of the loss (`smoothing`), its minimum, and a `diverged` flag
    raised once the smoothed loss exceeds `diverge_factor` times that minimum (or the
    loss is NaN/Inf). The LRs, batch losses and smoothed losses are kept in buffers,
    read by Python once per compiled call.
    """

    standalone = False

    def __init__(
        self,
        start_lr: float,
        end_lr: float,
        num_steps: int,
        smoothing: float = 0.98,
        diverge_factor: float = 4.0,
        mode: str = "exponential",
        name: str | None = None,
    ):
        super().__init__(name=name)
        check_positive("lr_find", start_lr=start_lr, end_lr=end_lr, diverge_factor=diverge_factor)
        check_int("lr_find", "num_steps", num_steps, 2)
        if not start_lr < end_lr:
            raise ValueError(f"lr_find: start_lr ({start_lr}) must be < end_lr ({end_lr})")
        if not 0 <= smoothing < 1:
            raise ValueError(f"lr_find: smoothing must be in [0, 1), got {smoothing!r}")
        if mode not in MODES:
            raise ValueError(f"lr_find: mode must be one of {MODES}, got {mode!r}")
        self.start_lr, self.end_lr, self.num_steps = float(start_lr), float(end_lr), num_steps
        self.smoothing, self.diverge_factor = float(smoothing), float(diverge_factor)
        self.mode = mode
        self.initial_lr = self.start_lr
        self.ema = tf.Variable(0.0, trainable=False, name="ema")
        self.best = tf.Variable(float("inf"), trainable=False, name="best")
        self.diverged = tf.Variable(False, trainable=False, name="diverged")
        self.lrs = tf.Variable(tf.zeros([num_steps]), trainable=False, name="lrs")
        nans = tf.fill([num_steps], float("nan"))
        self.losses = tf.Variable(nans, trainable=False, name="losses")
        self.smoothed = tf.Variable(nans, trainable=False, name="smoothed")

    def ramp(self, t: tf.Tensor) -> tf.Tensor:
        """The LR of batch `t` (float32)."""
        progress = tf.cast(t, tf.float32) / (self.num_steps - 1)
        if self.mode == "linear":
            return self.start_lr + progress * (self.end_lr - self.start_lr)
        return self.start_lr * tf.exp(progress * math.log(self.end_lr / self.start_lr))

    def compute(self, signals: Signals) -> ControllerOutput:
        t = tf.minimum(tf.cast(signals.step, tf.int64), self.num_steps - 1)
        lr = self.ramp(t)
        loss = tf.cast(signals.loss, tf.float32)
        ema = self.smoothing * self.ema + (1.0 - self.smoothing) * loss
        smoothed = ema / (1.0 - tf.pow(self.smoothing, tf.cast(t, tf.float32) + 1.0))
        self.ema.assign(ema)
        finite = tf.math.is_finite(smoothed)
        self.diverged.assign(self.diverged | ~finite | (smoothed > self.diverge_factor * self.best))
        self.best.assign(tf.where(finite, tf.minimum(self.best, smoothed), self.best))
        self.lrs.scatter_nd_update([[t]], [lr])
        self.losses.scatter_nd_update([[t]], [loss])
        self.smoothed.scatter_nd_update([[t]], [smoothed])
        return ControllerOutput(lr, {"smoothed_loss": smoothed})
