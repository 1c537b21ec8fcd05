"""A weight decay set every batch by `DecayFollowsLR` reaches the update of each optimizer
that has one (Keras's `AdamW` and `SGD(weight_decay=...)`, `ScheduleFreeSGD`,
`ScheduleFreeAdamW`, `Prodigy` decoupled and coupled, `COCOB`): the weights after each of a few
batches equal a numpy transcription of the optimizer with that batch's decay and LR.
Gradients are fixed arrays (they do not depend on the weights); weights are float64, so
the only rounding is the float32 LR and decay the trainer's variables hold."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import DecayFollowsLR, WarmupCosineController
from lrresearch.controllers.signals import make_signals
from lrresearch.optimizers import COCOB, Prodigy, ScheduleFreeAdamW, ScheduleFreeSGD
from lrresearch.step.batch import OptimizerHyperparameters, set_lr

GRADS = np.array([[1.0, -2.0, 0.5], [0.5, 0.25, -1.0], [-1.0, 3.0, 0.2], [2.0, 2.0, -0.4]])
W0 = np.array([1.0, 2.0, -0.5])


def controller() -> DecayFollowsLR:
    """LR 0.05, 0.1, then a cosine down; decay 0.2 * lr / 0.1 (peak 0.1)."""
    schedule = WarmupCosineController(base_lr=0.1, warmup_steps=1, decay_steps=6, init_lr=0.05)
    return DecayFollowsLR(schedule, weight_decay=0.2, power=1)


def lrs_and_decays() -> tuple[list[float], list[float]]:
    """This batch's LR and decay as the float32 variables hold them."""
    outs = [controller().compute(make_signals(t, 1.0)) for t in range(len(GRADS))]
    return [float(o.lr) for o in outs], [float(o.weight_decay) for o in outs]


def run(optimizer: keras.optimizers.Optimizer) -> np.ndarray:
    """The weights after each batch, the controller setting LR and decay in one traced
    function, as the trainer's step does."""
    ctrl, w = controller(), tf.Variable(W0)
    optimizer.build([w])
    ctrl.check_optimizer(optimizer)
    hyper = OptimizerHyperparameters(optimizer, ctrl.optimizer_hyperparameters)

    @tf.function(autograph=False)
    def batch(t, g):
        set_lr(ctrl, make_signals(t, 1.0, 1.0), optimizer.learning_rate, 1.0, hyper)
        optimizer.apply([g], [w])
        return w.read_value()

    out = [batch(tf.constant(t, tf.int64), g).numpy() for t, g in enumerate(GRADS)]
    assert batch.experimental_get_tracing_count() == 1
    return np.array(out)


def keras_adamw(lrs, decays, beta_1=0.9, beta_2=0.999, eps=1e-7):
    """Keras: `w -= w * wd * lr` before the Adam step (bias correction in `alpha`, with
    the betas rounded to float32 there, as Keras's `ops.cast(beta, dtype)` does)."""
    w, m, v, out = W0.copy(), 0.0, 0.0, []
    beta_1_32, beta_2_32 = float(np.float32(beta_1)), float(np.float32(beta_2))
    for t, (g, lr, wd) in enumerate(zip(GRADS, lrs, decays, strict=True), start=1):
        w = w - w * wd * lr
        m, v = beta_1 * m + (1 - beta_1) * g, beta_2 * v + (1 - beta_2) * g * g
        alpha = lr * math.sqrt(1 - beta_2_32**t) / (1 - beta_1_32**t)
        w = w - alpha * m / (np.sqrt(v) + eps)
        out.append(w)
    return out


def keras_sgd(lrs, decays):
    """Keras SGD without momentum: `w -= w * wd * lr`, then `w -= lr * g`."""
    w, out = W0.copy(), []
    for g, lr, wd in zip(GRADS, lrs, decays, strict=True):
        w = w - w * wd * lr
        w = w - lr * g
        out.append(w)
    return out


