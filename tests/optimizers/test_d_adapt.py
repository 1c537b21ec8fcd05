"""`Prodigy` and `DAdaptAdam` against numpy transcriptions of the authors' `step()`
(PyPI `prodigyopt` 1.1.2 `Prodigy`, PyPI `dadaptation` `DAdaptAdam`), on a linear
regression with float64 weights in two variables (`w`, a vector, and `b`, a scalar: `d`'s
sums run over both), an LR that changes every batch (0 on one batch) and zero gradients
on some batches (the first included: the authors return before the update); plus XLA,
`get_config`, bad arguments and a short Trainer run."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.optimizers import DAdaptAdam, Prodigy
from tests.support import regression_batches, regression_grad

STEPS = 60
ZERO_GRAD_STEPS = (0, 7)  # the first batch (sum |s| = 0: no update), and one later
ZERO_LR_STEP = 3  # the authors' `group_lr > 0` is false: nothing changes


def lrs_per_batch(steps: int = STEPS) -> np.ndarray:
    """`1 + 0.5 sin(t / 5)`, 0 at ZERO_LR_STEP, as the float32 LR variable holds it."""
    lrs = np.float32(1 + 0.5 * np.sin(np.arange(steps) / 5)).astype(np.float64)
    lrs[ZERO_LR_STEP] = 0.0
    return lrs


def _bias_correction(k, beta_1, beta_2, on):
    return (1 - beta_2 ** (k + 1)) ** 0.5 / (1 - beta_1 ** (k + 1)) if on else 1.0


def prodigy_reference(grad_at, params, lrs, beta_1=0.9, beta_2=0.999, beta_3=None,
                      epsilon=1e-8, weight_decay=0.0, decouple=True, use_bias_correction=False,
                      safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=math.inf,
                      slice_p=1):  # fmt: skip
    """Prodigy.step, per variable (flat float64): g += wd p unless decouple; dlr = d lr
    bc; if lr > 0: num_delta += (d/d0) dlr g[::p].(p0 - p[::p]); m = b1 m + d (1-b1) g;
    v = b2 v + d^2 (1-b2) g^2; s = b3 s + (d/d0) (d if safeguard else dlr) g[::p];
    return if sum|s| = 0; d_hat = d_coef (b3 num + delta) / sum|s|; d = max(d, d_hat)
    if d == d0; d_max = max(d_max, d_hat); d = min(d_max, d growth); p -= wd dlr p if
    decouple; p -= dlr m / (sqrt(v) + d eps) (dlr d g / ... if b1 = 0); k += 1.
    Returns the weights, the dlr applied (0 without an update) and d, per batch."""
    beta_3 = math.sqrt(beta_2) if beta_3 is None else beta_3
    ps = [p.copy() for p in params]
    p0 = [p[::slice_p].copy() for p in ps]
    m, v = [np.zeros_like(p) for p in ps], [np.zeros_like(p) for p in ps]
    s = [np.zeros_like(q) for q in p0]
    d, d_max, numerator, k, out = d0, d0, 0.0, 0, []
    for t, lr in enumerate(lrs):
        grads = grad_at(ps, t)
        if weight_decay and not decouple:
            grads = [g + weight_decay * p for g, p in zip(grads, ps, strict=True)]
        dlr = d * lr * _bias_correction(k, beta_1, beta_2, use_bias_correction)
        delta, denom = 0.0, 0.0
        for i, g in enumerate(grads if lr > 0 else []):
            delta += (d / d0) * dlr * np.dot(g[::slice_p], p0[i] - ps[i][::slice_p])
            m[i] = beta_1 * m[i] + d * (1 - beta_1) * g
            v[i] = beta_2 * v[i] + d * d * (1 - beta_2) * g * g
            s[i] = beta_3 * s[i] + (d / d0) * (d if safeguard_warmup else dlr) * g[::slice_p]
            denom += np.abs(s[i]).sum()
        if denom == 0:
            out.append((np.concatenate(ps), 0.0, d))
            continue
        numerator = numerator * beta_3 + delta
        d_hat = d_coef * numerator / denom
        d = max(d, d_hat) if d == d0 else d
        d_max = max(d_max, d_hat)
        d = min(d_max, d * growth_rate)
        for i, g in enumerate(grads):
            if weight_decay and decouple:
                ps[i] = ps[i] - weight_decay * dlr * ps[i]
            step = dlr * m[i] if beta_1 else dlr * d * g
            ps[i] = ps[i] - step / (np.sqrt(v[i]) + d * epsilon)
        k += 1
        out.append((np.concatenate(ps), dlr, d))
    return tuple(np.array(column) for column in zip(*out, strict=True))


def dadapt_adam_reference(grad_at, params, lrs, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                          weight_decay=0.0, decouple=False, use_bias_correction=False,
                          d0=1e-6, growth_rate=math.inf):  # fmt: skip
    """DAdaptAdam.step, per variable (flat float64), b = sqrt(b2): g += wd p unless
    decouple; dlr = d lr bc; if lr > 0: acc += dlr g.(s / (sqrt(v) + eps)) (old s, v);
    m = b1 m + dlr (1-b1) g; v = b2 v + (1-b2) g^2; s = b s + dlr (1-b) g;
    num = b num + (1-b) acc; return if sum|s| = 0 (num not kept); d = max(d, min(num /
    ((1-b) sum|s|), d growth)); p -= wd dlr p if decouple; p -= m / (sqrt(v) + eps)."""
    root = math.sqrt(beta_2)
    ps = [p.copy() for p in params]
    m, v, s = ([np.zeros_like(p) for p in ps] for _ in range(3))
    d, numerator, k, out = d0, 0.0, 0, []
    for t, lr in enumerate(lrs):
        grads = grad_at(ps, t)
        if weight_decay and not decouple:
            grads = [g + weight_decay * p for g, p in zip(grads, ps, strict=True)]
        dlr = d * lr * _bias_correction(k, beta_1, beta_2, use_bias_correction)
        accumulated, sk_l1 = 0.0, 0.0
        for i, g in enumerate(grads if lr > 0 else []):
            accumulated += dlr * np.dot(g, s[i] / (np.sqrt(v[i]) + epsilon))
            m[i] = beta_1 * m[i] + dlr * (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g * g
            s[i] = root * s[i] + dlr * (1 - root) * g
            sk_l1 += np.abs(s[i]).sum()
        if sk_l1 == 0:
            out.append((np.concatenate(ps), 0.0, d))
            continue
        numerator = root * numerator + (1 - root) * accumulated
        d = max(d, min(numerator / ((1 - root) * sk_l1), d * growth_rate))
        for i in range(len(ps)):
            if weight_decay and decouple:
                ps[i] = ps[i] - weight_decay * dlr * ps[i]
            ps[i] = ps[i] - m[i] / (np.sqrt(v[i]) + epsilon)
        k += 1
        out.append((np.concatenate(ps), dlr, d))
    return tuple(np.array(column) for column in zip(*out, strict=True))


@pytest.fixture(scope="module")
def data():
    x, y = regression_batches(STEPS)
    w0 = np.random.default_rng(3).normal(size=x.shape[-1])
    return x.astype(np.float64), y.astype(np.float64), [w0, np.array([0.25])]


def grad_fn(data):
    x, y, _ = data

    def grad_at(params, t):
        g = regression_grad(params[0], params[1][0], x[t], y[t])
        scale = 0.0 if t in ZERO_GRAD_STEPS else 1.0
        return [scale * g[:-1], scale * g[-1:]]

    return grad_at


def run(optimizer, data, lrs, jit_compile=False):
    """Ours on the same batches; returns (flat weights, float64 effective_lr, d) per
    batch and the step summaries of the last batch. Under XLA the first `apply` builds
    the optimizer inside the compiled function, as Keras's `fit` does."""
    x, y, (w0, b0) = data
    w, b = tf.Variable(w0, name="w"), tf.Variable(b0[0], name="b")
    if not jit_compile:
        optimizer.build([w, b])

    @tf.function(jit_compile=jit_compile)
    def step(xb, yb, lr, scale):
        optimizer.learning_rate.assign(lr)
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_mean(tf.square(tf.linalg.matvec(xb, w) + b - yb))
        optimizer.apply([g * scale for g in tape.gradient(loss, [w, b])], [w, b])
        state = (tf.convert_to_tensor(optimizer.effective_lr), tf.convert_to_tensor(optimizer.d))
        return tf.concat([w, b[None]], 0), *state, optimizer.step_summaries()

    scales = [
        tf.constant(0.0 if t in ZERO_GRAD_STEPS else 1.0, tf.float64) for t in range(len(lrs))
    ]
    lr_values = [tf.constant(lr, tf.float32) for lr in lrs]
    out = [step(x[t], y[t], lr_values[t], scales[t]) for t in range(len(lrs))]
    return *(np.array([o[i].numpy() for o in out]) for i in range(3)), out[-1][3]


