"""Adaptive rules (hypergradient, Polyak, plateau) against numpy references."""

from __future__ import annotations

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.config import parse as config
from lrresearch.controllers import (
    Chain,
    ConstantController,
    HypergradientController,
    PlateauController,
    PolyakController,
    Warmup,
)
from lrresearch.controllers.signals import make_signals
from lrresearch.optimizers import MomentumSGD
from lrresearch.training.trainer import Trainer
from tests.support import (
    Events,
    controlled_regression,
    regression_batches,
    regression_grad,
)


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


def sgdhd_reference(x, y, w0, lr0, beta, momentum, nesterov):
    """The authors' SGDHD step (gbaydin/hypergradient-descent, hypergrad/sgd_hd.py),
    re-written in numpy float64 on the flat parameter vector [w, b]:
    h = g . grad_prev; lr += beta * h; buf = mu * buf + g (buf_1 = g);
    d = g + mu * buf (nesterov) or buf; grad_prev = d; p -= lr * d."""
    params, lr = np.concatenate([w0, [0.0]]).astype(np.float64), lr0
    grad_prev, buf = np.zeros_like(params), None
    lrs, weights = [], []
    for xb, yb in zip(x.astype(np.float64), y.astype(np.float64), strict=True):
        g = regression_grad(params[:-1], params[-1], xb, yb)
        lr = lr + beta * g @ grad_prev
        direction = g
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            direction = g + momentum * buf if nesterov else buf
        grad_prev = direction
        params = params - lr * direction
        lrs.append(lr)
        weights.append(params)
    return np.array(lrs), np.array(weights)


@pytest.mark.parametrize("nesterov", [False, True])
def test_hypergradient_with_momentum_sgd_matches_the_authors_sgdhd(nesterov):
    steps, beta = 300, 0.002
    x, y = regression_batches(steps)
    w0 = np.random.default_rng(2).normal(size=x.shape[-1])
    expected_lrs, expected_weights = sgdhd_reference(x, y, w0, 0.01, beta, 0.9, nesterov)
    controller = HypergradientController(initial_lr=0.01, hyper_lr=beta, max_lr=10.0)
    optimizer = MomentumSGD(learning_rate=0.01, momentum=0.9, nesterov=nesterov)
    controller.check_optimizer(optimizer)  # accepted
    lrs, weights = controlled_regression(x, y, w0, controller, optimizer)
    assert lrs[0] == np.float32(0.01)  # no previous step yet
    np.testing.assert_allclose(lrs, expected_lrs, rtol=1e-5)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)
    assert lrs.max() > 1.5 * lrs[0]  # the LR really moved, so momentum's form matters


def test_keras_momentum_sgd_differs_from_sgdhd_and_is_refused():
    steps, beta = 300, 0.002
    x, y = regression_batches(steps)
    w0 = np.random.default_rng(2).normal(size=x.shape[-1])
    expected_lrs, _ = sgdhd_reference(x, y, w0, 0.01, beta, 0.9, False)
    controller = HypergradientController(initial_lr=0.01, hyper_lr=beta, max_lr=10.0)
    keras_momentum = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    # What the refusal prevents: the direction read off Keras's weights is not SGDHD's.
    lrs, _ = controlled_regression(x, y, w0, controller, keras_momentum)
    assert np.max(np.abs(lrs - expected_lrs) / expected_lrs) > 0.05
    with pytest.raises(ValueError, match=r"Trainer.optimizer must not be Keras's SGD") as error:
        HypergradientController().check_optimizer(keras_momentum)
    assert "@MomentumSGD" in str(error.value) and "m = mu*m - lr*g" in str(error.value)
    nesterov = keras.optimizers.SGD(momentum=0.5, nesterov=True)
    with pytest.raises(ValueError, match=r"MomentumSGD.nesterov = True"):
        HypergradientController().check_optimizer(nesterov)
    with pytest.raises(ValueError, match=r"Keras's RMSprop"):
        HypergradientController().check_optimizer(keras.optimizers.RMSprop(momentum=0.9))


@pytest.mark.parametrize(
    "optimizer",
    [
        keras.optimizers.SGD(),
        keras.optimizers.Adam(),
        keras.optimizers.RMSprop(),
        MomentumSGD(momentum=0.9, nesterov=True),
    ],
    ids=lambda o: type(o).__name__,
)
def test_hypergradient_accepts_optimizers_it_follows_exactly(optimizer):
    HypergradientController().check_optimizer(optimizer)


def test_composites_forward_check_optimizer_to_their_parts():
    momentum = keras.optimizers.SGD(momentum=0.9)
    chain = Chain([ConstantController(0.01), Warmup(HypergradientController())], [10])
    with pytest.raises(ValueError, match="HypergradientController"):
        chain.check_optimizer(momentum)
    Chain([ConstantController(0.01), ConstantController(0.1)], [10]).check_optimizer(momentum)