def schedule_free(adamw, lrs, decays, beta=0.9, beta_2=0.999, eps=1e-8):
    """The authors' step: d = g (AdamW: normalized) + wd y; y = lerp(y, z, c) + lr (beta
    (1 - c) - 1) d; z -= lr d; c = lr_max**2 / sum of them (r = 0, no warmup)."""
    y, z, v, lr_max, weight_sum, out = W0.copy(), W0.copy(), 0.0, -1.0, 0.0, []
    for k, (g, lr, wd) in enumerate(zip(GRADS, lrs, decays, strict=True)):
        lr_max = max(lr_max, lr)
        weight_sum += lr_max**2
        c = lr_max**2 / weight_sum
        if adamw:
            v = beta_2 * v + (1 - beta_2) * g * g
            g = g / (np.sqrt(v / (1 - beta_2 ** (k + 1))) + eps)
        d = g + wd * y
        y = y + c * (z - y) + lr * (beta * (1 - c) - 1) * d
        z = z - lr * d
        out.append(y)
    return out


def prodigy(lrs, decays, decouple, beta_1=0.9, beta_2=0.999, eps=1e-8, d0=1e-6):
    """The authors' step, one variable, no bias correction or growth limit (see
    tests/optimizers/test_d_adapt.py): `w -= wd d lr w` if decoupled, else `g += wd w`."""
    beta_3 = math.sqrt(beta_2)
    w, w0, m, v, s = W0.copy(), W0.copy(), 0.0, 0.0, 0.0
    d, d_max, numerator, out = d0, d0, 0.0, []
    for g, lr, wd in zip(GRADS, lrs, decays, strict=True):
        g = g if decouple else g + wd * w
        dlr = d * lr
        numerator = beta_3 * numerator + (d / d0) * dlr * np.dot(g, w0 - w)
        m = beta_1 * m + d * (1 - beta_1) * g
        v = beta_2 * v + d * d * (1 - beta_2) * g * g
        s = beta_3 * s + (d / d0) * dlr * g
        d_hat = numerator / np.abs(s).sum()
        d = max(d, d_hat) if d == d0 else d
        d_max = max(d_max, d_hat)
        d = min(d_max, d * math.inf)
        if decouple:
            w = w - wd * dlr * w
        w = w - dlr * m / (np.sqrt(v) + d * eps)
        out.append(w)
    return out


def cocob(lrs, decays, alpha=100.0, eps=1e-8):
    """Algorithm 2 (tests/optimizers/test_cocob.py) with optax's coupled decay and LR:
    `g = lr (grad + wd w)`."""
    w, out = W0.copy(), []
    max_g, abs_sum, theta, reward, bet = np.full(3, eps), *np.zeros((4, 3))
    for grad, lr, wd in zip(GRADS, lrs, decays, strict=True):
        g = lr * (grad + wd * w)
        max_g, abs_sum = np.maximum(max_g, np.abs(g)), abs_sum + np.abs(g)
        reward, theta = np.maximum(reward - g * bet, 0.0), theta + g
        new = -theta / (max_g * np.maximum(abs_sum + max_g, alpha * max_g)) * (reward + max_g)
        w, bet = w - bet + new, new
        out.append(w)
    return out


CASES = {
    "keras-adamw": (lambda: keras.optimizers.AdamW(0.05, weight_decay=0.01), keras_adamw),
    "keras-sgd": (lambda: keras.optimizers.SGD(0.05, weight_decay=0.0), keras_sgd),
    "schedule-free-sgd": (lambda: ScheduleFreeSGD(0.05), lambda *a: schedule_free(False, *a)),
    "schedule-free-adamw": (lambda: ScheduleFreeAdamW(0.05), lambda *a: schedule_free(True, *a)),
    "prodigy": (lambda: Prodigy(0.05), lambda *a: prodigy(*a, decouple=True)),
    "prodigy-coupled": (
        lambda: Prodigy(0.05, decouple=False, weight_decay=0.3),
        lambda *a: prodigy(*a, decouple=False),
    ),
    "cocob": (lambda: COCOB(0.05), cocob),
}


@pytest.mark.parametrize("case", CASES)
def test_the_update_applies_the_decay_set_for_each_batch(case):
    make, reference = CASES[case]
    lrs, decays = lrs_and_decays()
    assert len(set(decays)) == len(decays) and decays[1] == pytest.approx(0.2)
    np.testing.assert_allclose(run(make()), reference(lrs, decays), rtol=1e-12, atol=1e-14)
