"""NGN (and NGN-M) and AdaGrad-Norm against numpy re-implementations of their reference
rules, on the trainer's per-batch path (`tests.support.controlled_regression`), in
float64: step-back's `NGN.step` (`denom = 1 + lr / (2 loss) ||g||^2`, SGD at `lr /
denom`), NGN-M's Algorithm 1 (heavy ball at `(1 - beta) gamma_k`) and Ward et al.'s
AdaGrad-Norm (`b^2 += ||g||^2` before the step)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import AdaGradNormController, NGNController
from lrresearch.controllers.signals import make_signals
from lrresearch.optimizers import MomentumSGD
from tests.support import controlled_regression, regression_batches, regression_grad

STEPS = 250


def regression_loss(params, xb, yb):
    residual = xb @ params[:-1] + params[-1] - yb
    return 0.5 * np.mean(residual**2)


def ngn_reference(x, y, w0, lr=0.1, lb=0.0, momentum=0.0):
    """NGN: gamma = lr / (1 + lr / (2 (f - lb)) ||g||^2); NGN-M: x_{k+1} = x_k -
    (1 - beta) gamma g + beta (x_k - x_{k-1}). Returns (LRs applied, weights)."""
    params = np.concatenate([w0, [0.0]]).astype(np.float64)
    previous, lrs, weights = params.copy(), [], []
    for xb, yb in zip(x.astype(np.float64), y.astype(np.float64), strict=True):
        g = regression_grad(params[:-1], params[-1], xb, yb)
        f = regression_loss(params, xb, yb)
        gamma = lr / (1 + lr / (2 * (f - lb)) * (g @ g))
        step = (1 - momentum) * gamma
        params, previous = params - step * g + momentum * (params - previous), params
        lrs.append(step)
        weights.append(params)
    return np.array(lrs), np.array(weights)


def adagrad_norm_reference(x, y, w0, lr=1.0, b0=0.1):
    """Ward et al.'s AdaGrad-Norm: b^2 += ||g||^2; x -= lr / b g."""
    params = np.concatenate([w0, [0.0]]).astype(np.float64)
    b_sq, lrs, weights = b0**2, [], []
    for xb, yb in zip(x.astype(np.float64), y.astype(np.float64), strict=True):
        g = regression_grad(params[:-1], params[-1], xb, yb)
        b_sq += g @ g
        params = params - lr / np.sqrt(b_sq) * g
        lrs.append(lr / np.sqrt(b_sq))
        weights.append(params)
    return np.array(lrs), np.array(weights)


CASES = {
    "NGN": (NGNController, ngn_reference, {"lr": 0.5}, 0.0),
    "NGN-M-lb": (NGNController, ngn_reference, {"lr": 2.0, "lb": -0.3, "momentum": 0.8}, 0.8),
    "AdaGradNorm": (AdaGradNormController, adagrad_norm_reference, {"lr": 0.7, "b0": 0.3}, 0.0),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_the_reference_over_many_steps(case):
    make, reference, kwargs, momentum = CASES[case]
    x, y = regression_batches(STEPS)
    w0 = np.random.default_rng(3).normal(size=x.shape[-1])
    want_lrs, want_weights = reference(x, y, w0, **kwargs)
    controller = make(**kwargs)
    optimizer = keras.optimizers.SGD(momentum=momentum)
    controller.check_optimizer(optimizer)  # accepted, no warning
    assert controller.run_warnings(STEPS) == []
    lrs, weights = controlled_regression(x, y, w0, controller, optimizer, np.float64)
    # The LR goes through the optimizer's float32 variable: one rounding per step.
    np.testing.assert_allclose(lrs, want_lrs, rtol=1e-6)
    np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-6)
    assert want_lrs.max() > 1.5 * want_lrs.min()  # the step size really moved


def lr_of(controller, loss, norm, step=0):
    return float(controller.compute(make_signals(step, loss=loss, global_norm=norm)).lr)


def test_ngn_edge_cases():
    ngn = NGNController(lr=2.0, lb=0.5)
    assert lr_of(ngn, 1.5, 0.0) == 2.0  # a zero gradient: the cap c
    assert lr_of(ngn, 1.5, 2.0) == pytest.approx(2.0 / (1 + 2.0 / 2.0 * 4.0))
    assert lr_of(ngn, 0.5, 3.0) == 0.0  # f = lb: the reference's 0 (lr / inf)
    assert lr_of(ngn, 0.5, 0.0) == 0.0  # f = lb, g = 0: the reference's NaN, ours 0
    assert lr_of(ngn, 0.2, 3.0) == 0.0  # f < lb: no ascent
    assert np.isnan(lr_of(ngn, float("nan"), 1.0))  # the guard sees it
    assert np.isnan(lr_of(ngn, 1.0, float("inf")))
    assert lr_of(NGNController(lr=2.0, momentum=0.75), 1.5, 0.0) == 0.5  # (1 - beta) c


def test_adagrad_norm_edge_cases_and_nonfinite_batches():
    zero = AdaGradNormController(lr=1.0, b0=0.0)
    assert zero.initial_lr == 0.0
    assert lr_of(zero, 1.0, 0.0) == 0.0  # b = 0: LR 0, not 1 / 0
    assert lr_of(zero, 1.0, 3.0) == pytest.approx(1.0 / 3.0)
    assert np.isnan(lr_of(zero, 1.0, float("nan")))  # skipped by the guard ...
    assert np.isnan(lr_of(zero, float("inf"), 1.0))
    assert zero.b_sq.numpy() == 9.0  # ... and adds nothing
    assert lr_of(zero, 1.0, 4.0) == pytest.approx(1.0 / 5.0)