CASES = {
    "prodigy-defaults": (Prodigy, {}),
    "prodigy-decoupled-bias-slice": (
        Prodigy, {"weight_decay": 0.05, "use_bias_correction": True, "beta_3": 0.95,
                  "growth_rate": 1.5, "slice_p": 2, "d_coef": 2.0}),
    "prodigy-coupled-safeguard-beta1-0": (
        Prodigy, {"weight_decay": 0.05, "decouple": False, "safeguard_warmup": True,
                  "beta_1": 0.0, "epsilon": 1e-6, "d0": 1e-4}),
    "dadapt-defaults": (DAdaptAdam, {}),
    "dadapt-decoupled-bias-growth": (
        DAdaptAdam, {"weight_decay": 0.05, "decouple": True, "use_bias_correction": True,
                     "growth_rate": 1.5, "beta_1": 0.8}),
    "dadapt-coupled": (DAdaptAdam, {"weight_decay": 0.05, "beta_2": 0.99, "d0": 1e-4}),
}  # fmt: skip


def reference_for(cls, kwargs):
    renamed = {k: (math.inf if k == "growth_rate" and v is None else v) for k, v in kwargs.items()}
    return (prodigy_reference if cls is Prodigy else dadapt_adam_reference), renamed


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_matches_the_authors_step_with_zero_gradients_and_lr(case, data):
    cls, kwargs = CASES[case]
    lrs = lrs_per_batch()
    reference, ref_kwargs = reference_for(cls, kwargs)
    want_w, want_dlr, want_d = reference(grad_fn(data), data[2], lrs, **ref_kwargs)
    weights, dlr, d, last = run(cls(**kwargs), data, lrs)
    np.testing.assert_allclose(weights, want_w, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(dlr, want_dlr, rtol=1e-10, atol=0)
    np.testing.assert_allclose(d, want_d, rtol=1e-10, atol=0)
    # The LR-0 batch moves nothing, nor the first (zero gradient) unless the decay is
    # coupled (then its gradient is wd * w); the batch at ZERO_GRAD_STEPS[1] does (s is
    # not 0 any more).
    assert dlr[ZERO_LR_STEP] == 0 and dlr[ZERO_GRAD_STEPS[1]] > 0
    np.testing.assert_array_equal(weights[ZERO_LR_STEP], weights[ZERO_LR_STEP - 1])
    if not kwargs.get("weight_decay") or kwargs.get("decouple", cls is Prodigy):
        assert dlr[0] == 0
        np.testing.assert_array_equal(weights[0], np.append(*data[2]))
    assert d[-1] > 10 * d[0]  # d grew from d0
    assert last["optimizer/effective_lr"].dtype == tf.float32
    np.testing.assert_allclose(last["optimizer/effective_lr"], dlr[-1], rtol=1e-7)
    np.testing.assert_allclose(last["optimizer/d"], d[-1], rtol=1e-7)


def test_first_applied_step_is_at_d0_and_counts_for_bias_correction(data):
    """The authors' `k` only counts steps that reached the update: with bias correction
    the first applied step (batch 1, after the zero-gradient batch 0) uses k = 0."""
    lrs = np.ones(3)
    _, dlr, d, _ = run(Prodigy(use_bias_correction=True), data, lrs)
    assert dlr[0] == 0 and d[0] == d[1] == 1e-6  # Prodigy's first d_hat is 0 (x = x_0)
    assert dlr[1] == pytest.approx(1e-6 * math.sqrt(1 - 0.999) / (1 - 0.9), rel=1e-12)


@pytest.mark.slow
def test_xla_gives_the_same_weights(data):
    lrs = lrs_per_batch(12)
    for cls, kwargs in (CASES["prodigy-decoupled-bias-slice"], CASES["dadapt-coupled"]):
        plain = run(cls(**kwargs), data, lrs)
        compiled = run(cls(**kwargs), data, lrs, jit_compile=True)
        for got, want in zip(compiled[:3], plain[:3], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "optimizer",
    [Prodigy(0.5, beta_1=0.8, beta_3=0.9, weight_decay=0.1, decouple=False, d_coef=0.7,
             use_bias_correction=True, safeguard_warmup=True, growth_rate=1.02, slice_p=11),
     DAdaptAdam(beta_2=0.99, epsilon=1e-6, weight_decay=0.01, decouple=True, d0=1e-5)],
)  # fmt: skip
def test_get_config_round_trips(optimizer):
    config = optimizer.get_config()
    assert type(optimizer).from_config(config).get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is type(optimizer) and restored.get_config() == config


def test_infinite_growth_rate_means_no_limit():
    assert Prodigy(growth_rate=float("inf")).get_config()["growth_rate"] is None


@pytest.mark.parametrize(
    ("make_optimizer", "message"),
    [
        (lambda: Prodigy(d0=0.0), "Prodigy.d0"),
        (lambda: Prodigy(beta_3=1.0), "Prodigy.beta_3"),
        (lambda: Prodigy(slice_p=0), "Prodigy.slice_p"),
        (lambda: Prodigy(d_coef=-1.0), "Prodigy.d_coef"),
        (lambda: Prodigy(learning_rate=-1.0), "Prodigy.learning_rate"),
        (lambda: DAdaptAdam(beta_1=1.0), "DAdaptAdam.beta_1"),
        (lambda: DAdaptAdam(epsilon=0.0), "DAdaptAdam.epsilon"),
        (lambda: DAdaptAdam(growth_rate=0.0), "DAdaptAdam.growth_rate"),
        (lambda: DAdaptAdam(decouple=1), "DAdaptAdam.decouple"),
    ],
)
def test_bad_arguments_name_the_parameter(make_optimizer, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer()