def test_momentum_sgd_trains_from_gin_and_checkpoints_its_buffers(tmp_path):
    config.parse(
        [],
        [
            "Trainer.controller = @HypergradientController()",
            "HypergradientController.initial_lr = 0.02",
            "HypergradientController.hyper_lr = 1e-3",
            "Trainer.optimizer = @MomentumSGD",
            "MomentumSGD.momentum = 0.8",
            "MomentumSGD.nesterov = True",
            "Trainer.steps = 40",
            "Trainer.steps_per_loop = 20",
            "Trainer.histogram_every = 0",
            "Trainer.eval_every = 0",
            "mlp.hidden = (8,)",
        ],
    )
    try:
        trainer = Trainer()
        trainer.fit(logdir=str(tmp_path), quiet=True)
    finally:
        gin.clear_config()
    assert isinstance(trainer.optimizer, MomentumSGD) and trainer.optimizer.nesterov
    buffers = trainer.optimizer.momentum_buffers
    assert len(buffers) == len(trainer.variables)
    saved = [b.numpy().copy() for b in buffers]
    assert max(np.abs(s).max() for s in saved) > 0
    path = trainer.checkpoint.save(str(tmp_path / "again" / "ckpt"))
    for b in buffers:
        b.assign(tf.zeros_like(b))
    trainer.checkpoint.restore(path).assert_existing_objects_matched()
    for b, s in zip(buffers, saved, strict=True):
        np.testing.assert_array_equal(b.numpy(), s)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"momentum": 1.5}, "MomentumSGD.momentum must be in"),
        ({"momentum": "0.9"}, "MomentumSGD.momentum must be a finite number"),
        ({"momentum": 0.0, "nesterov": True}, "MomentumSGD.nesterov must be False"),
        ({"weight_decay": -1e-4}, "MomentumSGD.weight_decay must be >= 0"),
    ],
)
def test_momentum_sgd_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MomentumSGD(**kwargs)


def test_momentum_sgd_is_pytorch_sgd_with_weight_decay():
    """torch.optim.SGD(momentum, weight_decay) with a changing LR, in numpy."""
    w = tf.Variable([1.0, -2.0, 0.5])
    optimizer = MomentumSGD(learning_rate=0.1, momentum=0.9, weight_decay=0.01)
    optimizer.build([w])
    expected, buf = np.array([1.0, -2.0, 0.5]), None
    for t in range(20):
        grad = np.array([1.0 + t, -0.5, 0.25 * t], np.float32)
        lr = np.float32(0.1 / (1 + t))
        optimizer.learning_rate.assign(lr)
        optimizer.apply([tf.constant(grad)], [w])
        g = grad + 0.01 * expected
        buf = g if buf is None else 0.9 * buf + g
        expected = expected - lr * buf
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-5)
    restored = MomentumSGD.from_config(optimizer.get_config())
    assert (restored.momentum, restored.nesterov, restored.l2_weight_decay) == (0.9, False, 0.01)


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


@pytest.mark.slow
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


def sps_plus_reference(losses, norms, c):
    """The SPS authors' `Sps.step` (IssamLaradji/sps, sps/sps.py), adapt_flag
    'constant', f* = 0, eta_max None: loss / (c ||g||^2), 0 for ||g|| < 1e-8 (their eps
    of 1e-8 in the denominator is left out: ours has none)."""
    return np.array(
        [0.0 if n < 1e-8 else f / (c * n**2) for f, n in zip(losses, norms, strict=True)]
    )


def test_sps_plus_is_the_unbounded_rule():
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.1, 2.0, size=200).astype(np.float32)
    norms = rng.uniform(0.2, 3.0, size=200).astype(np.float32)
    norms[[17, 90]] = 0.0  # a zero gradient: LR 0
    controller = PolyakController(c=0.5, max_lr=None)
    got = [
        float(controller.compute(make_signals(t, float(loss), global_norm=float(norm))).lr)
        for t, (loss, norm) in enumerate(zip(losses, norms, strict=True))
    ]
    want = sps_plus_reference(losses.astype(np.float64), norms.astype(np.float64), 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert max(got) > 1.0  # no bound


def smoothed_sps_reference(losses, norms, c, gamma, batches, start):
    """`Sps.step` with adapt_flag 'smooth_iter', f* = 0: min(gamma^(1/n) * previous,
    loss / (c ||g||^2)), from init_step_size (no zero gradients here: see the docstring)."""
    previous, lrs = start, []
    for loss, norm in zip(losses, norms, strict=True):
        previous = min(gamma ** (1.0 / batches) * previous, loss / (c * norm**2))
        lrs.append(previous)
    return np.array(lrs)


def test_smoothed_sps_is_the_authors_smooth_iter():
    rng = np.random.default_rng(1)
    losses = rng.uniform(0.1, 2.0, size=300).astype(np.float32)
    norms = rng.uniform(0.05, 3.0, size=300).astype(np.float32)
    controller = PolyakController(c=0.5, max_lr=None, smoothing=2.0, smoothing_batches=20,
                                  smoothing_start=0.5)  # fmt: skip
    got = [
        float(controller.compute(make_signals(t, float(loss), global_norm=float(norm))).lr)
        for t, (loss, norm) in enumerate(zip(losses, norms, strict=True))
    ]
    want = smoothed_sps_reference(losses.astype(np.float64), norms.astype(np.float64),
                                  0.5, 2.0, 20, 0.5)  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-5)
    ratios = np.array(got[1:]) / np.array(got[:-1])
    assert ratios.max() <= 2.0 ** (1 / 20) * (1 + 1e-6)  # the cap on growth is reached
    assert ratios.max() > 2.0 ** (1 / 20) * (1 - 1e-6)
