"""`Mechanic` against a numpy transcription of the authors' `mechanic_pytorch._step`
(PyPI `mechanic-pytorch` 0.0.1), on the linear regression of `test_adaptive` with
float64 weights `[w, b]` and an LR that changes every batch; the base optimizers are
written out as Keras computes them (SGD; Adam and AdamW with `epsilon` added to
`sqrt(v)` and betas float32 holds exactly: Keras rounds them through float32 in its bias
correction). `tools/check_mechanic_reference.py` runs the authors' PyTorch code itself."""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.optimizers import Mechanic, WholeStepOptimizer
from tests.support import regression_batches, regression_grad

STEPS = 120
BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)
ADAM = {"beta_1": 0.875, "beta_2": 1 - 2.0**-10, "epsilon": 1e-7}
WEIGHT_DECAY = 2.0**-6


def base_step(base, p, g, lr, t, state):
    """Keras's SGD / Adam / AdamW on the flat vector `p` at step `t` (from 1)."""
    if base == "sgd":
        return p - lr * g
    b1, b2, eps = ADAM["beta_1"], ADAM["beta_2"], ADAM["epsilon"]
    if base == "adamw":
        p = p - p * WEIGHT_DECAY * lr
    state["m"] = state["m"] + (g - state["m"]) * (1 - b1)
    state["v"] = state["v"] + (g * g - state["v"]) * (1 - b2)
    alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    return p - alpha * state["m"] / (np.sqrt(state["v"]) + eps)


def mechanic_reference(grad_fn, p0, lrs, base="sgd", s_decay=0.01, betas=BETAS, s_init=1e-8,
                       eps=1e-8, store_delta=False):  # fmt: skip
    """`_step` of mechanic_pytorch in float64: returns (weights, s * lr, sum s) per step."""
    betas, n = np.array(betas), len(betas)
    p, ref = p0.copy(), p0.copy()
    stored = np.zeros_like(p)
    s, m, v, r = np.zeros(n), np.full(n, 1e-6), np.zeros(n), np.zeros(n)
    state = {"m": np.zeros_like(p), "v": np.zeros_like(p)}
    out = []
    for t, lr in enumerate(lrs):
        g = grad_fn(t, p)
        after = base_step(base, p, g, lr, t + 1, state)
        total = s.sum()
        delta = stored if store_delta else (p - ref) / (total + eps)
        decay = s_decay * total * np.linalg.norm(g) / (np.linalg.norm(after) + eps)
        h = delta @ (g + decay * after)
        stored = delta + (after - p)
        m = np.maximum(betas * m, abs(h))
        v = betas**2 * v + h * h
        r = np.maximum(betas * r - s * h, 0.0)
        s = (m * s_init / n + r) / (np.sqrt(v) + eps)
        p = ref + stored * max(s.sum(), 0.0)
        out.append((p, s.sum() * lr, s.sum()))
    return tuple(np.array(column) for column in zip(*out, strict=True))


@pytest.fixture(scope="module")
def problem():
    """Batches, initial weights, an LR changing every batch (float32 numbers, so the
    optimizer's float32 LR variable holds them exactly) and a per-batch loss factor
    (0 on batches 3 and 40: an all-zero gradient)."""
    x, y = regression_batches(STEPS)
    w0 = np.random.default_rng(2).normal(size=x.shape[-1])
    t = np.arange(STEPS)
    lrs = (0.5 + 0.5 * np.cos(t / 7.0) ** 2).astype(np.float32).astype(np.float64)
    factor = np.ones(STEPS)
    factor[[3, 40]] = 0.0
    return x.astype(np.float64), y.astype(np.float64), w0, lrs, factor


def reference_for(problem, **kwargs):
    x, y, w0, lrs, factor = problem

    def grad(t, p):
        return factor[t] * regression_grad(p[:-1], p[-1], x[t], y[t])

    return mechanic_reference(grad, np.append(w0, 0.0), lrs, **kwargs)


