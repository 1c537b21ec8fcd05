"""`MoMo` and `MoMoAdam` against a numpy transcription of the authors' `Momo.step` /
`MomoAdam.step` (github.com/fabian-sp/MoMo, PyPI `momo-opt` 0.1.0) on a linear
regression with float64 weights `[w, b]`, an LR that changes every batch, zero gradients
on some batches (the first included), a lower bound above the loss and the online
estimate's reset; plus the batch loss the trainer and `ControlledModel` hand over (the
regularized loss of the applied batches, unscaled under float16 loss scaling) and the
error of plain `Model.fit`. XLA, checkpoints and MirroredStrategy:
`test_parameter_free_optimizers.py`, which runs both optimizers in the trainer."""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import ConstantController
from lrresearch.keras_fit import ControlledModel, PerBatchSummaries
from lrresearch.optimizers import MoMo, MoMoAdam
from lrresearch.optimizers.whole_step import BatchLossError
from tests.support import digit_batches, read_events, regression_batches, small_trainer

STEPS = 40
ZERO_GRAD_STEPS = (0, 9)  # the first batch, and one later


def lrs_per_batch(base: float) -> np.ndarray:
    """`base * (1 + 0.5 sin(t / 5))`, rounded as the float32 LR variable holds it."""
    return np.float32(base * (1 + 0.5 * np.sin(np.arange(STEPS) / 5))).astype(np.float64)


def momo_reference(problem, lrs, beta=0.9, weight_decay=0.0, lb=0.0, bias_correction=False,
                   use_fstar=False):  # fmt: skip
    """The authors' `Momo.step`, flat float64; returns (x per batch, tau, lb, resets)."""
    x, xs, taus, lbs, resets, initial_lb = problem.x0.copy(), [], [], [], 0, lb
    for k, lr in enumerate(lrs, start=1):
        loss, g = problem.loss_grad(x, k - 1)
        if k == 1:
            zero = not bias_correction
            loss_avg = loss if zero else 0.0
            d, gamma = (g.copy(), x @ g) if zero else (np.zeros_like(x), 0.0)
        loss_avg = beta * loss_avg + (1 - beta) * loss
        d = beta * d + (1 - beta) * g
        gamma = beta * gamma + (1 - beta) * (x @ g)
        rho = 1 - beta**k if bias_correction else 1.0
        c, dot, norm = 1 + lr * weight_decay, x @ d, d @ d
        if use_fstar:
            cap = c * loss_avg + dot - c * gamma
            if cap < c * rho * lb:
                lb, resets = max(cap / (2 * c * rho), initial_lb), resets + 1
        nom = c * (loss_avg - rho * lb) + dot - c * gamma
        t1 = max(nom, 0.0) / norm if norm else np.inf  # torch: inf or NaN, then min()
        tau = min(lr / rho, t1)
        if use_fstar:
            lb = max((loss_avg + dot - gamma - 0.5 * tau * norm) / rho, initial_lb)
        x = (x - tau * d) / c
        xs.append(x), taus.append(tau), lbs.append(lb)
    return np.array(xs), np.array(taus), np.array(lbs), resets


def momo_adam_reference(problem, lrs, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                        weight_decay=0.0, lb=0.0, divide=True, use_fstar=False):  # fmt: skip
    """The authors' `MomoAdam.step`, flat float64; returns (x per batch, tau, lb, resets)."""
    x, xs, taus, lbs, resets, initial_lb = problem.x0.copy(), [], [], [], 0, lb
    d, v, gamma, loss_avg = np.zeros_like(x), np.zeros_like(x), 0.0, 0.0
    for k, lr in enumerate(lrs, start=1):
        loss, g = problem.loss_grad(x, k - 1)
        d = beta_1 * d + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        gamma = beta_1 * gamma + (1 - beta_1) * (x @ g)
        denominator = np.sqrt(v / (1 - beta_2**k)) + epsilon
        dot, norm = x @ d, d @ (d / denominator)
        loss_avg = (1 - beta_1) * loss + beta_1 * loss_avg
        rho, c = 1 - beta_1**k, 1 + lr * weight_decay
        if use_fstar:
            cap = c * loss_avg + dot - c * gamma
            if cap < c * rho * lb:
                lb, resets = max(cap / (2 * c * rho), initial_lb), resets + 1
        nom = c * (loss_avg - rho * lb) + dot - c * gamma
        t1 = max(nom, 0.0) / norm if norm else np.inf
        tau = min(lr / rho, t1)
        if use_fstar:
            lb = max((loss_avg + dot - gamma - 0.5 * tau * norm) / rho, initial_lb)
        if weight_decay > 0 and not divide:
            x = x * (1 - weight_decay * lr)
        x = x - tau * (d / denominator)
        if weight_decay > 0 and divide:
            x = x / c
        xs.append(x), taus.append(tau), lbs.append(lb)
    return np.array(xs), np.array(taus), np.array(lbs), resets


