"""`ScheduleController` against numpy transcriptions of the rules Keras documents for its
schedules (over every batch, past each schedule's horizon), against the LR a Keras
optimizer holding the same schedule applies, and a user's own schedule through gin,
trained, its `lr` tag read back with TensorBoard's loader."""

from __future__ import annotations

import bisect
import json
import math

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from lrresearch import controllers as ctl
from lrresearch.controllers.base import deserialize_controller, serialize_controller
from lrresearch.controllers.signals import make_signals
from tests.support import train

S = keras.optimizers.schedules
STEPS = 700  # past every horizon below
RTOL = 1e-5  # Keras computes in float32, the references in float64
# Where a cosine nears its end, 1 + cos(pi x) cancels in float32: the error there is
# absolute, within a float32 rounding (2^-23 relative) of the schedule's peak.
ATOL_OF_PEAK = 2.0**-23


# -- numpy transcriptions of the Keras docstrings' rules -------------------------------


def cosine_decay(t, initial, decay_steps, alpha=0.0, warmup_target=None, warmup_steps=0):
    def decay(s, start):
        s = min(s, decay_steps)
        return start * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * s / decay_steps)) + alpha)

    if warmup_target is None:
        return decay(t, initial)
    if t < warmup_steps:
        return initial + (warmup_target - initial) * t / warmup_steps
    return decay(t - warmup_steps, warmup_target)


def exponential(t, initial, decay_steps, rate, staircase=False):
    p = t / decay_steps
    return initial * rate ** (math.floor(p) if staircase else p)


def piecewise(t, boundaries, values):
    # values[0] up to and including boundaries[0], values[i] on (b[i-1], b[i]].
    return values[bisect.bisect_left(boundaries, t)]


def polynomial(t, initial, decay_steps, end, power=1.0, cycle=False):
    if cycle:
        span = decay_steps * max(1, math.ceil(t / decay_steps))
    else:
        span, t = decay_steps, min(t, decay_steps)
    return (initial - end) * (1 - t / span) ** power + end


def inverse_time(t, initial, decay_steps, rate, staircase=False):
    p = t / decay_steps
    return initial / (1 + rate * (math.floor(p) if staircase else p))


def restarts(t, initial, first_decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0):
    """SGDR walked cycle by cycle: cycle i lasts first * t_mul**i batches and peaks at
    m_mul**i; the multiplier decays from its peak to `alpha` by cosine."""
    start, length, cycle = 0.0, float(first_decay_steps), 0
    while t >= start + length:
        start, length, cycle = start + length, length * t_mul, cycle + 1
    cosine = 0.5 * m_mul**cycle * (1 + math.cos(math.pi * (t - start) / length))
    return initial * ((1 - alpha) * cosine + alpha)


CASES = {
    "CosineDecay-warmup": (
        lambda: S.CosineDecay(0.0, 400, alpha=0.1, warmup_target=0.2, warmup_steps=50),
        lambda t: cosine_decay(t, 0.0, 400, 0.1, 0.2, 50),
    ),
    "CosineDecay": (lambda: S.CosineDecay(0.1, 500), lambda t: cosine_decay(t, 0.1, 500)),
    "ExponentialDecay-staircase": (
        lambda: S.ExponentialDecay(0.1, 40, 0.7, staircase=True),
        lambda t: exponential(t, 0.1, 40, 0.7, True),
    ),
    "ExponentialDecay": (
        lambda: S.ExponentialDecay(0.3, 100, 0.5),
        lambda t: exponential(t, 0.3, 100, 0.5),
    ),
    "PiecewiseConstantDecay": (
        lambda: S.PiecewiseConstantDecay([100, 250, 400], [0.1, 0.05, 0.02, 0.005]),
        lambda t: piecewise(t, [100, 250, 400], [0.1, 0.05, 0.02, 0.005]),
    ),
    "PolynomialDecay": (
        lambda: S.PolynomialDecay(0.1, 300, 0.001, power=2.0),
        lambda t: polynomial(t, 0.1, 300, 0.001, 2.0),
    ),
    "PolynomialDecay-cycle": (
        lambda: S.PolynomialDecay(0.1, 150, 0.01, power=0.5, cycle=True),
        lambda t: polynomial(t, 0.1, 150, 0.01, 0.5, True),
    ),
    "InverseTimeDecay-staircase": (
        lambda: S.InverseTimeDecay(0.1, 30, 0.5, staircase=True),
        lambda t: inverse_time(t, 0.1, 30, 0.5, True),
    ),
    "CosineDecayRestarts": (
        lambda: S.CosineDecayRestarts(0.1, 40, t_mul=2.0, m_mul=0.8, alpha=0.05),
        lambda t: restarts(t, 0.1, 40, 2.0, 0.8, 0.05),
    ),
    "CosineDecayRestarts-t_mul-1": (
        lambda: S.CosineDecayRestarts(0.1, 60, t_mul=1.0, m_mul=0.9),
        lambda t: restarts(t, 0.1, 60, 1.0, 0.9),
    ),
}