def run(optimizer, problem, jit_compile=False, steps=STEPS):
    """Applies `optimizer` to float64 `[w, b]` batch by batch, setting its LR each batch;
    returns (weights, effective LR, scale) after each batch."""
    x, y, w0, lrs, factor = problem
    w, b = tf.Variable(w0, name="w"), tf.Variable(0.0, dtype=tf.float64, name="b")
    # Not built here: `apply` builds it while `step` is traced, as Keras's fit does.

    @tf.function(jit_compile=jit_compile)
    def step(lr, xb, yb, k):
        optimizer.learning_rate.assign(lr)
        with tf.GradientTape() as tape:
            loss = k * 0.5 * tf.reduce_mean(tf.square(tf.linalg.matvec(xb, w) + b - yb))
        optimizer.apply(tape.gradient(loss, [w, b]), [w, b])
        summaries = optimizer.step_summaries()
        return (tf.concat([w, b[None]], 0), summaries["optimizer/effective_lr"],
                summaries["optimizer/scale"])  # fmt: skip

    out = [step(np.float32(lrs[t]), x[t], y[t], factor[t]) for t in range(steps)]
    # tf.function traces a function that creates variables twice, then never again.
    assert step.experimental_get_tracing_count() == 2
    return tuple(np.array([o[i].numpy() for o in out]) for i in range(3))


CASES = {
    "sgd, defaults": ({}, {}),
    "sgd, s_decay 0.1, store_delta": ({"s_decay": 0.1, "store_delta": True}, {}),
    "sgd, s_decay 0, two betas, s_init 1e-6, eps 1e-6": (
        {"s_decay": 0.0, "betas": (0.9, 0.99), "s_init": 1e-6, "eps": 1e-6}, {}),
    "adam": ({"base_optimizer": functools.partial(keras.optimizers.Adam, **ADAM)},
             {"base": "adam"}),
    "adamw, store_delta": (
        {"base_optimizer": functools.partial(keras.optimizers.AdamW, **ADAM,
                                             weight_decay=WEIGHT_DECAY), "store_delta": True},
        {"base": "adamw", "store_delta": True}),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_matches_the_reference_with_an_lr_changing_every_batch(problem, case):
    """Weights, `optimizer/effective_lr` and `optimizer/scale` of every batch, zero-gradient
    batches included, match the transcription (float64: to rounding)."""
    ours, extra = CASES[case]
    reference = {k: v for k, v in ours.items() if k != "base_optimizer"} | extra
    expected = reference_for(problem, **reference)
    got = run(Mechanic(1.0, **ours), problem)
    # Float64 rounding differences grow late in the Adam runs (to ~1e-11 of the largest
    # weight by batch 120): hence an absolute tolerance of 1e-9 (weights are O(1)).
    for name, g, e in zip(("weights", "effective_lr", "scale"), got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-9 if name == "weights" else 0,
                                   err_msg=name)  # fmt: skip
    assert expected[2].max() > 100 * expected[2][0], "s never grew: the test is too short"


def test_first_step_scales_the_base_update_by_the_initial_s(problem):
    """Step 1: h = 0, so s_i = beta_i * 1e-6 * s_init / n / eps and the weights move by
    sum(s) times SGD's step."""
    x, y, w0, lrs, _ = problem
    weights, effective_lr, scale = run(Mechanic(1.0), problem, steps=1)
    s = sum(BETAS) * 1e-6 * 1e-8 / len(BETAS) / 1e-8
    g = regression_grad(w0, 0.0, x[0], y[0])
    np.testing.assert_allclose(weights[0], np.append(w0, 0.0) - s * lrs[0] * g, rtol=1e-12)
    np.testing.assert_allclose([effective_lr[0], scale[0]], [s * lrs[0], s], rtol=1e-12)


def test_reference_point_is_the_weights_the_first_batch_starts_from():
    """`x_ref` is copied at the first update (weights set after build, e.g. loaded, are
    the reference, as in the authors' lazily created state), never later."""
    w = tf.Variable([1.0, 2.0], dtype=tf.float64)
    optimizer = Mechanic(1.0)
    optimizer.build([w])
    w.assign([3.0, -1.0])
    grad = [tf.constant([0.5, -0.25], tf.float64)]
    optimizer.apply(grad, [w])
    optimizer.apply(grad, [w])
    np.testing.assert_array_equal(optimizer.x_ref[0].numpy(), [3.0, -1.0])
    assert not np.array_equal(w.numpy(), [3.0, -1.0])


def test_xla_gives_the_weights_of_the_plain_graph(problem):
    make = functools.partial(Mechanic, 1.0, base_optimizer="adam", store_delta=True)
    plain = run(make(), problem, steps=30)
    compiled = run(make(), problem, jit_compile=True, steps=30)
    for g, e in zip(compiled, plain, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)


def test_checkpoint_saves_and_restores_the_base_optimizers_slots(problem, tmp_path):
    """`tf.train.Checkpoint(optimizer=mechanic)` holds the base's moments and iterations
    with Mechanic's x_ref and tuner state: a new Mechanic restores every one of them."""
    w0 = problem[2]
    first = Mechanic(1.0, base_optimizer="adam")
    run(first, problem, steps=5)
    path = tf.train.Checkpoint(optimizer=first).save(str(tmp_path / "ckpt"))
    second = Mechanic(1.0, base_optimizer="adam")
    second.build([tf.Variable(w0 * 0), tf.Variable(0.0, dtype=tf.float64)])
    tf.train.Checkpoint(optimizer=second).restore(path).assert_existing_objects_matched()
    assert int(second.base_optimizer.iterations.numpy()) == 5
    for mine, theirs in ((first, second), (first.base_optimizer, second.base_optimizer)):
        for a, b in zip(mine.variables, theirs.variables, strict=True):
            np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.path)
    assert np.abs(second.base_optimizer.variables[-1].numpy()).max() > 0  # Adam's v