class Regression:
    """Loss `mean((X w + b - y)^2) / 2 + offset` of batch k at flat `[w, b]`, and its
    gradient (zero at ZERO_GRAD_STEPS; the loss stays)."""

    def __init__(self, offset: float = 0.0):
        x, y = regression_batches(STEPS)
        self.x, self.y, self.offset = x.astype(np.float64), y.astype(np.float64), offset
        self.x0 = np.concatenate([np.random.default_rng(3).normal(size=x.shape[-1]), [0.0]])

    def loss_grad(self, params: np.ndarray, k: int) -> tuple[float, np.ndarray]:
        residual = self.x[k] @ params[:-1] + params[-1] - self.y[k]
        loss = 0.5 * np.mean(residual**2) + self.offset
        g = np.concatenate([self.x[k].T @ residual / len(residual), [residual.mean()]])
        return loss, (0 * g if k in ZERO_GRAD_STEPS else g)


# name: (class, base LR, our arguments, the reference's, loss offset)
CASES = {
    "momo-defaults": (MoMo, 1.0, {}, {}, 0.0),
    "momo-bias-correction-beta-decay": (
        MoMo, 5.0, {"beta": 0.6, "bias_correction": True, "weight_decay": 0.02},
        {"beta": 0.6, "bias_correction": True, "weight_decay": 0.02}, 0.0),
    # The loss falls below the lower bound: the model asks for no step (tau = 0).
    "momo-loss-below-lb": (MoMo, 1.0, {"lower_bound": 0.6}, {"lb": 0.6}, 0.0),
    # A loss shifted down by 2, lb from -3: the estimate rises, and resets when the
    # model's value falls below it.
    "momo-fstar-resets": (
        MoMo, 2.0, {"use_fstar": True, "bias_correction": True, "lower_bound": -3.0},
        {"use_fstar": True, "bias_correction": True, "lb": -3.0}, -2.0),
    "adam-defaults": (MoMoAdam, 0.1, {}, {}, 0.0),
    "adam-all-fstar-resets": (
        MoMoAdam, 0.3,
        {"beta_1": 0.7, "beta_2": 0.99, "epsilon": 1e-6, "weight_decay": 0.05,
         "divide": False, "use_fstar": True, "lower_bound": -3.0},
        {"beta_1": 0.7, "beta_2": 0.99, "epsilon": 1e-6, "weight_decay": 0.05,
         "divide": False, "use_fstar": True, "lb": -3.0}, -2.0),
}  # fmt: skip


@pytest.fixture(scope="module")
def ours():
    """Every case's optimizer on its own `[w, b]`, all in one compiled step per batch
    (the loss handed over); `{case: (x per batch, tau, lb)}` and the step's trace count.
    (XLA: `test_parameter_free_optimizers.py`, which runs both in the trainer.)"""
    problem = Regression()
    optimizers, variables = {}, {}
    for case, (cls, lr, kwargs, _, _) in CASES.items():
        w = tf.Variable(problem.x0[:-1], name="w")
        b = tf.Variable(problem.x0[-1], name="b")
        optimizers[case], variables[case] = cls(lr, **kwargs), [w, b]
        optimizers[case].build([w, b])

    @tf.function
    def step(xb, yb, scale, lrs):
        out = {}
        for i, (case, optimizer) in enumerate(optimizers.items()):
            w, b = variables[case]
            optimizer.learning_rate.assign(lrs[i])
            with tf.GradientTape() as tape:
                residual = tf.linalg.matvec(xb, w) + b - yb
                loss = 0.5 * tf.reduce_mean(tf.square(residual)) + CASES[case][4]
            grads = [g * scale for g in tape.gradient(loss, [w, b])]
            optimizer.set_batch_loss(loss)
            optimizer.apply(grads, [w, b])
            lb = tf.convert_to_tensor(optimizer.lb)
            out[case] = (tf.concat([w, b[None]], 0), optimizer.effective_lr + 0.0, lb)
        return out

    lrs = np.stack([lrs_per_batch(CASES[case][1]) for case in CASES], axis=1)
    batches = []
    for k in range(STEPS):
        scale = tf.constant(0.0 if k in ZERO_GRAD_STEPS else 1.0, tf.float64)
        batches.append(step(problem.x[k], problem.y[k], scale, tf.constant(lrs[k], tf.float32)))
    results = {
        case: tuple(np.array([batch[case][i].numpy() for batch in batches]) for i in range(3))
        for case in CASES
    }
    return results, step.experimental_get_tracing_count()