def in_graph(controller: ctl.Controller, steps: int = STEPS) -> np.ndarray:
    """The LR of batches 0..steps-1, all computed inside ONE traced function (a
    `tf.while_loop` over the int64 step, as the compiled loop runs it): no host read
    per batch, traced once."""

    @tf.function(autograph=False)
    def lrs() -> tf.Tensor:
        def one(t):
            return controller.compute(make_signals(t, 1.0)).lr

        return tf.map_fn(one, tf.range(steps, dtype=tf.int64), fn_output_signature=tf.float32)

    out = lrs().numpy()
    assert lrs.experimental_get_tracing_count() == 1
    lrs()
    assert lrs.experimental_get_tracing_count() == 1  # no retrace on a second call
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_schedule_matches_its_documented_rule_past_the_horizon(name):
    make, reference = CASES[name]
    controller = ctl.ScheduleController(make())
    expected = np.array([reference(t) for t in range(STEPS)])
    lrs = in_graph(controller)
    assert lrs.dtype == np.float32
    np.testing.assert_allclose(lrs, expected, rtol=RTOL, atol=ATOL_OF_PEAK * expected.max())
    assert controller.initial_lr == pytest.approx(expected[0], rel=RTOL, abs=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_lr_equals_what_a_keras_optimizer_with_the_schedule_applies(name):
    """Batch t of a Keras optimizer uses `schedule(iterations)` with iterations = t (0
    for the first update): the controller's LR of batch t is that value, bit for bit
    when both run eagerly (in a graph, TensorFlow's rewrites may move either by an
    ulp; `tests/keras_fit/test_keras_schedule_fit.py` compares whole `fit` runs)."""
    make, _ = CASES[name]
    optimizer, controller = keras.optimizers.SGD(make()), ctl.ScheduleController(make())
    applied, ours = [], []
    for t in range(0, STEPS, 29):  # 25 batches, every horizon passed
        optimizer.iterations.assign(t)
        applied.append(optimizer.learning_rate.numpy())
        ours.append(controller.compute(make_signals(t, 1.0)).lr.numpy())
    np.testing.assert_array_equal(ours, applied)


@keras.saving.register_keras_serializable(package="lrresearch_tests")
class InverseSqrtWarmup(S.LearningRateSchedule):
    """A user's own schedule: `peak * min((t + 1) / warmup, sqrt(warmup / (t + 1)))`."""

    def __init__(self, peak: float = 0.1, warmup_steps: int = 20):
        self.peak, self.warmup_steps = peak, warmup_steps

    def __call__(self, step):
        t = ops.cast(step, "float32") + 1.0
        w = float(self.warmup_steps)
        return self.peak * ops.minimum(t / w, ops.sqrt(w / t))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps}


class Unregistered(InverseSqrtWarmup):
    """A subclass Keras's registry does not know: rebuilt because it is imported."""


def inverse_sqrt(t: int, peak: float, warmup: int) -> float:
    return peak * min((t + 1) / warmup, math.sqrt(warmup / (t + 1)))


