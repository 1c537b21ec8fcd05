"""DoG and DoWG against numpy re-implementations of their reference code, on the
trainer's per-batch path (`tests.support.controlled_regression`): the authors' `DoG`
(formll/dog, `src/dog/dog.py`) and optax's `dowg` (`optax/contrib/_dog.py`), written
out in float64 on the flat parameter vector `[w, b]` with plain SGD."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import DAdaptSGDController, DoGController, DoWGController
from lrresearch.controllers.signals import Signals
from tests.support import (
    controlled_regression,
    read_events,
    regression_batches,
    regression_grad,
)

STEPS = 300


def dog_reference(x, y, w0, reps_rel=1e-6, c=1.0, eps=1e-8, init_eta=None):
    """DoG.step: on the first step rbar = reps_rel (1 + ||x_0||) (0 with init_eta) and
    G = ||g||^2 + eps; then rbar = max(rbar, ||x - x_0||), G += ||g||^2; eta = c rbar /
    sqrt(G) (init_eta on the first step if given); x -= eta g."""
    params = np.concatenate([w0, [0.0]]).astype(np.float64)
    x0 = params.copy()
    rbar, total, lrs, weights = None, None, [], []
    for t, (xb, yb) in enumerate(zip(x.astype(np.float64), y.astype(np.float64), strict=True)):
        g = regression_grad(params[:-1], params[-1], xb, yb)
        if t == 0:
            rbar = 0.0 if init_eta else reps_rel * (1 + np.linalg.norm(x0))
            total = g @ g + eps
        else:
            rbar = max(rbar, np.linalg.norm(params - x0))
            total += g @ g
        eta = init_eta if (t == 0 and init_eta) else c * rbar / np.sqrt(total)
        params = params - eta * g
        lrs.append(eta)
        weights.append(params)
    return np.array(lrs), np.array(weights)


def dowg_reference(x, y, w0, init_estim_sq_dist=None, eps=1e-4):
    """scale_by_dowg: rbar^2 = max(rbar^2, ||x - x_0||^2) (starting at
    init_estim_sq_dist, default eps); v += rbar^2 ||g||^2; eta = rbar^2 / (sqrt(v) + eps)."""
    params = np.concatenate([w0, [0.0]]).astype(np.float64)
    x0 = params.copy()
    rbar_sq, v, lrs, weights = (
        (eps if init_estim_sq_dist is None else init_estim_sq_dist),
        0.0,
        [],
        [],
    )
    for xb, yb in zip(x.astype(np.float64), y.astype(np.float64), strict=True):
        g = regression_grad(params[:-1], params[-1], xb, yb)
        rbar_sq = max(rbar_sq, np.sum((params - x0) ** 2))
        v += rbar_sq * (g @ g)
        eta = rbar_sq / (np.sqrt(v) + eps)
        params = params - eta * g
        lrs.append(eta)
        weights.append(params)
    return np.array(lrs), np.array(weights)


def dadapt_reference(x, y, w0, c=1.0, d0=1e-6, growth_rate=None, momentum=0.0, applied=None):
    """DAdaptSGD.step, operation by operation: g0_norm = ||g_0||; dlr = d c / g0_norm;
    s += dlr g; gsq_weighted += dlr^2 ||g||^2; d_hat = (||s||^2 - gsq_weighted) / ||s||;
    d = max(d, min(d_hat, d growth)); z = x_0 - s; x = momentum x + (1 - momentum) z.

    `applied(lr)`: the step the weights take instead of the exact one (momentum 0
    only), e.g. rounded to float32 as the optimizer's LR variable holds it. Returns
    (LRs applied, weights after each batch, the final d, capped steps)."""
    params = np.concatenate([w0, [0.0]]).astype(np.float64)
    x0, s = params.copy(), np.zeros_like(params)
    d, gsq_weighted, g0_norm, lrs, weights, capped = d0, 0.0, None, [], [], 0
    for xb, yb in zip(x.astype(np.float64), y.astype(np.float64), strict=True):
        g = regression_grad(params[:-1], params[-1], xb, yb)
        g0_norm = np.linalg.norm(g) if g0_norm is None else g0_norm
        dlr = d * c / g0_norm
        s = s + dlr * g
        gsq_weighted += dlr * dlr * (g @ g)
        d_hat = (s @ s - gsq_weighted) / np.sqrt(s @ s)
        capped += bool(growth_rate) and d_hat > d * growth_rate
        d = max(d, min(d_hat, d * (growth_rate or np.inf)))
        if applied is None:
            params = momentum * params + (1 - momentum) * (x0 - s)
        else:
            params = params - applied((1 - momentum) * dlr) * g
        lrs.append((1 - momentum) * dlr)
        weights.append(params)
    return np.array(lrs), np.array(weights), d, capped


CASES = {
    "DoG": (DoGController, dog_reference, {}),
    "DoG-reps_rel": (DoGController, dog_reference, {"reps_rel": 1e-3}),
    "DoG-init_eta": (DoGController, dog_reference, {"init_eta": 0.05}),
    "DoWG": (DoWGController, dowg_reference, {}),
    "DoWG-init": (DoWGController, dowg_reference, {"init_estim_sq_dist": 1e-2}),
    "DAdaptSGD": (DAdaptSGDController, dadapt_reference, {}),
    "DAdaptSGD-growth": (DAdaptSGDController, dadapt_reference, {"growth_rate": 1.02, "c": 0.5}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_matches_the_reference_over_many_steps(case):
    make, reference, kwargs = CASES[case]
    x, y = regression_batches(STEPS)
    w0 = np.random.default_rng(3).normal(size=x.shape[-1])
    want_lrs, want_weights = reference(x, y, w0, **kwargs)[:2]
    # Float64 weights: DoG's first steps are ~1e-6 of the weights, a few float32 ulps,
    # so in float32 ||x_t - x_0|| is quantized (1-5% off over the first steps, for the
    # authors' float32 code as for ours); the controller's own arithmetic is float32.
    got = controlled_regression(x, y, w0, make(**kwargs), keras.optimizers.SGD(), np.float64)
    lrs, weights = got
    np.testing.assert_allclose(lrs, want_lrs, rtol=1e-5)
    np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=2e-6)
    if "init_eta" not in kwargs:
        assert want_lrs[-1] > 10 * want_lrs[0]  # the step size grew from its tiny start


def test_dadapt_sgd_growth_compounds_in_float64_over_a_thousand_capped_steps():
    """`d` grows by `growth_rate` on every capped step: kept in float32, 1.01 is
    1.00999999 and `d` drifts 1e-5 off after 1,000 such steps. The reference applies
    the LR rounded to float32, as the optimizer's LR variable holds it, so the only
    difference left is float64 rounding in the controller's own arithmetic."""
    steps, growth = 1200, 1.01
    x, y = regression_batches(steps)
    w0 = np.random.default_rng(3).normal(size=x.shape[-1])
    want_lrs, want_weights, want_d, capped = dadapt_reference(
        x, y, w0, growth_rate=growth, applied=np.float32
    )
    assert capped > 1000  # growth is exercised, not just the uncapped estimate
    controller = DAdaptSGDController(growth_rate=growth)
    got = controlled_regression(x, y, w0, controller, keras.optimizers.SGD(), np.float64)
    assert controller.d.dtype == tf.float64
    np.testing.assert_allclose(controller.d.numpy(), want_d, rtol=1e-12)
    np.testing.assert_allclose(got[0], want_lrs, rtol=2**-24)  # one float32 rounding
    np.testing.assert_allclose(got[1], want_weights, rtol=1e-12, atol=1e-14)