@pytest.mark.slow  # the fixture: ~1.5 s
@pytest.mark.parametrize("case", CASES)
def test_matches_the_authors_step(case, ours):
    cls, lr, kwargs, reference_kwargs, offset = CASES[case]
    lrs = lrs_per_batch(lr)
    reference = momo_reference if cls is MoMo else momo_adam_reference
    want_x, want_tau, want_lb, resets = reference(Regression(offset), lrs, **reference_kwargs)
    (got_x, got_tau, got_lb), traces = ours[0][case], ours[1]
    np.testing.assert_allclose(got_x, want_x, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(got_tau, want_tau, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(got_lb, want_lb, rtol=1e-11, atol=1e-12)
    assert traces == 1  # traced once, every batch in it
    beta = kwargs.get("beta", kwargs.get("beta_1", 0.9))
    corrected = cls is MoMoAdam or kwargs.get("bias_correction", False)
    caps = lrs / (1 - beta ** np.arange(1, STEPS + 1) if corrected else 1.0)
    assert got_tau[0] == pytest.approx(caps[0])  # zero momentum: tau = lr / rho
    assert np.all(got_tau <= caps * (1 + 1e-12))
    assert np.any(got_tau < caps / 1.01)  # the Polyak term was the step somewhere
    if case == "momo-loss-below-lb":
        assert got_tau[-1] == 0.0 and np.all(got_x[-1] == got_x[-2])  # no step once below
    if "resets" in case:
        assert resets > 0 and got_lb.max() > -3.0


def test_plain_keras_fit_is_refused_naming_the_fix():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=MoMo(), loss="mse")
    with pytest.raises(BatchLossError, match="ControlledModel") as raised:
        model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0)
    assert "lrresearch train" in str(raised.value) and "MoMo" in str(raised.value)


def regularized_mlp(input_shape, num_classes, hidden=(8,)):
    """An MLP whose loss has a regularization term (`model.losses`), which the loss
    handed to MoMo must include as the gradient does."""
    layers = [keras.Input(tuple(input_shape)), keras.layers.Flatten()]
    layers += [keras.layers.Dense(h, "relu", kernel_regularizer=keras.regularizers.L2(0.05))
               for h in hidden]  # fmt: skip
    return keras.Sequential([*layers, keras.layers.Dense(num_classes)])


def loss_average(losses: np.ndarray, skipped: tuple[int, ...] = ()) -> list[float]:
    """MoMo's `loss_avg` after each batch (beta 0.9, starting at the first loss) over
    the applied batches' losses; a skipped batch keeps the previous value."""
    average, out = None, []
    for t, loss in enumerate(losses.astype(np.float64)):
        if t not in skipped:
            average = loss if average is None else 0.9 * average + 0.1 * loss
        out.append(average)
    return out


@pytest.mark.slow
def test_the_trainer_hands_over_the_regularized_unscaled_loss():
    """Under float16 loss scaling (scale 2^15): the loss, not the scaled one."""
    trainer = small_trainer(
        optimizer=MoMo, controller=ConstantController(1.0), model=regularized_mlp,
        mixed_precision="mixed_float16", build=True,
    )  # fmt: skip
    x, y = digit_batches(6)

    @tf.function
    def step(xb, yb):
        loss = trainer.train_step(xb, yb)[0]  # the loss the signals see (`loss/batch`)
        return loss, trainer.optimizer.loss_avg + 0.0

    losses, averages = np.array([step(x[t], y[t]) for t in range(6)]).T
    assert trainer.model.losses  # the regularization, part of the loss
    assert float(trainer.loss_scale.scale.numpy()) == 2.0**15
    np.testing.assert_allclose(averages, loss_average(losses), rtol=2e-6)


@pytest.mark.slow
def test_controlled_model_hands_over_the_loss_of_applied_batches(tmp_path):
    keras.utils.set_random_seed(0)
    model = ControlledModel(regularized_mlp((8, 8, 1), 10), ConstantController(1.0))
    model.compile(
        optimizer=MoMo(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=8,
    )
    x, y = digit_batches(8)
    x[5] = np.nan  # a skipped batch (the guard): its NaN loss must not reach MoMo
    summaries = PerBatchSummaries(str(tmp_path))
    model.fit(
        tf.data.Dataset.from_tensor_slices((x, y)), verbose=0, shuffle=False, callbacks=[summaries]
    )
    summaries.close()
    assert int(model.guard.skipped.numpy()) == 1
    events = read_events(tmp_path)  # recomputed from the event files
    want = loss_average(events.scalar("loss/batch"), skipped=(5,))
    np.testing.assert_allclose(events.scalar("optimizer/loss_avg"), want, rtol=2e-6)


def test_serializes_with_its_arguments():
    for optimizer in (MoMo(2.0, beta=0.8, use_fstar=True, lower_bound=-1.0),
                      MoMoAdam(weight_decay=0.1, divide=False)):  # fmt: skip
        config = optimizer.get_config()
        again = type(optimizer).from_config(config)
        assert again.get_config() == config


@pytest.mark.parametrize(
    "make, message",
    [
        (functools.partial(MoMo, beta=1.5), r"MoMo.beta must be in \[0, 1\], got 1.5"),
        (functools.partial(MoMoAdam, beta_2=1.0), r"MoMoAdam.beta_2 must be in \[0, 1\)"),
        (functools.partial(MoMo, weight_decay=-1), r"MoMo.weight_decay must be >= 0"),
        (functools.partial(MoMo, use_fstar=1), r"MoMo.use_fstar must be True or False"),
    ],
)
def test_bad_arguments_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()
