"""Adaptive per-batch rules from the literature: the LR follows the optimisation itself.

All state lives in `tf.Variable`s (checkpointed); everything is computed in-graph.
"""

from __future__ import annotations

from collections.abc import Sequence

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
class PolyakController(Controller):
    """Stochastic Polyak step size, SPS_max:
    `lr = min(max_lr, (loss - f_star) / (c * ||g||^2))`, floored at 0.

    A zero gradient gives `max_lr` (the bound, as the paper's `gamma_b`); a NaN/Inf loss
    gives a non-finite LR, which the trainer's guard rejects (the previous LR is kept).

    Args:
      c: the paper's `c` (0.5 is its theory-backed default for convex problems).
      f_star: a lower bound of the per-batch loss (0 for cross-entropy).
      max_lr: upper bound `gamma_b`.

    References:
      Loizou, Vaswani, Laradji, Lacoste-Julien. "Stochastic Polyak Step-size for SGD:
      An Adaptive Learning Rate for Fast Convergence." AISTATS 2021.
    """

    def __init__(
        self, c: float = 0.5, f_star: float = 0.0, max_lr: float = 1.0, name: str | None = None
    ):
        super().__init__(name=name)
        check_positive("PolyakController", c=c, max_lr=max_lr)
        check_number("PolyakController", "f_star", f_star)
        self.c, self.f_star, self.max_lr = float(c), float(f_star), float(max_lr)
        self.initial_lr = self.max_lr

    def compute(self, signals: Signals) -> ControllerOutput:
        loss = tf.cast(signals.loss, tf.float32)
        sq_norm = tf.square(tf.cast(signals.global_norm, tf.float32))
        gap = loss - self.f_star
        polyak = tf.math.divide_no_nan(gap, self.c * sq_norm)
        polyak = tf.where(sq_norm > 0, polyak, self.max_lr)
        lr = tf.maximum(tf.minimum(polyak, self.max_lr), 0.0)
        lr = tf.where(tf.math.is_finite(gap), lr, gap)  # let the guard see a bad loss
        return ControllerOutput(lr, {"polyak": polyak, "gap": gap})


