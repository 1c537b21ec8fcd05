"""`ScheduleFreeWrapper` and `ScheduleFreeRAdam` against numpy transcriptions of the
authors' `ScheduleFreeWrapper.step` (`wrap_schedulefree.py`) and
`RAdamScheduleFree.step` (`radam_schedulefree.py`), PyPI `schedulefree` 1.4.1, on a
linear regression with float64 weights `[w, b]`, an LR that changes every batch and
zero gradients on some batches (the first included); plus the eval weights, configs
and bad arguments. Checkpoints (the wrapper's with its base Adam's state), XLA, Keras's
`fit` and MirroredStrategy: `test_parameter_free_optimizers.py`, through
`tests/support.py: parameter_free_optimizers()`."""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.optimizers import MomentumSGD, ScheduleFreeRAdam, ScheduleFreeWrapper
from tests.support import regression_batches, regression_grad

STEPS = 120
ZERO_GRAD_STEPS = (0, 9)
# Betas float32 holds exactly (Keras's Adam casts them through float32).
B1, B2 = 0.875, 1 - 2.0**-10


def lrs_per_batch(base: float, steps: int = STEPS) -> np.ndarray:
    """`base * (1 + 0.5 sin(t / 6))`, rounded as the float32 LR variable holds it."""
    return np.float32(base * (1 + 0.5 * np.sin(np.arange(steps) / 6))).astype(np.float64)


# -- numpy transcriptions -----------------------------------------------------------------
# A base is (initial state, step(state, z, g, lr, k) -> (state, new z)), as the Keras
# optimizer ours wraps computes it (torch's SGD for `MomentumSGD`).


def sgd_base():
    return None, lambda s, z, g, lr, k: (s, z - lr * g)


def momentum_base(mu: float):
    def step(buf, z, g, lr, k):
        buf = mu * buf + g
        return buf, z - lr * buf

    return 0.0, step


def adam_base(eps: float, decay: float = 0.0):
    """Keras's Adam (AdamW with `decay`: `z -= z * decay * lr` first)."""

    def step(state, z, g, lr, k):
        m, v = state
        z = z - z * decay * lr
        m = m + (g - m) * (1 - B1)
        v = v + (g * g - v) * (1 - B2)
        alpha = lr * np.sqrt(1 - B2 ** (k + 1)) / (1 - B1 ** (k + 1))
        return (m, v), z - m * alpha / (np.sqrt(v) + eps)

    return (0.0, 0.0), step


def wrapper_reference(base, grad_at, params, lrs, momentum=0.9, weight_decay_at_y=0.0,
                      r=0.0, weight_lr_power=2.0):  # fmt: skip
    """The authors' ScheduleFreeWrapper.step, flat float64: z cloned from y at the first
    step; z -= lr wd y; y -= lr wd (1 - beta) y; x = lerp(y, z, 1 - 1/beta); z =
    base(z); lr_max = max(lr_max, lr) from 0; weight = (k+1)^r lr_max^power; c =
    weight / weight_sum; x = lerp(x, z, c); y = lerp(x, z, 1 - beta). Returns (y per
    batch, c per batch, x = eval())."""
    state, base_step = base
    y, z, lr_max, weight_sum, ys, cs = params.copy(), None, 0.0, 0.0, [], []
    for k, lr in enumerate(lrs):
        g = grad_at(y, k)
        z = y.copy() if z is None else z
        if weight_decay_at_y:
            z = z - lr * weight_decay_at_y * y
            y = y - lr * weight_decay_at_y * (1 - momentum) * y
        x = y + (1 - 1 / momentum) * (z - y)
        state, z = base_step(state, z, g, lr, k)
        lr_max = max(lr, lr_max)
        weight = (k + 1) ** r * lr_max**weight_lr_power
        weight_sum += weight
        c = weight / weight_sum
        x = x + c * (z - x)
        y = x + (1 - momentum) * (z - x)
        ys.append(y)
        cs.append(c)
    return np.array(ys), np.array(cs), y + (1 - 1 / momentum) * (z - y)


