"""`Trainer.weight_averaging = 'ema'`: each warmup rule against a numpy transcription of
its reference (Keras's `use_ema`, optax's `ema(debias=True)`, TF's
`ExponentialMovingAverage(num_updates)`) over many steps, in-graph under XLA; Keras's own
optimizer EMA; a trainer that evaluates and checkpoints the average and
resumes exactly; the bindings checked."""

from __future__ import annotations

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import ConstantController
from lrresearch.step import averaging
from lrresearch.step.averaging import EMA
from tests.support import small_trainer

DECAY = 0.9


def reference(warmup: str, x0: np.ndarray, iterates: list[np.ndarray], decay: float):
    """The average after each iterate, in float64, written from each reference's code."""
    out = []
    if warmup == "keras":  # base_optimizer._update_model_variables_moving_average
        average = None
        for iterations, x in enumerate(iterates):  # iterations = 0 on the first update
            momentum = decay * (iterations != 0)
            average = x if average is None else momentum * average + (1 - momentum) * x
            out.append(average)
    elif warmup == "debias":  # optax ema: ema_0 = 0, update_moment, bias_correction
        ema = np.zeros_like(x0)
        for count, x in enumerate(iterates, start=1):
            ema = (1 - decay) * x + decay * ema
            out.append(ema / (1 - decay**count))
    else:  # tf.train.ExponentialMovingAverage: shadow from x_0, decay ramped by num_updates
        shadow = x0
        for num_updates, x in enumerate(iterates, start=1):
            d = min(decay, (1.0 + num_updates) / (10.0 + num_updates))
            shadow = shadow - (1 - d) * (shadow - x)
            out.append(shadow)
    return out


@pytest.mark.parametrize("warmup", ["keras", "debias", "num_updates"])
def test_each_warmup_matches_its_reference_over_many_steps(warmup):
    rng = np.random.default_rng(3)
    steps, shape = 300, (4, 3)
    iterates = list(rng.normal(size=(steps, *shape)).cumsum(axis=0) * 0.1)
    x0 = rng.normal(size=shape)
    weights = tf.Variable(x0.astype(np.float32))
    seed = tf.Variable(7, dtype=tf.int64)  # an integer state: copied, not averaged
    ema = EMA([weights, seed], decay=DECAY, warmup=warmup)

    @tf.function(autograph=False, jit_compile=True)  # in-graph, under XLA
    def step(x):
        weights.assign(x)
        seed.assign_add(1)
        ema.update()
        return ema.average[0].read_value()

    got = [step(tf.constant(x, tf.float32)).numpy() for x in iterates]
    assert step.experimental_get_tracing_count() == 1
    want = reference(warmup, x0.astype(np.float32).astype(np.float64), iterates, DECAY)
    for t in (0, 1, 2, 9, 50, steps - 1):
        np.testing.assert_allclose(got[t], want[t], rtol=1e-5, atol=1e-6, err_msg=f"t={t}")
    assert int(ema.average[1].numpy()) == 7 + steps


def test_keras_rule_equals_keras_optimizer_use_ema():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(60, 5)).astype(np.float32)
    weights = tf.Variable(rng.normal(size=5).astype(np.float32))
    optimizer = keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=DECAY)
    optimizer.build([weights])
    ours = EMA([weights], decay=DECAY, warmup="keras")
    for g in grads:
        optimizer.apply([tf.constant(g)], [weights])
        ours.update()
    keras_average = optimizer._model_variables_moving_average[0].numpy()
    np.testing.assert_allclose(ours.average[0].numpy(), keras_average, rtol=1e-5)


@pytest.mark.parametrize(
    "kind,gamma,message",
    [
        ("ema", 8.0, "Trainer.weight_averaging = 'ema' and Trainer.polynomial_averaging"),
        ("polynomial", None, "needs its gamma: set Trainer.polynomial_averaging"),
        ("swa", None, "Trainer.weight_averaging must be 'polynomial', 'ema' or None"),
    ],
)
def test_conflicting_or_bad_bindings_are_named(kind, gamma, message):
    with pytest.raises(ValueError, match=message):
        averaging.make(kind, gamma, [])


