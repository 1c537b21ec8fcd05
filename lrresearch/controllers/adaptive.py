"""Adaptive per-batch rules from the literature: the LR follows the optimisation itself.

All state lives in `tf.Variable`s (checkpointed); everything is computed in-graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import gin
import keras
import tensorflow as tf

from lrresearch.checks import check_int, check_number, check_positive
from lrresearch.controllers.base import Controller, ControllerOutput
from lrresearch.controllers.plateau import PlateauController  # noqa: F401 (its home until issue 25)
from lrresearch.controllers.signals import Signals


@gin.configurable
class PolyakController(Controller):
    """Stochastic Polyak step size, SPS_max:
    `lr = min(max_lr, (loss - f_star) / (c * ||g||^2))`, floored at 0.

    A zero gradient gives `max_lr` (the bound, as the paper's `gamma_b`); a NaN/Inf loss
    gives a non-finite LR, which the trainer's guard rejects (the previous LR is kept).

    A batch loss at or below `f_star` gives LR 0: the weights do not move. The
    controller counts such batches in a row (`zero_lr_streak`, checkpointed), and
    `state_warnings` reports a streak of `ZERO_LR_STREAK` (50) batches or more: with
    `f_star` above the loss the whole run would otherwise train nothing and exit 0.

    The floor at 0 makes the numerator `(loss - f_star)_+`, SPS+'s (Gower et al.
    2022); `max_lr = None` drops the bound, which is SPS+ itself (a zero gradient then
    gives LR 0, as the SPS authors' code does for `||g|| < 1e-8`).

    Smoothed SPS (`smoothing`, the authors' `adapt_flag='smooth_iter'`): the LR grows by
    at most `smoothing ** (1 / smoothing_batches)` per batch, `lr_t = min(that *
    lr_{t-1}, polyak_t)` (and `max_lr`, if set; the authors have no bound there), from
    `lr_{-1} = smoothing_start` (their `init_step_size`). The authors use `smoothing =
    2` over an epoch's batches. One difference: after a zero-gradient batch (LR 0) the
    authors' rule stays at 0 for good (it grows from 0); here the next batch grows
    from the LR before it.

    Args:
      c: the paper's `c` (0.5 is its theory-backed default for convex problems).
      f_star: a lower bound of the per-batch loss (0 for cross-entropy).
      max_lr: upper bound `gamma_b`, or None (SPS+).
      smoothing: the smoothed step's growth `gamma` per `smoothing_batches`, or None.
      smoothing_batches: batches over which the LR may grow by `smoothing` (the
        authors' `n_batches_per_epoch`).
      smoothing_start: the LR the smoothed step grows from (`init_step_size`, 1.0).

    Examples:
      Trainer.controller = @PolyakController()
      PolyakController.max_lr = 1.0
      PolyakController.f_star = 0.0                 # a lower bound of the loss

      >>> from lrresearch.controllers import PolyakController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = PolyakController(c=0.5, max_lr=1.0)
      >>> round(float(c.compute(make_signals(0, loss=0.5, global_norm=2.0)).lr), 4)
      0.25

    References:
      Loizou, Vaswani, Laradji, Lacoste-Julien. "Stochastic Polyak Step-size for SGD:
      An Adaptive Learning Rate for Fast Convergence." AISTATS 2021.
    """

    def __init__(
        self,
        c: float = 0.5,
        f_star: float = 0.0,
        max_lr: float | None = 1.0,
        smoothing: float | None = None,
        smoothing_batches: int = 500,
        smoothing_start: float = 1.0,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "PolyakController"
        check_positive(owner, c=c)
        check_number(owner, "f_star", f_star)
        if max_lr is not None:
            check_positive(owner, max_lr=max_lr)
        self.c, self.f_star = float(c), float(f_star)
        self.max_lr = None if max_lr is None else float(max_lr)
        self.initial_lr = self.max_lr if self.max_lr is not None else 0.0
        self.smoothing = None if smoothing is None else float(smoothing)
        if smoothing is not None:
            check_positive(owner, smoothing=smoothing, smoothing_start=smoothing_start)
            check_int(owner, "smoothing_batches", smoothing_batches, 1)
            self.growth = self.smoothing ** (1.0 / smoothing_batches)
            # Only with smoothing: checkpoints of the plain rule keep their layout.
            self.previous = tf.Variable(float(smoothing_start), trainable=False, name="previous")
        # Batches in a row (and in all) whose loss was <= f_star, so their LR was 0.
        self.zero_lr_streak = tf.Variable(0, dtype=tf.int64, trainable=False, name="zero_lr_streak")
        self.zero_lr_batches = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="zero_lr_batches"
        )

    # A streak this long (batches) is a configuration error, not a lucky batch.
    ZERO_LR_STREAK = 50

    def state_warnings(self) -> list[str]:
        """Warns once `ZERO_LR_STREAK` batches in a row had a loss <= `f_star`."""
        if int(self.zero_lr_streak.numpy()) < self.ZERO_LR_STREAK:
            return []
        return [
            f"PolyakController: the batch loss was <= f_star = {self.f_star:g} on "
            f"{self.ZERO_LR_STREAK} or more batches in a row, so the LR was 0 and the "
            f"weights did not move; lower PolyakController.f_star (a lower bound of the "
            f"loss: 0 for cross-entropy and squared error)"
        ]

    def compute(self, signals: Signals) -> ControllerOutput:
        loss = tf.cast(signals.loss, tf.float32)
        sq_norm = tf.square(tf.cast(signals.global_norm, tf.float32))
        gap = loss - self.f_star
        at_floor = tf.cast(gap <= 0.0, tf.int64)  # a NaN gap is not: the guard handles it
        self.zero_lr_streak.assign((self.zero_lr_streak + at_floor) * at_floor)
        self.zero_lr_batches.assign_add(at_floor)
        polyak = tf.math.divide_no_nan(gap, self.c * sq_norm)
        if self.max_lr is None:  # SPS+: no bound; a zero gradient moves nothing
            lr = tf.maximum(polyak, 0.0)
        else:
            polyak = tf.where(sq_norm > 0, polyak, self.max_lr)
            lr = tf.maximum(tf.minimum(polyak, self.max_lr), 0.0)
        finite = tf.math.is_finite(gap)
        if self.smoothing is not None:
            lr = tf.minimum(lr, self.growth * self.previous)
            self.previous.assign(tf.where(finite & (lr > 0.0), lr, self.previous))
        lr = tf.where(finite, lr, gap)  # let the guard see a bad loss
        return ControllerOutput(lr, {"polyak": polyak, "gap": gap})


@gin.configurable
class HypergradientController(Controller):
    """Hypergradient descent on the LR (SGD-HD and Adam-HD), exact for optimizers whose
    step is `-lr_t * u_t` with `u_t` free of past LRs.

    `lr_t = lr_{t-1} + hyper_lr * g_t . u_{t-1}`, where `g_t` is this batch's gradient
    and `u_{t-1}` the previous update direction. `u_{t-1}` is read off the weights,
    `u_{t-1} = -(theta_{t-1} - theta_{t-2}) / lr_{t-1}`, which is exactly the direction
    the authors' code uses whenever the optimizer's step is `-lr * u` with `u` not
    depending on earlier LRs:

      * `keras.optimizers.SGD()` (no momentum): `u = g` (SGDHD).
      * `lrresearch.optimizers.MomentumSGD` (PyTorch's momentum, `buf = mu*buf + g`):
        `u = buf`, or `g + mu*buf` with Nesterov (SGDHD with momentum / nesterov).
      * `keras.optimizers.Adam`: `u = m_hat / (sqrt(v_hat) + eps)` (AdamHD); with AdamW
        the decoupled weight decay enters `u`; RMSprop without momentum likewise.

    Keras's `SGD(momentum > 0)` and `RMSprop(momentum > 0)` keep the LR inside their
    velocity (`m = mu*m - lr*g`), so the direction read off the weights mixes past
    gradients with ratios of past LRs: `check_optimizer` refuses them (measured against
    SGDHD with momentum 0.9: LRs 2% apart on the softmax regression of
    `tools/check_hypergradient_reference.py`, up to 6x on the linear regression of
    `tests/controllers/test_adaptive.py`, 63% in issue 11). `tools/check_hypergradient_reference.py`
    compares with the authors' SGDHD and AdamHD. The dot product uses the loss's
    gradient (`Signals.grads`, before clipping, without an optimizer's own weight
    decay), as SGDHD does when its `weight_decay` is 0.

    Until two steps have been taken the LR stays at `initial_lr`. The result is
    clipped to `[min_lr, max_lr]`. A skipped (non-finite) batch moves no weight, so the
    next batch's dot product is 0 and its LR unchanged.

    Args:
      initial_lr: starting LR (`alpha_0`).
      hyper_lr: the hypergradient step `beta` (the paper uses 1e-4 for SGD, 1e-7 for
        Adam on its problems).
      min_lr: lower bound (>= 0).
      max_lr: upper bound.

    Examples:
      Trainer.controller = @HypergradientController()
      Trainer.optimizer = 'sgd'                     # or @MomentumSGD, 'adam'
      HypergradientController.initial_lr = 0.01
      HypergradientController.hyper_lr = 1e-4

    References:
      Baydin, Cornish, Martinez Rubio, Schmidt, Wood. "Online Learning Rate Adaptation
      with Hypergradient Descent." ICLR 2018; the authors' code,
      github.com/gbaydin/hypergradient-descent (`hypergrad/sgd_hd.py`, `adam_hd.py`).
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

    def check_optimizer(self, optimizer: keras.optimizers.Optimizer) -> None:
        """Refuses Keras's momentum SGD and RMSprop, whose velocity holds the LR."""
        momentum = getattr(optimizer, "momentum", 0.0)
        lr_in_velocity = (keras.optimizers.SGD, keras.optimizers.RMSprop)
        if isinstance(optimizer, lr_in_velocity) and momentum:
            kind = type(optimizer).__name__
            nesterov = getattr(optimizer, "nesterov", False)
            fix = " and `MomentumSGD.nesterov = True`" if nesterov else ""
            raise ValueError(
                f"Trainer.optimizer must not be Keras's {kind} with momentum > 0 under "
                f"HypergradientController, got {kind}(momentum={momentum}): its velocity "
                f"holds past LRs (m = mu*m - lr*g), so the update direction read off the "
                f"weights is not the authors' SGDHD direction; use "
                f"`Trainer.optimizer = @MomentumSGD` with `MomentumSGD.momentum = "
                f"{momentum}`{fix} (PyTorch's momentum, buf = mu*buf + g, as SGDHD)"
            )

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