def radam_reference(grad_at, params, lrs, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                    weight_decay=0.0, r=0.0, weight_lr_power=2.0,
                    silent_sgd_phase=True):  # fmt: skip
    """The authors' RAdamScheduleFree.step, flat float64: rho_inf = 2/(1-b2) - 1, rho_t =
    rho_inf - 2 t b2^t / (1 - b2^t) (t = k+1); rect = sqrt((rho_t-4)(rho_t-2) rho_inf /
    ((rho_inf-4)(rho_inf-2) rho_t)) if rho_t > 4 else float(not silent); lr_k = lr rect;
    v = b2 v + (1-b2) g^2 always; d = g / (sqrt(v / (1-b2^t)) + eps) if rho_t > 4 else
    g; d += wd y; then the Schedule-Free average and update with lr_k (lr_max from -1).
    Returns (y per batch, lr_k per batch, c per batch, x = eval())."""
    y, z, v = params.copy(), None, np.zeros_like(params)
    lr_max, weight_sum, ys, lr_ks, cs = -1.0, 0.0, [], [], []
    rho_inf = 2 / (1 - beta_2) - 1
    for k, lr in enumerate(lrs):
        g = grad_at(y, k)
        z = y.copy() if z is None else z
        t = k + 1
        rho_t = rho_inf - 2 * t * beta_2**t / (1 - beta_2**t)
        if rho_t > 4:
            rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                    / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5  # fmt: skip
        else:
            rect = float(not silent_sgd_phase)
        lr_k = lr * rect
        lr_max = max(lr_k, lr_max)
        weight = t**r * lr_max**weight_lr_power
        weight_sum += weight
        c = weight / weight_sum if weight_sum else 0.0
        v = beta_2 * v + (1 - beta_2) * g * g
        d = g / (np.sqrt(v / (1 - beta_2**t)) + epsilon) if rho_t > 4 else g
        d = d + weight_decay * y
        y = y + c * (z - y) + lr_k * (beta_1 * (1 - c) - 1) * d
        z = z - lr_k * d
        ys.append(y)
        lr_ks.append(lr_k)
        cs.append(c)
    return np.array(ys), np.array(lr_ks), np.array(cs), y + (1 - 1 / beta_1) * (z - y)


# -- ours on the same batches -------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    x, y = regression_batches(STEPS, seed=4)
    w0 = np.random.default_rng(5).normal(size=x.shape[-1])
    return x.astype(np.float64), y.astype(np.float64), np.concatenate([w0, [0.3]])


def grad_fn(data):
    x, y, _ = data

    def grad_at(params, k):
        g = regression_grad(params[:-1], params[-1], x[k], y[k])
        return 0 * g if k in ZERO_GRAD_STEPS else g

    return grad_at


def run(optimizer, data, lrs):
    """Ours on the same batches, all in one compiled call (the LR assigned before each
    batch); returns (flat y per batch, effective_lr, average_weight, flat x after
    swap_to_eval)."""
    x, y, params = data
    w, b = tf.Variable(params[:-1], name="w"), tf.Variable(params[-1], name="b")
    scales = np.array([0.0 if k in ZERO_GRAD_STEPS else 1.0 for k in range(len(lrs))])

    @tf.function
    def steps(xs, ys, lrs, scales):
        out = [tf.TensorArray(t, size=len(lrs)) for t in (tf.float64, tf.float32, tf.float32)]
        for k in tf.range(len(lrs)):
            optimizer.learning_rate.assign(lrs[k])
            with tf.GradientTape() as tape:
                loss = 0.5 * tf.reduce_mean(tf.square(tf.linalg.matvec(xs[k], w) + b - ys[k]))
            optimizer.apply([g * scales[k] for g in tape.gradient(loss, [w, b])], [w, b])
            s = optimizer.step_summaries()
            values = tf.concat([w, b[None]], 0), s["optimizer/effective_lr"], s[
                "optimizer/average_weight"]  # fmt: skip
            out = [array.write(k, value) for array, value in zip(out, values, strict=True)]
        return [array.stack() for array in out]

    optimizer.build([w, b])
    out = steps(x[: len(lrs)], y[: len(lrs)], np.float32(lrs), scales)
    optimizer.swap_to_eval([w, b])
    return *(o.numpy() for o in out), np.append(w.numpy(), b.numpy())


# -- the wrapper --------------------------------------------------------------------------