def test_dadapt_sgd_with_keras_momentum_is_the_authors_momentum_form():
    """The authors' x = mu x + (1 - mu)(x_0 - s) is Keras's heavy ball at LR
    (1 - mu) d c / ||g_0||: same weights over many steps."""
    x, y = regression_batches(STEPS)
    w0 = np.random.default_rng(3).normal(size=x.shape[-1])
    want_lrs, want_weights, _, _ = dadapt_reference(x, y, w0, growth_rate=1.05, momentum=0.9)
    controller = DAdaptSGDController(growth_rate=1.05, momentum=0.9)
    optimizer = keras.optimizers.SGD(momentum=0.9)
    controller.check_optimizer(optimizer)  # accepted
    lrs, weights = controlled_regression(x, y, w0, controller, optimizer, np.float64)
    np.testing.assert_allclose(lrs, want_lrs, rtol=1e-5)
    np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=2e-6)
    assert want_lrs[-1] > 100 * want_lrs[0]


def signals(norm: float, grads) -> Signals:
    loss = tf.constant(1.0)
    step = tf.constant(0, tf.int64)
    return Signals(step, loss, tf.constant(norm), loss, loss, tf.constant(0.0), grads)


@pytest.mark.parametrize("make", [DoGController, DoWGController, DAdaptSGDController])
def test_a_nonfinite_gradient_norm_adds_nothing(make):
    w = tf.Variable([3.0, 4.0])
    controller = make()
    controller.build([w])
    grads = (tf.constant([1.0, 0.0]),)
    first = controller.compute(signals(1.0, grads))
    w.assign([3.5, 4.0])
    sums = dict(first.diagnostics)
    bad = controller.compute(signals(float("nan"), grads))
    assert np.isfinite(bad.lr.numpy()) and bad.lr.numpy() > 0
    total = {DoGController: "grad_sq_sum", DoWGController: "weighted_grad_sq_sum"}.get(make, "d")
    assert bad.diagnostics[total].numpy() == pytest.approx(sums[total].numpy())
    if make is not DAdaptSGDController:
        assert bad.diagnostics["distance"].numpy() == pytest.approx(0.5)
    else:
        assert bad.diagnostics["s_norm"].numpy() == pytest.approx(sums["s_norm"].numpy())


