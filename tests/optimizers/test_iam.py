"""`IAM` against a numpy transcription of step-back's `IAM.step` (`stepback/optim/iam.py`,
branch `f-iap`) on a linear regression with float64 weights `[w, b]`, an LR (the cap)
that changes every batch, zero gradients on some batches (the first included) and a
lower bound above the loss. Trainer, XLA, checkpoints, Keras fit and MirroredStrategy:
`test_parameter_free_optimizers.py` (its `parameter_free_optimizers()` entry)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lrresearch.optimizers import IAM
from tests.support import regression_batches

STEPS = 200
ZERO_GRAD_STEPS = (0, 9)


def caps() -> np.ndarray:
    """The LR per batch, rounded as the float32 LR variable holds it."""
    return np.float32(0.8 * (1 + 0.5 * np.sin(np.arange(STEPS) / 7))).astype(np.float64)


class Regression:
    """Loss `mean((X w + b - y)^2) / 2 + offset` of batch k at flat `[w, b]` and its
    gradient (zero at ZERO_GRAD_STEPS; the loss stays)."""

    def __init__(self, offset: float = 0.0):
        x, y = regression_batches(STEPS, seed=4)
        self.x, self.y, self.offset = x.astype(np.float64), y.astype(np.float64), offset
        self.x0 = np.concatenate([np.random.default_rng(5).normal(size=x.shape[-1]), [0.0]])

    def loss_grad(self, params: np.ndarray, k: int) -> tuple[float, np.ndarray]:
        residual = self.x[k] @ params[:-1] + params[-1] - self.y[k]
        loss = 0.5 * np.mean(residual**2) + self.offset
        g = np.concatenate([self.x[k].T @ residual / len(residual), [residual.mean()]])
        return loss, (0 * g if k in ZERO_GRAD_STEPS else g)


def iam_reference(problem, lrs, lmbda=9.0, lb=0.0):
    """IAM.step: z = x on the first step; dot = <g, z - x>, norm = ||g||^2; eta =
    max(f - lb + dot, 0) / norm; tau = min(lr, eta) (Python's: NaN/inf gives lr);
    z -= tau g; x = lmbda / (1 + lmbda) x + 1 / (1 + lmbda) z. Returns (x, tau)."""
    x, z, xs, taus = problem.x0.copy(), None, [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, lr in enumerate(lrs):
            f, g = problem.loss_grad(x, k)
            z = x.copy() if z is None else z
            eta = np.float64(max(f - lb + g @ (z - x), 0)) / (g @ g)
            tau = min(lr, eta)
            z = z - tau * g
            x = x * (lmbda / (1 + lmbda)) + z * (1 / (1 + lmbda))
            xs.append(x)
            taus.append(tau)
    return np.array(xs), np.array(taus)


CASES = {  # name: (our arguments, the reference's, loss offset)
    "defaults": ({}, {}, 0.0),
    "lmbda-2-shifted-loss": ({"lmbda": 2.0, "lower_bound": -1.0}, {"lmbda": 2.0, "lb": -1.0},
                             -0.5),
    "lb-above-the-loss": ({"lmbda": 0.0, "lower_bound": 0.9}, {"lmbda": 0.0, "lb": 0.9}, 0.0),
}  # fmt: skip


@pytest.fixture(scope="module")
def ours():
    """Every case's IAM on its own `[w, b]`, all in one compiled step per batch (the
    loss handed over); `{case: (x per batch, tau)}` and the step's trace count."""
    problem = Regression()
    optimizers, variables = {}, {}
    for case, (kwargs, _, _) in CASES.items():
        w = tf.Variable(problem.x0[:-1], name="w")
        b = tf.Variable(problem.x0[-1], name="b")
        optimizers[case], variables[case] = IAM(1.0, **kwargs), [w, b]
        optimizers[case].build([w, b])

    @tf.function
    def step(xb, yb, scale, lr):
        out = {}
        for case, optimizer in optimizers.items():
            w, b = variables[case]
            optimizer.learning_rate.assign(lr)
            with tf.GradientTape() as tape:
                residual = tf.linalg.matvec(xb, w) + b - yb
                loss = 0.5 * tf.reduce_mean(tf.square(residual)) + CASES[case][2]
            grads = [g * scale for g in tape.gradient(loss, [w, b])]
            optimizer.set_batch_loss(loss)
            optimizer.apply(grads, [w, b])
            out[case] = (tf.concat([w, b[None]], 0), optimizer.effective_lr + 0.0)
        return out

    lrs, batches = caps(), []
    for k in range(STEPS):
        scale = tf.constant(0.0 if k in ZERO_GRAD_STEPS else 1.0, tf.float64)
        batches.append(step(problem.x[k], problem.y[k], scale, tf.constant(lrs[k], tf.float32)))
    results = {
        case: tuple(np.array([batch[case][i].numpy() for batch in batches]) for i in range(2))
        for case in CASES
    }
    return results, step.experimental_get_tracing_count()


@pytest.mark.slow  # the fixture: ~1.5 s
@pytest.mark.parametrize("case", CASES)
def test_matches_the_authors_step(case, ours):
    _, reference_kwargs, offset = CASES[case]
    want_x, want_tau = iam_reference(Regression(offset), caps(), **reference_kwargs)
    (got_x, got_tau), traces = ours[0][case], ours[1]
    np.testing.assert_allclose(got_x, want_x, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(got_tau, want_tau, rtol=1e-11, atol=1e-15)
    assert traces == 1
    for k in ZERO_GRAD_STEPS:  # a zero gradient: tau is the cap, z does not move
        assert got_tau[k] == pytest.approx(caps()[k])
    if case == "lb-above-the-loss":  # lmbda 0: x = z; once f < lb, tau = 0: no step
        assert got_tau[-1] == 0.0 and np.all(got_x[-1] == got_x[-2])
    else:
        assert np.any(got_tau < caps() / 1.01)  # the Polyak term was the step somewhere


def test_serializes_with_its_arguments():
    import keras

    optimizer = IAM(0.5, lmbda=3.0, lower_bound=-0.2)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(again) is IAM and (again.lmbda, again.lower_bound) == (3.0, -0.2)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: IAM(lmbda=-1.0), "IAM.lmbda"),
        (lambda: IAM(lower_bound=float("inf")), "IAM.lower_bound"),
        (lambda: IAM(learning_rate=-0.1), "IAM.learning_rate"),
    ],
)
def test_bad_arguments_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()
