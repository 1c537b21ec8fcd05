"""`COCOB` against a numpy transcription of Algorithm 2 of Orabona & Tommasi (2017), as
the authors' TensorFlow code writes it (`cocob_optimizer.py`, `_apply_dense`), on the
linear regression of `test_mechanic` with float64 weights `[w, b]`, batches whose
gradient is all zero, and an unused variable (no gradient). `tools/check_cocob_reference.py`
runs optax's `contrib.cocob` itself."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.optimizers import COCOB
from tests.support import regression_batches, regression_grad

STEPS = 300
ZERO_BATCHES = [0, 3, 40]  # the first batch included: L stays eps, nothing moves


def cocob_reference(grad_fn, p0, lrs, alpha=100.0, eps=1e-8, weight_decay=0.0):
    """Algorithm 2 in float64, the authors' order of operations; returns per batch the
    weights, `||w_{t+1} - w_t|| / ||grad + wd w_t||`, `||w_{t+1} - w_1||` and the counts
    of (coordinates whose gradient changed sign, coordinates whose reward was clipped)."""
    p = p0.copy()
    max_g, abs_sum, theta, reward, bet = np.full_like(p, eps), *np.zeros((4, p.size))
    previous = np.zeros_like(p)
    out, sign_changes, clipped = [], 0, 0
    for t, lr in enumerate(lrs):
        grad = grad_fn(t, p) + weight_decay * p
        g = lr * grad
        max_g = np.maximum(max_g, np.abs(g))
        abs_sum = abs_sum + np.abs(g)
        unclipped = reward - g * bet
        clipped += int(np.sum((unclipped < 0) & (reward > 0)))
        reward = np.maximum(unclipped, 0.0)
        theta = theta + g
        new_bet = -theta / (max_g * np.maximum(abs_sum + max_g, alpha * max_g)) * (reward + max_g)
        step = new_bet - bet
        p, bet = p - bet + new_bet, new_bet
        norm = np.linalg.norm(grad)
        out.append((p, np.linalg.norm(step) / norm if norm else 0.0, np.linalg.norm(bet)))
        sign_changes += int(np.sum(g * previous < 0))
        previous = np.where(g != 0, g, previous)
    weights, effective, distance = (np.array(c) for c in zip(*out, strict=True))
    return weights, effective, distance, sign_changes, clipped


@pytest.fixture(scope="module")
def problem():
    """Batches, initial weights, an LR changing every batch (float32 numbers, so the
    optimizer's float32 LR variable holds them exactly) and a per-batch loss factor (0:
    an all-zero gradient)."""
    x, y = regression_batches(STEPS)
    w0 = np.random.default_rng(3).normal(size=x.shape[-1])
    t = np.arange(STEPS)
    lrs = (0.5 + 0.5 * np.cos(t / 7.0) ** 2).astype(np.float32).astype(np.float64)
    factor = np.ones(STEPS)
    factor[ZERO_BATCHES] = 0.0
    return x.astype(np.float64), y.astype(np.float64), w0, lrs, factor


def reference_for(problem, lrs=None, **kwargs):
    x, y, w0, problem_lrs, factor = problem

    def grad(t, p):
        return factor[t] * regression_grad(p[:-1], p[-1], x[t], y[t])

    return cocob_reference(grad, np.append(w0, 0.0), problem_lrs if lrs is None else lrs,
                           **kwargs)  # fmt: skip


def run(optimizer, problem, lrs=None):
    """Applies `optimizer` to float64 `[w, b]` (and an unused variable) batch by batch,
    all batches in one traced `tf.scan`, setting its LR each batch; returns (weights,
    effective LR, distance) after each batch and the unused variable at the end."""
    x, y, w0, problem_lrs, factor = problem
    lrs = problem_lrs if lrs is None else lrs
    w, b = tf.Variable(w0, name="w"), tf.Variable(0.0, dtype=tf.float64, name="b")
    unused = tf.Variable([1.5, -2.5], dtype=tf.float64, name="unused")
    variables = [w, b, unused]
    optimizer.build(variables)

    def step(_, batch):
        lr, xb, yb, k = batch
        optimizer.learning_rate.assign(lr)
        with tf.GradientTape() as tape:
            loss = k * 0.5 * tf.reduce_mean(tf.square(tf.linalg.matvec(xb, w) + b - yb))
        optimizer.apply(tape.gradient(loss, variables), variables)
        summaries = optimizer.step_summaries()
        return (tf.concat([w, b[None]], 0), summaries["optimizer/effective_lr"],
                summaries["optimizer/distance"])  # fmt: skip

    @tf.function(autograph=False)
    def train(batches):
        start = (tf.zeros(w0.size + 1, tf.float64), tf.constant(0.0), tf.constant(0.0))
        return tf.scan(step, batches, initializer=start)

    n = len(lrs)
    out = train((lrs.astype(np.float32), x[:n], y[:n], factor[:n]))
    assert train.experimental_get_tracing_count() == 1  # no retrace, no host round trip
    return (*(o.numpy() for o in out), unused.numpy())


CASES = {
    "defaults": {},
    "alpha 10, eps 1e-6, weight decay 2^-6": {"alpha": 10.0, "eps": 1e-6, "weight_decay": 2**-6},
    "alpha 1 (G + L always wins the max)": {"alpha": 1.0},
}


@pytest.mark.filterwarnings("ignore:Gradients do not exist for variables")
@pytest.mark.parametrize("case", CASES)
def test_matches_algorithm_2_with_an_lr_changing_every_batch(problem, case):
    """Weights of every batch (zero-gradient batches, the first included), the logged
    effective LR and distance match the transcription to float64 rounding; the run
    crosses sign changes of the gradient and clips the reward at 0."""
    kwargs = CASES[case]
    expected, effective, distance, sign_changes, clipped = reference_for(problem, **kwargs)
    got, got_effective, got_distance, unused = run(COCOB(**kwargs), problem)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    # Logged as float32.
    np.testing.assert_allclose(got_effective, effective.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(got_distance, distance.astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(unused, [1.5, -2.5])
    assert sign_changes > 100 and clipped > 0, "the run misses the edge cases"
    if not kwargs.get("weight_decay"):  # an all-zero gradient moves no weight
        assert effective[ZERO_BATCHES].max() == 0 < effective.min(where=effective > 0, initial=1)
        np.testing.assert_array_equal(got[0], np.append(problem[2], 0.0))


@pytest.mark.filterwarnings("ignore:Gradients do not exist for variables")
def test_exclude_from_weight_decay_masks_the_decay_as_optax_mask(problem):
    """`exclude_from_weight_decay(var_names=["b"])`: the decay reaches `w` only."""
    x, y, w0, lrs, factor = problem
    steps, decay = 40, 0.5
    mask = np.append(np.ones_like(w0), 0.0)

    def grad(t, p):
        return factor[t] * regression_grad(p[:-1], p[-1], x[t], y[t]) + decay * mask * p

    expected = cocob_reference(grad, np.append(w0, 0.0), lrs[:steps])[0]
    optimizer = COCOB(weight_decay=decay)
    optimizer.exclude_from_weight_decay(var_names=["b"])
    got = run(optimizer, problem, lrs=lrs[:steps])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)


def test_first_step_bets_one_alphath_of_the_initial_wealth_against_the_gradient():
    """Batch 1: L = |g|, G = |g|, R = 0, so each coordinate moves by -sign(g) |g| /
    max(2|g|, alpha|g|) = -sign(g) / alpha (at any LR > 0 and any gradient scale)."""
    w = tf.Variable([1.0, -2.0, 3.0], dtype=tf.float64)
    optimizer = COCOB(learning_rate=0.25, alpha=20.0)
    optimizer.apply([tf.constant([3e4, -1e-3, 0.0], tf.float64)], [w])
    np.testing.assert_allclose(w.numpy(), [1.0 - 0.05, -2.0 + 0.05, 3.0], rtol=1e-15)


@pytest.mark.filterwarnings("ignore:Gradients do not exist for variables")
def test_a_constant_lr_changes_nothing_and_lr_0_stops(problem):
    """COCOB is invariant to the gradients' scale: LR 8 (constant) gives LR 1's
    weights up to eps; a batch at LR 0 leaves the weights and the state where they were."""
    steps = 60
    ones = np.ones(steps)
    expected = reference_for(problem, lrs=ones, eps=1e-30)[0]
    for lr in (8.0,):
        got = run(COCOB(eps=1e-30), problem, lrs=ones * lr)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-11)
    assert np.isfinite(expected).all() and not np.allclose(expected[-1], expected[0])
    lrs = ones.copy()
    lrs[30] = 0.0
    got = run(COCOB(), problem, lrs=lrs)[0]
    np.testing.assert_array_equal(got[30], got[29])
    np.testing.assert_allclose(got, reference_for(problem, lrs=lrs)[0], rtol=1e-12, atol=1e-13)


def test_get_config_round_trips():
    optimizer = COCOB(0.5, alpha=10.0, eps=1e-6, weight_decay=1e-4, clipnorm=1.0)
    config = optimizer.get_config()
    again = COCOB.from_config(config)
    assert again.get_config() == config and again.alpha == 10.0 and again.decay_rate == 1e-4
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(again))
    assert isinstance(restored, COCOB) and restored.get_config() == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 0.0}, r"COCOB.alpha must be > 0"),
        ({"eps": -1e-8}, r"COCOB.eps must be > 0"),
        ({"eps": float("nan")}, r"COCOB.eps must be a finite number"),
        ({"weight_decay": -0.1}, r"COCOB.weight_decay must be >= 0"),
        ({"learning_rate": -1.0}, r"COCOB.learning_rate must be >= 0"),
        ({"alpha": "100"}, r"COCOB.alpha must be a finite number"),
    ],
)  # fmt: skip
def test_bad_arguments_name_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        COCOB(**kwargs)