def test_unbuilt_controller_says_what_to_do():
    with pytest.raises(ValueError, match="build"):
        DoGController().compute(signals(1.0, (tf.constant([1.0]),)))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DoGController(reps_rel=0.0), "reps_rel"),
        (lambda: DoGController(init_eta=-1.0), "init_eta"),
        (lambda: DoWGController(eps=0.0), "eps"),
    ],
)
def test_bad_arguments_name_the_parameter(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["DoGController", "DoWGController", "DAdaptSGDController"])
def test_a_resumed_run_continues_from_the_same_x0_and_sums(tmp_path, name):
    """`x_0`, the running maximum and the sums are in the checkpoint: a run stopped at
    batch 20 and resumed to 40 logs the uninterrupted run's LRs and distances."""
    import gin

    from lrresearch.config import parse as config
    from lrresearch.training.trainer import Trainer

    def fit(steps, run_name, resume=False):
        config.parse([], [f"Trainer.controller = @{name}()", f"Trainer.steps = {steps}",
                          "Trainer.checkpoint_every = 20", "Trainer.steps_per_loop = 10",
                          "Trainer.eval_every = 0", "Trainer.histogram_every = 0",
                          "mlp.hidden = (16,)"])  # fmt: skip
        try:
            Trainer().fit(logdir=str(tmp_path), run_name=run_name, quiet=True, resume=resume)
        finally:
            gin.clear_config()
        return read_events(tmp_path / run_name)

    full = fit(40, "full")
    fit(20, "cut")
    resumed = fit(40, "cut", resume=True)
    state = "controller/s_norm" if name == "DAdaptSGDController" else "controller/distance"
    for tag in ("lr", state, "loss/batch"):
        np.testing.assert_allclose(resumed.scalar(tag), full.scalar(tag), rtol=1e-6, err_msg=tag)
    assert resumed.scalar(state)[-1] > 0