FUNCTIONS = {
    # optax-style functions of the step, written with TF ops.
    "int64 step": (
        lambda step: 0.1 * tf.pow(0.5, tf.cast(step // 100, tf.float32)),
        "int64",
        lambda t: 0.1 * 0.5 ** (t // 100),
    ),
    "float32 step": (
        lambda step: 0.05 * (1.0 + tf.cos(math.pi * tf.minimum(step, 300.0) / 300.0)),
        "float32",
        lambda t: 0.05 * (1 + math.cos(math.pi * min(t, 300) / 300)),
    ),
    "user subclass": (InverseSqrtWarmup(0.2, 30), "int64", lambda t: inverse_sqrt(t, 0.2, 30)),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_a_function_of_the_step_or_a_users_subclass_runs_in_graph(name):
    schedule, step_dtype, reference = FUNCTIONS[name]
    lrs = in_graph(ctl.ScheduleController(schedule, step_dtype=step_dtype), 400)
    expected = np.array([reference(t) for t in range(400)])
    np.testing.assert_allclose(lrs, expected, rtol=RTOL, atol=ATOL_OF_PEAK * expected.max())


@pytest.mark.parametrize(
    "schedule",
    [
        S.CosineDecay(0.0, 100, warmup_target=0.1, warmup_steps=10),
        S.PiecewiseConstantDecay([5, 9], [0.3, 0.2, 0.1]),
        InverseSqrtWarmup(0.3, 7),
        Unregistered(0.4, 9),
        # The serialized config itself, as a gin file or a saved model holds it.
        S.serialize(S.PolynomialDecay(0.1, 12, 0.01, power=3.0, cycle=True)),
    ],
    ids=lambda s: s["class_name"] if isinstance(s, dict) else type(s).__name__,
)
def test_config_round_trip_rebuilds_the_same_schedule(schedule):
    original = ctl.ScheduleController(schedule)
    config = json.loads(json.dumps(serialize_controller(original)))
    rebuilt = deserialize_controller(config)
    assert type(rebuilt.schedule) is type(original.schedule)
    assert serialize_controller(rebuilt) == config
    np.testing.assert_array_equal(in_graph(rebuilt, 20), in_graph(original, 20))


def test_a_plain_function_has_no_config_and_the_error_says_use_a_schedule_class():
    controller = ctl.ScheduleController(lambda step: 0.1 + 0.0 * tf.cast(step, tf.float32))
    with pytest.raises(TypeError, match=r"ScheduleController\.schedule = .*<lambda> cannot be "):
        controller.get_config()
    with pytest.raises(TypeError, match="LearningRateSchedule subclass with get_config"):
        serialize_controller(ctl.Warmup(controller, warmup_steps=3))

    class NoConfig(S.LearningRateSchedule):
        def __call__(self, step):
            return 0.1

    with pytest.raises(TypeError, match="give NoConfig a get_config"):
        ctl.ScheduleController(NoConfig()).get_config()


def python_branch(step):
    return 0.1 if step < 10 else 0.01  # a Python `if` on a tensor: cannot trace


BAD = [
    (0.1, {}, "must be a keras.optimizers.schedules.LearningRateSchedule"),
    ("CosineDecay", {}, "must be a keras.optimizers.schedules.LearningRateSchedule"),
    (ctl.ConstantController(0.1), {}, "a controller is used directly"),
    (python_branch, {}, "branches in Python on the step tensor"),
    (lambda step: tf.cos(step * 0.1), {}, "step_dtype = 'float32'"),
    (lambda step: tf.ones([3]) * 0.1, {}, "one LR per step"),
    (lambda step: tf.constant("fast"), {}, "must return a number"),
    (lambda step: None, {}, "must return a number"),
    (lambda step: -0.1 + 0.0 * tf.cast(step, tf.float32), {}, "LR -0.1.* at step 0"),
    ({"class_name": "NoSuchSchedule", "config": {}}, {}, "register_keras_serializable"),
    (S.CosineDecay, {}, "could not be built with its gin bindings"),
    (keras.optimizers.SGD, {}, "not a keras.optimizers.schedules.LearningRateSchedule"),
    (S.ExponentialDecay(0.1, 10, 0.5), {"step_dtype": "int32"}, "step_dtype must be one of"),
]


@pytest.mark.parametrize(("schedule", "kwargs", "match"), BAD)
def test_bad_schedule_is_one_error_naming_the_binding_and_the_fix(schedule, kwargs, match):
    with pytest.raises(ValueError, match=match) as caught:
        ctl.ScheduleController(schedule, **kwargs)
    message = str(caught.value)
    assert message.startswith("ScheduleController.")
    assert len(message) < 1200 and message.count("\n") < 6  # one screen


def test_composes_with_chain_clamp_and_product():
    first, second = S.CosineDecay(0.2, 100), S.ExponentialDecay(0.05, 20, 0.5)
    chain = ctl.Chain([ctl.ScheduleController(first), ctl.ScheduleController(second)], [100])
    expected = [cosine_decay(t, 0.2, 100) if t < 100 else exponential(t - 100, 0.05, 20, 0.5)
                for t in range(200)]  # fmt: skip
    np.testing.assert_allclose(in_graph(chain, 200), expected, rtol=RTOL, atol=ATOL_OF_PEAK * 0.2)
    clamp = ctl.Clamp(ctl.ScheduleController(S.CosineDecay(0.2, 100)), min_lr=0.02, max_lr=0.15)
    clipped = np.clip([cosine_decay(t, 0.2, 100) for t in range(150)], 0.02, 0.15)
    np.testing.assert_allclose(in_graph(clamp, 150), clipped, rtol=RTOL)
    product = ctl.Product(
        ctl.ScheduleController(S.PiecewiseConstantDecay([3], [0.1, 0.01])),
        ctl.LossNudgeFactor(below_loss=2.0, factor=1.5),  # the loss here is 1.0
    )
    np.testing.assert_allclose(in_graph(product, 6), [0.15] * 4 + [0.015] * 2, rtol=RTOL)


USER_MODULE = '''
"""A user's own schedule, registered with gin in their module."""
import gin
import keras
from keras import ops


@gin.configurable
class HalvingAfterWarmup(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak=0.1, warmup_steps=5, every=10):
        self.peak, self.warmup_steps, self.every = peak, warmup_steps, every

    def __call__(self, step):
        t = ops.cast(step, "float32")
        warm = self.peak * (t + 1.0) / self.warmup_steps
        halvings = ops.floor(ops.maximum(t - self.warmup_steps, 0.0) / self.every)
        return ops.where(t < self.warmup_steps, warm, self.peak * ops.power(0.5, halvings))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "every": self.every}
'''


@pytest.mark.slow
def test_a_users_schedule_class_from_gin_trains_and_logs_its_lr(tmp_path, monkeypatch):
    (tmp_path / "user_halving_schedule.py").write_text(USER_MODULE)
    gin_file = tmp_path / "mine.gin"
    gin_file.write_text(
        "import user_halving_schedule\n"
        "Trainer.controller = @ScheduleController()\n"
        "ScheduleController.schedule = @HalvingAfterWarmup()\n"
        "HalvingAfterWarmup.peak = 0.2\n"
        "HalvingAfterWarmup.every = 7\n"
    )
    monkeypatch.chdir(tmp_path)  # gin's `import` finds the module in the working directory
    params = {"Trainer.steps": 24, "Trainer.steps_per_loop": 12, "mlp.hidden": (8,)}
    run = train(tmp_path / "runs", [gin_file], params)
    lrs = run.events.scalar("lr")
    expected = [0.2 * (t + 1) / 5 if t < 5 else 0.2 * 0.5 ** ((t - 5) // 7) for t in range(24)]
    np.testing.assert_allclose(lrs, expected, rtol=RTOL)
    config = (tmp_path / "runs" / run.result.run_dir / "config.gin").read_text()
    assert "import user_halving_schedule" in config
    assert "ScheduleController.schedule = @HalvingAfterWarmup()" in config
    gin.clear_config()


def test_a_bad_argument_of_a_keras_schedule_from_gin_names_its_binding(tmp_path):
    from lrresearch.config import parse as config

    gin_file = tmp_path / "bad.gin"
    gin_file.write_text(
        "Trainer.controller = @ScheduleController()\n"
        "ScheduleController.schedule = @keras.optimizers.schedules.CosineDecay()\n"
        "keras.optimizers.schedules.CosineDecay.initial_learning_rate = 0.1\n"
        "keras.optimizers.schedules.CosineDecay.decay_steps = 0\n"
    )
    try:
        config.parse([str(gin_file)], [])
        with pytest.raises(ValueError) as caught:
            gin.query_parameter("Trainer.controller").scoped_configurable_fn()
    finally:
        gin.clear_config()
    text = config.explain_call_error(caught.value, [str(gin_file)], [])
    assert text.startswith("keras.optimizers.schedules.CosineDecay.decay_steps: Argument")
    assert f"bound at: {gin_file}:4" in text


def test_a_keras_schedule_that_ends_warns_when_the_run_outlasts_or_cuts_it():
    warm_cosine = ctl.ScheduleController(
        S.CosineDecay(0.0, 1900, warmup_target=0.1, warmup_steps=100)
    )
    assert warm_cosine.run_warnings(2000) == []
    [longer] = warm_cosine.run_warnings(3000)
    assert "warmup_steps + decay_steps = 2000 ends before Trainer.steps = 3000" in longer
    assert longer.endswith("set keras.optimizers.schedules.CosineDecay.decay_steps = 2900")
    [inside_warmup] = warm_cosine.run_warnings(40)
    assert "cut by Trainer.steps = 40" in inside_warmup and "at LR 0.039" in inside_warmup
    assert "lower keras.optimizers.schedules.CosineDecay.warmup_steps" in inside_warmup
    [cut] = ctl.ScheduleController(S.PolynomialDecay(0.1, 100)).run_warnings(50)
    assert cut.endswith("set keras.optimizers.schedules.PolynomialDecay.decay_steps = 50")
    # Inside a Chain the span is the part's own.
    chain = ctl.Chain([ctl.ConstantController(0.1), warm_cosine], [100])
    chain.set_run_length(2100)
    assert chain.run_warnings(2100) == []
    # Schedules without an end, and ControlledModel's unknown length, never warn.
    assert ctl.ScheduleController(S.ExponentialDecay(0.1, 10, 0.5)).run_warnings(5) == []
    assert ctl.ScheduleController(S.CosineDecay(0.1, 10)).run_warnings(None) == []