@pytest.mark.parametrize(
    "kwargs,message", [(dict(decay=1.0), "EMA.decay"), (dict(warmup="linear"), "EMA.warmup")]
)
def test_bad_ema_arguments_name_the_binding(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EMA([], **kwargs)


def test_polynomial_averaging_alone_still_means_polynomial():
    assert isinstance(averaging.make(None, 8.0, []), averaging.PolynomialAverager)
    assert isinstance(averaging.make("polynomial", 8.0, []), averaging.PolynomialAverager)
    assert averaging.make(None, None, []) is None


# -- in a trainer ---------------------------------------------------------------------

EMA_TRAINER = dict(
    steps=30, controller=ConstantController(0.3), steps_per_loop=1, weight_averaging="ema",
)  # fmt: skip


def weights(trainer) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in trainer.model.variables]


def numpy_eval(params: list[np.ndarray], data) -> float:
    """The mean cross-entropy of `mlp(hidden=(8,))` with `params` over `data`, in numpy."""
    kernel, bias, out_kernel, out_bias = (p.astype(np.float64) for p in params)
    losses = []
    for x, y in data:
        h = np.maximum(x.numpy().reshape(len(x), -1) @ kernel + bias, 0.0)
        logits = h @ out_kernel + out_bias
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        losses.append(-log_p[np.arange(len(y)), y.numpy()])
    return float(np.concatenate(losses).mean())


@pytest.fixture(scope="module")
def ema_runs(tmp_path_factory):
    """A trainer with `EMA(num_updates)` stepped one batch at a time, its weights
    before training and after every batch; checkpointed at batch 10; a second trainer
    restored there and stepped as far."""

    def build():
        trainer = small_trainer(eval_every=1, **EMA_TRAINER)  # gin cleared: then bound
        gin.bind_parameter("EMA.decay", DECAY)
        gin.bind_parameter("EMA.warmup", "num_updates")
        try:
            trainer.build()
        finally:
            gin.clear_config()
        return trainer

    a = build()
    history = [weights(a)]
    path = None
    for t in range(20):
        a.run_steps(1)
        history.append(weights(a))
        if t == 9:
            with a.eval_weights():
                path = a.checkpoint.save(str(tmp_path_factory.mktemp("ema") / "ckpt"))
    b = build()
    b.checkpoint.restore(path).assert_consumed()
    b.after_restore()
    b.run_steps(10)
    return a, b, history


@pytest.mark.slow
def test_a_trainer_averages_in_graph_and_evaluates_the_average(ema_runs):
    a, _, history = ema_runs
    assert isinstance(a.averager, EMA) and a.averager.warmup == "num_updates"
    flat = [[w.astype(np.float64) for w in ws] for ws in history]
    want = [
        reference("num_updates", flat[0][i], [ws[i] for ws in flat[1:]], DECAY)[-1]
        for i in range(len(flat[0]))
    ]
    for got, expected in zip(a.averager.average, want, strict=True):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    before = weights(a)
    evals = a.evaluation()  # what the outer loop logs as eval/loss
    np.testing.assert_array_equal(weights(a)[0], before[0])  # swapped back, bit for bit
    assert evals["loss"] == pytest.approx(numpy_eval(want, a.eval_dataset), rel=1e-5)
    assert evals["loss"] != pytest.approx(numpy_eval(before, a.eval_dataset), rel=1e-3)


@pytest.mark.slow
def test_a_checkpoint_holds_the_average_and_resumes_exactly(ema_runs):
    a, b, _ = ema_runs
    for x, y in zip(weights(a), weights(b), strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.averager.average, b.averager.average, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert int(b.averager.t.numpy()) == 20