def test_adagrad_norm_sum_is_float64_over_many_batches():
    """10,000 batches of ||g||^2 = 1e-3 on top of b0^2 = 1e5: in float32 each term is
    below half an ulp of the sum (0.0039) and is lost; the float64 sum has them all."""
    b0 = 1e5**0.5
    controller = AdaGradNormController(lr=1.0, b0=b0)
    assert controller.b_sq.dtype == tf.float64
    norm = tf.constant(np.sqrt(1e-3), tf.float32)

    @tf.function
    def run(n):
        for _ in tf.range(n):
            controller.compute(make_signals(0, loss=1.0, global_norm=norm))

    run(tf.constant(10_000))
    sq = float(norm.numpy()) ** 2  # what the controller adds, from a float32 norm
    np.testing.assert_allclose(controller.b_sq.numpy(), b0**2 + 10_000 * sq, rtol=1e-10)


def test_all_controllers_traced_once_in_one_compiled_loop():
    """NGN, NGN-M and AdaGrad-Norm inside one tf.function over 100 batches: one trace,
    no host round trip (no py_function), the LRs of the numpy formulas. (XLA: in
    test_xla_controllers.py.)"""
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.1, 2.0, size=100).astype(np.float32)
    norms = rng.uniform(0.0, 3.0, size=100).astype(np.float32)
    controllers = [NGNController(lr=0.7), NGNController(lr=0.7, momentum=0.9),
                   AdaGradNormController(lr=0.5)]  # fmt: skip

    @tf.function
    def run(losses, norms):
        out = tf.TensorArray(tf.float32, size=len(controllers), element_shape=[100])
        for i, controller in enumerate(controllers):
            lrs = tf.TensorArray(tf.float32, size=100)
            for t in tf.range(100):
                signals = make_signals(t, loss=losses[t], global_norm=norms[t])
                lrs = lrs.write(t, controller.compute(signals).lr)
            out = out.write(i, lrs.stack())
        return out.stack()

    got = run(tf.constant(losses), tf.constant(norms)).numpy()
    run(tf.constant(losses[::-1]), tf.constant(norms[::-1]))  # new values, no retrace
    assert run.experimental_get_tracing_count() == 1
    ops = {op.type for op in run.get_concrete_function(losses, norms).graph.get_operations()}
    assert not ops & {"EagerPyFunc", "PyFunc", "PyFuncStateless"}
    f, sq = losses.astype(np.float64), norms.astype(np.float64) ** 2
    ngn = 0.7 / (1 + 0.7 / (2 * f) * sq)
    adagrad = 0.5 / np.sqrt(0.1**2 + np.cumsum(sq))
    np.testing.assert_allclose(got, [ngn, 0.1 * ngn, adagrad], rtol=1e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: NGNController(lr=0.0), "NGNController.lr"),
        (lambda: NGNController(lb=float("nan")), "NGNController.lb"),
        (lambda: NGNController(momentum=1.0), "NGNController.momentum"),
        (lambda: NGNController(momentum=-0.1), "NGNController.momentum"),
        (lambda: AdaGradNormController(lr=-1.0), "AdaGradNormController.lr"),
        (lambda: AdaGradNormController(b0=-0.1), "AdaGradNormController.b0"),
        (lambda: AdaGradNormController(b0="1"), "AdaGradNormController.b0"),
    ],
)
def test_bad_arguments_name_the_binding(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_optimizer_checks():
    """At momentum 0 another optimizer is a warning naming 'sgd'; NGN-M refuses all
    but Keras's SGD with its momentum, naming the binding to change."""
    ngn = NGNController()
    ngn.check_optimizer(keras.optimizers.Adam())
    assert "Trainer.optimizer = 'sgd'" in ngn.run_warnings(100)[0]
    adagrad = AdaGradNormController()
    adagrad.check_optimizer(keras.optimizers.SGD(momentum=0.9))
    assert "AdaGrad-Norm" in adagrad.run_warnings(None)[0]
    ngn_m = NGNController(momentum=0.9)
    ngn_m.check_optimizer(keras.optimizers.SGD(momentum=0.9))
    for wrong in (keras.optimizers.SGD(), keras.optimizers.SGD(momentum=0.5),
                  MomentumSGD(momentum=0.9), keras.optimizers.Adam()):  # fmt: skip
        with pytest.raises(ValueError, match=r"keras.optimizers.SGD.momentum = 0.9"):
            ngn_m.check_optimizer(wrong)


def test_config_round_trip_and_checkpointed_sum(tmp_path):
    """get_config rebuilds an equal controller; AdaGrad-Norm's sum is in the checkpoint,
    so a restored controller continues the same LRs (float64, bit for bit)."""
    from lrresearch.controllers.base import deserialize_controller, serialize_controller

    for controller in (NGNController(lr=0.3, lb=-1.0, momentum=0.5),
                       AdaGradNormController(lr=0.2, b0=0.0)):  # fmt: skip
        again = deserialize_controller(serialize_controller(controller))
        assert type(again) is type(controller) and again.get_config() == controller.get_config()
    first = AdaGradNormController(lr=0.2, b0=0.5)
    for t in range(30):
        lr_of(first, 1.0, 0.1 * t + 0.05)
    path = tf.train.Checkpoint(controller=first).write(str(tmp_path / "ckpt"))
    second = AdaGradNormController(lr=0.2, b0=0.5)
    tf.train.Checkpoint(controller=second).read(path).assert_consumed()
    assert second.b_sq.numpy() == first.b_sq.numpy()
    assert lr_of(second, 1.0, 2.0) == lr_of(first, 1.0, 2.0)