WRAPPER_CASES = {
    # name: (our base_optimizer, the numpy base, LR, wrapper kwargs)
    "sgd-decay-at-y-momentum": ("sgd", sgd_base(), 0.2,
                                {"momentum": 0.7, "weight_decay_at_y": 0.05}),
    "torch-momentum-r-power0": (functools.partial(MomentumSGD, momentum=0.8), momentum_base(0.8),
                                0.02, {"r": 1.0, "weight_lr_power": 0.0}),
    # The base's own state (Adam's moments) and its decoupled decay at z, with decay at y.
    "adamw-decay-at-z-and-y-r2": (
        functools.partial(keras.optimizers.AdamW, beta_1=B1, beta_2=B2, epsilon=1e-6,
                          weight_decay=2.0**-4),
        adam_base(1e-6, 2.0**-4), 0.05, {"momentum": 0.95, "weight_decay_at_y": 0.01, "r": 2.0}),
}  # fmt: skip


@pytest.mark.parametrize("case", WRAPPER_CASES)
def test_wrapper_matches_the_authors_step_and_eval(case, data):
    base, numpy_base, lr, kwargs = WRAPPER_CASES[case]
    lrs = lrs_per_batch(lr)
    want_y, want_c, want_x = wrapper_reference(numpy_base, grad_fn(data), data[2], lrs, **kwargs)
    optimizer = ScheduleFreeWrapper(lr, base_optimizer=base, **kwargs)
    got_y, got_lr, got_c, got_x = run(optimizer, data, lrs)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_x, want_x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_c, want_c, rtol=1e-6)  # logged as float32
    np.testing.assert_allclose(got_lr, lrs, rtol=1e-7)  # the base's LR, as given
    assert got_c[0] == 1.0 and 0 < got_c[-1] < 0.1  # c_1 = 1, then the average settles
    assert not np.allclose(got_x, got_y[-1])  # evaluated on x, not y
    assert int(optimizer.base_optimizer.iterations.numpy()) == STEPS  # once per batch


def test_wrapper_checkpoint_holds_the_base_state(tmp_path):
    """The base's slots and counter are saved with the wrapper and restored (the resumed
    run's weights: `test_parameter_free_optimizers.py`'s checkpoint test)."""

    def trained(steps: int) -> tuple[ScheduleFreeWrapper, tf.Variable]:
        w = tf.Variable([1.0, -2.0], dtype=tf.float64)
        optimizer = ScheduleFreeWrapper(0.1, "adam")
        optimizer.build([w])
        for _ in range(steps):
            optimizer.apply([tf.constant([0.5, 0.25], tf.float64)], [w])
        return optimizer, w

    optimizer, w = trained(3)
    path = tf.train.Checkpoint(optimizer=optimizer, w=w).save(str(tmp_path / "ckpt"))
    saved = {name for name, _ in tf.train.list_variables(path)}
    assert "optimizer/base_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE" in saved
    restored, w2 = trained(0)
    tf.train.Checkpoint(optimizer=restored, w=w2).restore(path).assert_consumed()
    base, base2 = optimizer.base_optimizer, restored.base_optimizer
    assert int(base2.iterations.numpy()) == 3 and len(base2.variables) == len(base.variables)
    for ours, theirs in zip(base2.variables, base.variables, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


# -- RAdam ----------------------------------------------------------------------------------

RADAM_CASES = {
    # name: (LR, kwargs, batches of the SGD phase: rho_t <= 4)
    "defaults-silent": (0.01, {}, 4),
    # beta_2 0.7: rho_inf = 5.67, rho_t passes 4 at the 6th batch; decay in both phases.
    "beta2-0.7-decay-silent": (0.02, {"beta_2": 0.7, "weight_decay": 0.05, "beta_1": 0.8}, 5),
    "beta2-0.65-not-silent-power0-r1": (0.02, {"beta_2": 0.65, "silent_sgd_phase": False,
                                               "weight_lr_power": 0.0, "r": 1.0, "epsilon": 1e-6},
                                        7),
}  # fmt: skip


@pytest.mark.parametrize("case", RADAM_CASES)
def test_radam_matches_the_authors_step_and_eval(case, data):
    lr, kwargs, sgd_phase = RADAM_CASES[case]
    lrs = lrs_per_batch(lr)
    want_y, want_lr, want_c, want_x = radam_reference(grad_fn(data), data[2], lrs, **kwargs)
    got_y, got_lr, got_c, got_x = run(ScheduleFreeRAdam(lr, **kwargs), data, lrs)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_x, want_x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_lr, want_lr, rtol=1e-6, atol=0)  # logged as float32
    np.testing.assert_allclose(got_c, want_c, rtol=1e-6, atol=0)
    if kwargs.get("silent_sgd_phase", True):  # no step, no weight, y unchanged until then
        assert np.all(got_lr[:sgd_phase] == 0) and np.all(got_c[:sgd_phase] == 0)
        np.testing.assert_array_equal(got_y[sgd_phase - 1], data[2])
    else:  # plain SGD steps at the given LR
        np.testing.assert_allclose(got_lr[:sgd_phase], lrs[:sgd_phase], rtol=1e-7)
    rect = got_lr[sgd_phase:] / lrs[sgd_phase:]  # the rectification: from near 0, rising
    assert 0 < rect[0] < rect[-1] <= 1 + 1e-6 and np.all(np.diff(rect) > -1e-6)