@gin.configurable
class PlateauController(Controller):
    """Per-batch reduce-on-plateau, with `torch.optim.lr_scheduler.ReduceLROnPlateau`'s
    logic (mode "min", relative threshold) applied to a loss moving average every batch.

    A batch is an improvement if `metric < best * (1 - threshold)`. After more than
    `patience` batches without one, `lr = max(lr * factor, min_lr)` and `cooldown`
    batches follow during which bad batches are not counted. A non-finite metric is
    ignored (no count, no change).

    Args:
      initial_lr: starting LR.
      monitor: "loss_ma_long", "loss_ma_short" or "loss" (the batch loss: noisy).
      patience: batches without improvement before a cut.
      factor: multiplier of a cut (0 < factor < 1).
      cooldown: batches after a cut during which bad batches are not counted.
      min_lr: floor.
      threshold: relative improvement that counts.
    """

    def __init__(
        self,
        initial_lr: float = 0.1,
        monitor: str = "loss_ma_long",
        patience: int = 200,
        factor: float = 0.5,
        cooldown: int = 0,
        min_lr: float = 1e-5,
        threshold: float = 1e-4,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "PlateauController"
        check_positive(owner, initial_lr=initial_lr, factor=factor)
        check_int(owner, "patience", patience, 0)
        check_int(owner, "cooldown", cooldown, 0)
        check_number(owner, "min_lr", min_lr)
        check_number(owner, "threshold", threshold)
        if factor >= 1:
            raise ValueError(f"{owner}.factor must be < 1, got {factor!r}")
        if monitor not in ("loss_ma_long", "loss_ma_short", "loss"):
            raise ValueError(
                f"{owner}.monitor must be 'loss_ma_long', 'loss_ma_short' or 'loss', "
                f"got {monitor!r}"
            )
        if not 0 <= min_lr <= initial_lr:
            raise ValueError(f"{owner}.min_lr ({min_lr}) must be in [0, initial_lr]")
        self.initial_lr, self.monitor, self.patience = float(initial_lr), monitor, patience
        self.factor, self.cooldown, self.min_lr = float(factor), cooldown, float(min_lr)
        self.threshold = float(threshold)
        self.lr = tf.Variable(self.initial_lr, trainable=False, name="lr")
        self.best = tf.Variable(float("inf"), trainable=False, name="best")
        self.num_bad = tf.Variable(0, dtype=tf.int64, trainable=False, name="num_bad")
        self.cooldown_left = tf.Variable(0, dtype=tf.int64, trainable=False, name="cooldown_left")

    def compute(self, signals: Signals) -> ControllerOutput:
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


@gin.configurable
class HypergradientController(Controller):
    """Hypergradient descent on the LR, for any optimizer (SGD-HD and Adam-HD).

    `lr_t = lr_{t-1} + hyper_lr * g_t . u_{t-1}`, where `g_t` is this batch's gradient
    and `u_{t-1}` the previous update direction: the gradient itself for SGD, Adam's
    `m_hat / (sqrt(v_hat) + eps)` for Adam. Here `u_{t-1}` is read off the weights, as
    `-(theta_{t-1} - theta_{t-2}) / lr_{t-1}`, so one rule serves every optimizer whose
    step is `-lr * u` (SGD, momentum, Adam; with AdamW the decoupled weight decay enters
    `u`). Until two steps have been taken the LR stays at `initial_lr`. The result is
    clipped to `[min_lr, max_lr]`.

    Args:
      initial_lr: starting LR (`alpha_0`).
      hyper_lr: the hypergradient step `beta` (the paper uses 1e-4 for SGD, 1e-7 for
        Adam on its problems).
      min_lr: lower bound (>= 0).
      max_lr: upper bound.

    References:
      Baydin, Cornish, Martinez Rubio, Schmidt, Wood. "Online Learning Rate Adaptation
      with Hypergradient Descent." ICLR 2018.
    """

    def __init__(
        self,
        initial_lr: float = 0.01,
        hyper_lr: float = 1e-4,
        min_lr: float = 0.0,
        max_lr: float = 10.0,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "HypergradientController"
        check_positive(owner, initial_lr=initial_lr, hyper_lr=hyper_lr, max_lr=max_lr)
        check_number(owner, "min_lr", min_lr)
        if not 0 <= min_lr <= initial_lr <= max_lr:
            raise ValueError(
                f"{owner}: need 0 <= min_lr <= initial_lr <= max_lr, got "
                f"{min_lr}, {initial_lr}, {max_lr}"
            )
        self.initial_lr, self.hyper_lr = float(initial_lr), float(hyper_lr)
        self.min_lr, self.max_lr = float(min_lr), float(max_lr)
        self.lr = tf.Variable(self.initial_lr, trainable=False, name="lr")
        self.seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="seen")
        self.watched: list[tf.Variable] = []
        self.previous: list[tf.Variable] = []

    def build(self, variables: Sequence[tf.Variable]) -> None:
        """Watches the model's trainable variables (called once by the trainer)."""
        self.watched = list(variables)
        self.previous = [
            tf.Variable(tf.zeros_like(v), trainable=False, name="previous") for v in self.watched
        ]

    def compute(self, signals: Signals) -> ControllerOutput:
        if len(self.watched) != len(signals.grads):
            raise ValueError(
                "HypergradientController needs the model's variables: the trainer calls "
                "build(variables); in a custom loop call it yourself once"
            )
        # u_{t-1} . g_t with u_{t-1} = -(theta_{t-1} - theta_{t-2}) / lr_{t-1}.
        dot = tf.add_n(
            [
                tf.reduce_sum(
                    tf.cast(g, tf.float32) * tf.cast(p - tf.convert_to_tensor(w), tf.float32)
                )
                for g, w, p in zip(signals.grads, self.watched, self.previous, strict=True)
            ]
        ) / tf.maximum(tf.cast(signals.lr, tf.float32), 1e-30)
        ready = self.seen >= 1
        proposed = tf.clip_by_value(self.lr + self.hyper_lr * dot, self.min_lr, self.max_lr)
        lr = tf.where(ready & tf.math.is_finite(dot), proposed, self.lr)
        for w, p in zip(self.watched, self.previous, strict=True):
            p.assign(tf.convert_to_tensor(w))
        self.seen.assign_add(1)
        self.lr.assign(lr)
        return ControllerOutput(lr, {"hypergradient": -dot})