def test_get_config_round_trips():
    adam = functools.partial(keras.optimizers.Adam, beta_1=0.5)
    for optimizer in (
        Mechanic(0.5, base_optimizer="momentum", s_decay=0.0, betas=(0.9,), store_delta=True),
        Mechanic(1.0, base_optimizer=adam, s_init=1e-6, eps=1e-7, clipnorm=1.0),
    ):
        config = optimizer.get_config()
        again = Mechanic.from_config(config)
        assert again.get_config() == config
        assert type(again.base_optimizer) is type(optimizer.base_optimizer)
    assert again.base_optimizer.beta_1 == 0.5
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(again))
    assert isinstance(restored, Mechanic) and restored.get_config() == again.get_config()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"s_decay": -1.0}, r"Mechanic.s_decay must be >= 0"),
        ({"s_init": 0.0}, r"Mechanic.s_init must be > 0"),
        ({"eps": float("nan")}, r"Mechanic.eps must be a finite number"),
        ({"betas": ()}, r"Mechanic.betas must be a non-empty list"),
        ({"betas": (0.9, 1.5)}, r"Mechanic.betas must each be in \[0, 1\]"),
        ({"store_delta": 1}, r"Mechanic.store_delta must be True or False"),
        ({"weight_decay": 0.1}, r"Mechanic.weight_decay must be None"),
        ({"base_optimizer": "lion"}, r"Mechanic.base_optimizer must be one of"),
        ({"base_optimizer": keras.optimizers.Adam()}, r"not an instance"),
        ({"base_optimizer": WholeStepOptimizer}, r"per-variable optimizer"),
        ({"base_optimizer": functools.partial(keras.optimizers.SGD, clipnorm=1.0)},
         r"must not set clipnorm"),
    ],
)  # fmt: skip
def test_bad_arguments_name_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Mechanic(**kwargs)