# -- configs and arguments ----------------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer",
    [ScheduleFreeRAdam(0.01, beta_1=0.95, beta_2=0.99, epsilon=1e-6, weight_decay=0.1, r=1.0,
                       weight_lr_power=0.0, silent_sgd_phase=False),
     ScheduleFreeWrapper(0.1, "adam", momentum=0.95, weight_decay_at_y=0.01, r=1.0),
     ScheduleFreeWrapper(0.1, functools.partial(keras.optimizers.Adam, beta_1=0.0), clipnorm=1.0)],
)  # fmt: skip
def test_get_config_round_trips(optimizer):
    config = optimizer.get_config()
    again = type(optimizer).from_config(config)
    assert again.get_config() == config
    if isinstance(optimizer, ScheduleFreeWrapper):
        assert type(again.base_optimizer) is type(optimizer.base_optimizer)
        assert again.base_optimizer.beta_1 == optimizer.base_optimizer.beta_1
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(again))
    assert type(restored) is type(optimizer) and restored.get_config() == config


@pytest.mark.parametrize(
    ("make_optimizer", "message"),
    [
        (lambda: ScheduleFreeRAdam(beta_2=0.6), r"ScheduleFreeRAdam.beta_2 must be in \(0.6, 1\)"),
        (lambda: ScheduleFreeRAdam(beta_1=0.0), "ScheduleFreeRAdam.beta_1"),
        (lambda: ScheduleFreeRAdam(silent_sgd_phase=1), "silent_sgd_phase must be True or False"),
        (lambda: ScheduleFreeRAdam(warmup_steps=10), "no warmup_steps"),
        (lambda: ScheduleFreeRAdam(weight_decay=-1.0), "ScheduleFreeRAdam.weight_decay"),
        (lambda: ScheduleFreeWrapper(momentum=0.0), "ScheduleFreeWrapper.momentum"),
        (lambda: ScheduleFreeWrapper(weight_decay_at_y=-0.1), "Wrapper.weight_decay_at_y must"),
        (lambda: ScheduleFreeWrapper(weight_decay=0.1), "Wrapper.weight_decay must not"),
        (lambda: ScheduleFreeWrapper(warmup_steps=5), "Wrapper.warmup_steps must not"),
        (lambda: ScheduleFreeWrapper(base_optimizer="lion"), "Wrapper.base_optimizer must be one"),
        (lambda: ScheduleFreeWrapper(base_optimizer=ScheduleFreeRAdam), "per-variable optimizer"),
        (lambda: ScheduleFreeWrapper(base_optimizer=functools.partial(keras.optimizers.SGD,
                                                                      clipnorm=1.0)),
         "set clipping on ScheduleFreeWrapper itself"),
    ],
)  # fmt: skip
def test_bad_arguments_name_the_parameter(make_optimizer, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer()


def test_wrapper_warns_that_keras_momentum_is_not_the_authors_torch_sgd():
    with pytest.warns(UserWarning, match=r"ScheduleFreeWrapper.base_optimizer = 'momentum' .*"
                      r"docs/parity/schedule_free_wrap.md.*@MomentumSGD"):  # fmt: skip
        ScheduleFreeWrapper(base_optimizer="momentum")
