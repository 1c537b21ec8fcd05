"""Adaptive rules (hypergradient, Polyak, plateau) against numpy references."""

from __future__ import annotations

import gin
import numpy as np
import pytest
import tensorflow as tf
from conftest import Events

from lrresearch import config
from lrresearch.controllers import (
    HypergradientController,
    PlateauController,
    PolyakController,
)
from lrresearch.signals import make_signals
from lrresearch.trainer import Trainer


def quadratic(dim=6, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(dim, dim))
    return (q @ q.T / dim + 0.1 * np.eye(dim)).astype(np.float32), rng.normal(size=dim)


def hd_reference(a, w0, alpha0, beta, steps, optimizer):
    """Baydin et al.'s SGD-HD / Adam-HD on f(w) = w'Aw/2, written from the paper."""
    w, alpha, u_prev, lrs = w0.astype(np.float64), alpha0, None, []
    m = v = np.zeros_like(w)
    for t in range(1, steps + 1):
        g = a @ w
        if u_prev is not None:
            alpha = alpha + beta * g @ u_prev
        lrs.append(alpha)
        if optimizer == "sgd":
            u = g
        else:
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            u = (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        w = w - alpha * u
        u_prev = u
    return np.array(lrs)


@pytest.mark.parametrize("optimizer,beta", [("sgd", 1e-3), ("adam", 1e-4)])
def test_hypergradient_matches_the_paper_on_a_quadratic(optimizer, beta):
    a, w0 = quadratic()
    steps = 300
    expected = hd_reference(a, w0, 0.05, beta, steps, optimizer)
    w = tf.Variable(w0.astype(np.float32))
    ctrl = HypergradientController(initial_lr=0.05, hyper_lr=beta, max_lr=10.0)
    ctrl.build([w])
    m = v = np.zeros(len(w0))
    previous_lr, got = ctrl.initial_lr, []
    for t in range(1, steps + 1):
        g = a @ w.numpy().astype(np.float64)
        lr = float(
            ctrl.compute(make_signals(t - 1, 1.0, grads=[g.astype(np.float32)], lr=previous_lr)).lr
        )
        got.append(lr)
        if optimizer == "sgd":
            u = g
        else:
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            u = (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        w.assign((w.numpy() - lr * u).astype(np.float32))
        previous_lr = lr
    np.testing.assert_allclose(got, expected, rtol=2e-3)
    assert got[0] == pytest.approx(0.05)  # the first batch has no previous step
    assert abs(got[-1] - 0.05) > 1e-4  # it actually adapted


def test_hypergradient_runs_in_the_trainer_and_logs_its_signal(tmp_path):
    config.parse(
        [],
        [
            "Trainer.controller = @HypergradientController()",
            "HypergradientController.initial_lr = 0.02",
            "HypergradientController.hyper_lr = 1e-3",
            "Trainer.steps = 60",
            "Trainer.steps_per_loop = 20",
            "Trainer.histogram_every = 0",
            "mlp.hidden = (8,)",
        ],
    )
    try:
        result = Trainer().fit(logdir=str(tmp_path), quiet=True)
    finally:
        gin.clear_config()
    events = Events(result.run_dir)
    lr, hyper = events.scalar("lr"), events.scalar("controller/hypergradient")
    assert lr[0] == pytest.approx(0.02, rel=1e-6)
    # lr_t = lr_{t-1} - beta * hypergradient_t from the second batch on.
    np.testing.assert_allclose(lr[1:], lr[:-1] - 1e-3 * hyper[1:], rtol=1e-4)
    assert np.ptp(lr) > 1e-4


def test_polyak_step_size():
    rng = np.random.default_rng(3)
    losses = rng.uniform(0.0, 2.0, 300)
    norms = rng.uniform(0.0, 3.0, 300)
    norms[[5, 17]] = 0.0
    losses[40] = -0.5  # below f_star
    losses[41] = np.nan
    ctrl = PolyakController(c=0.5, f_star=0.0, max_lr=0.8)
    got = np.array(
        [
            float(ctrl.compute(make_signals(t, loss, norm)).lr)
            for t, (loss, norm) in enumerate(zip(losses, norms, strict=True))
        ]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.clip(losses / (0.5 * norms**2), 0.0, 0.8)
    expected[norms == 0] = 0.8
    np.testing.assert_allclose(np.delete(got, 41), np.delete(expected, 41), rtol=1e-5)
    assert not np.isfinite(got[41])  # the trainer's guard keeps the previous LR


def plateau_reference(metrics, lr, patience, factor, cooldown, min_lr, threshold):
    """PyTorch ReduceLROnPlateau.step(metric) (mode min, rel threshold), once per batch;
    NaN metrics skipped."""
    best, bad, cool, out = np.inf, 0, 0, []
    for m in metrics:
        if np.isfinite(m):
            if m < best * (1 - threshold):
                best, bad = m, 0
            else:
                bad += 1
            if cool > 0:
                cool -= 1
                bad = 0
            if bad > patience:
                new = max(lr * factor, min_lr)
                if lr - new > 1e-8:
                    lr = new
                cool, bad = cooldown, 0
        out.append(lr)
    return np.array(out)


@pytest.mark.parametrize("patience,cooldown", [(10, 0), (25, 5), (0, 3)])
def test_plateau_matches_reduce_lr_on_plateau(patience, cooldown):
    rng = np.random.default_rng(patience)
    metrics = np.concatenate(
        [
            np.linspace(2, 1, 60),
            np.full(80, 1.0),
            np.linspace(1, 0.5, 40),
            0.5 + 0.01 * rng.normal(size=220),
        ]
    )
    metrics[[70, 200]] = np.nan
    ctrl = PlateauController(
        initial_lr=0.1,
        monitor="loss_ma_long",
        patience=patience,
        factor=0.5,
        cooldown=cooldown,
        min_lr=1e-3,
        threshold=1e-4,
    )
    got = np.array(
        [
            float(ctrl.compute(make_signals(t, 1.0, 1.0, loss_ma_long=m)).lr)
            for t, m in enumerate(metrics)
        ]
    )
    expected = plateau_reference(metrics, 0.1, patience, 0.5, cooldown, 1e-3, 1e-4)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[-1] < 0.1  # it did cut


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: PolyakController(c=0), "PolyakController.c"),
        (lambda: PlateauController(factor=1.5), "PlateauController.factor"),
        (lambda: PlateauController(monitor="acc"), "PlateauController.monitor"),
        (lambda: PlateauController(patience=-1), "PlateauController.patience"),
        (lambda: HypergradientController(hyper_lr=0), "HypergradientController.hyper_lr"),
        (lambda: HypergradientController(initial_lr=1.0, max_lr=0.5), "HypergradientController"),
    ],
)
def test_bad_arguments_name_the_parameter(make, message):
    with pytest.raises(ValueError, match=message):
        make()
