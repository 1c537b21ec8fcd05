"""The schedule families (`controllers/decay.py`, `controllers/steps.py`) against numpy
transcriptions of their references, written here in float64: Keras's schedules, optax's,
transformers' `get_inverse_sqrt_schedule`, t5x's `rsqrt_decay` factors and PyTorch's
`StepLR`/`MultiStepLR` in their chainable (per-step, recursive) form. Every batch from 0
to well past the horizon, exact boundaries, cycle and staircase; within one float32
rounding of the float64 reference.

`tools/check_schedule_families_reference.py` runs the references' own code, on other
settings.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import (
    ExponentialDecayController,
    InverseSqrtController,
    InverseTimeDecayController,
    MultiStepController,
    PiecewiseConstantController,
    PolynomialDecayController,
    StepController,
)
from lrresearch.controllers.signals import make_signals
from tests.support import REPO

# One float32 rounding of the float64 value, and a little for the float64 roundings in
# which ours and the transcription differ (a recursive product: ~1e-13 relative).
RTOL = 2.0**-24 * (1 + 1e-5)


def ours(controller, steps: int) -> np.ndarray:
    """The controller's LR for batches 0 .. steps - 1: one eager call on the vector of
    steps (every family is elementwise in the step; the traced, scalar-step path is
    `test_all_families_run_in_one_traced_function_...`)."""
    signals = make_signals(tf.range(steps, dtype=tf.int64), 1.0)
    return controller.compute(signals).lr.numpy().astype(np.float64)


def check(controller, want: list[float]) -> np.ndarray:
    got = ours(controller, len(want))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)
    assert controller.initial_lr == pytest.approx(want[0], rel=RTOL)
    return got


# -- inverse square root: transformers and t5x ---------------------------------------------


def transformers_inverse_sqrt(step: int, warmup: int, timescale: int | None) -> float:
    """`_get_inverse_sqrt_schedule_lr_lambda`, with `get_inverse_sqrt_schedule`'s default."""
    timescale = timescale if timescale is not None else (warmup or 10_000)
    if step < warmup:
        return float(step) / float(max(1, warmup))
    shift = timescale - warmup
    return 1.0 / math.sqrt((step + shift) / timescale)


def t5x_rsqrt(step: int, factors: str, base: float, warmup: int, min_lr: float) -> float:
    """t5x `create_learning_rate_scheduler`'s `step_fn` for these factors (float64)."""
    ret = 1.0
    for name in factors.split(" * "):
        if name == "constant":
            ret *= base
        elif name == "linear_warmup":
            ret *= min(1.0, step / warmup)
        elif name == "rsqrt_decay":
            ret /= math.sqrt(max(step, warmup))
        elif name == "rsqrt_normalized_decay":
            ret *= math.sqrt(warmup)
            ret /= math.sqrt(max(step, warmup))
    return max(ret, min_lr)


@pytest.mark.parametrize(
    ("peak", "warmup", "timescale"), [(0.3, 40, None), (0.02, 0, None), (0.1, 25, 7), (1.0, 1, 500)]
)
def test_inverse_sqrt_matches_transformers(peak, warmup, timescale):
    controller = InverseSqrtController(peak, warmup, timescale)
    want = [peak * transformers_inverse_sqrt(t, warmup, timescale) for t in range(700)]
    got = check(controller, want)
    if warmup:
        assert got[0] == 0.0 and got[warmup] == pytest.approx(peak, rel=RTOL)


@pytest.mark.parametrize(
    ("factors", "base", "warmup", "min_lr"),
    [
        ("constant * linear_warmup * rsqrt_decay", 0.5, 64, 1e-8),  # t5x's default factors
        ("constant * rsqrt_decay", 2.0, 30, 1e-8),
        ("constant * rsqrt_normalized_decay", 0.01, 17, 0.0),
        ("constant * linear_warmup * rsqrt_decay", 1.0, 10, 0.05),  # the floor bites
    ],
)
def test_inverse_sqrt_matches_t5x_rsqrt_decay(factors, base, warmup, min_lr):
    normalized = "normalized" in factors
    controller = InverseSqrtController(
        peak_lr=base if normalized else base / math.sqrt(warmup),
        warmup_steps=warmup,
        linear_warmup="linear_warmup" in factors,
        min_lr=min_lr,
    )
    check(controller, [t5x_rsqrt(t, factors, base, warmup, min_lr) for t in range(600)])


# -- polynomial: Keras (with cycle) and optax (with transition_begin) ----------------------


def keras_polynomial(step, initial, decay_steps, end, power, cycle):
    """`keras.optimizers.schedules.PolynomialDecay.__call__` in float64."""
    decay = float(decay_steps)
    if cycle:
        decay *= 1.0 if step == 0 else math.ceil(step / decay_steps)
    else:
        step = min(step, decay)
    return (initial - end) * (1 - step / decay) ** power + end


def optax_polynomial(count, init, end, power, transition_steps, begin):
    count = min(max(count - begin, 0), transition_steps)
    return (init - end) * (1 - count / transition_steps) ** power + end


@pytest.mark.parametrize(
    ("initial", "decay_steps", "end", "power", "cycle"),
    [(0.2, 100, 0.01, 1.5, False), (0.05, 37, 1e-3, 2.0, True), (1.0, 1, 0.0, 1.0, True),
     (0.3, 60, 0.0, 0.5, False)],
)  # fmt: skip
def test_polynomial_matches_keras(initial, decay_steps, end, power, cycle):
    controller = PolynomialDecayController(initial, decay_steps, end, power, cycle)
    steps = 5 * decay_steps + 23  # past the horizon; with cycle, through four restarts
    want = [keras_polynomial(t, initial, decay_steps, end, power, cycle) for t in range(steps)]
    got = check(controller, want)
    assert got[decay_steps] == pytest.approx(end, rel=RTOL, abs=0)  # exact end
    if cycle and decay_steps > 1:  # a restart one batch after each end, from above end_lr
        assert got[decay_steps + 1] > end and got[2 * decay_steps] == pytest.approx(end, rel=RTOL)


@pytest.mark.parametrize(
    ("init", "end", "power", "transition_steps", "begin"),
    [(0.0, 0.1, 1.0, 50, 20), (0.4, 0.0, 3.0, 80, 0), (0.1, 0.2, 0.7, 13, 5)],
)
def test_polynomial_matches_optax(init, end, power, transition_steps, begin):
    controller = PolynomialDecayController(
        initial_lr=init, decay_steps=transition_steps, end_lr=end, power=power,
        transition_begin=begin,
    )  # fmt: skip
    steps = begin + 3 * transition_steps
    check(controller, [optax_polynomial(t, init, end, power, transition_steps, begin)
                       for t in range(steps)])  # fmt: skip


def test_polynomial_decay_steps_none_takes_the_rest_of_the_run():
    controller = PolynomialDecayController(0.1, None, 0.0, transition_begin=50)
    with pytest.raises(ValueError, match=r"PolynomialDecayController\.decay_steps must be"):
        controller.compute(make_signals(0, 1.0))
    assert controller.set_run_length(300) == {"PolynomialDecayController.decay_steps": 250}
    check(controller, [optax_polynomial(t, 0.1, 0.0, 1.0, 250, 50) for t in range(320)])


# -- exponential: Keras and optax ----------------------------------------------------------


def optax_exponential(count, init, transition_steps, rate, begin, staircase, end):
    """optax's `exponential_decay` (Keras's `ExponentialDecay` is `begin = 0, end = None`)."""
    decreased = count - begin
    p = decreased / transition_steps
    if staircase:
        p = math.floor(p)
    value = init if decreased <= 0 else init * rate**p
    if end is not None:
        value = max(value, end) if rate < 1.0 else min(value, end)
    return value


@pytest.mark.parametrize(
    ("init", "transition_steps", "rate", "begin", "staircase", "end"),
    [
        (0.1, 30, 0.7, 0, False, None),  # Keras
        (0.1, 30, 0.7, 0, True, None),  # Keras, staircase
        (0.05, 11, 0.6, 15, True, 0.01),  # optax: begin, staircase, a lower bound
        (0.01, 40, 1.5, 7, False, 0.02),  # optax: rising, an upper bound
        (1.0, 1, 0.99, 0, False, None),  # PyTorch's ExponentialLR per batch
    ],
)
def test_exponential_matches_keras_and_optax(init, transition_steps, rate, begin, staircase, end):
    controller = ExponentialDecayController(init, transition_steps, rate, staircase, begin, end)
    want = [optax_exponential(t, init, transition_steps, rate, begin, staircase, end)
            for t in range(begin + 12 * transition_steps + 3)]  # fmt: skip
    got = check(controller, want)
    if staircase:  # flat within a stair, a jump exactly at its boundary
        first = begin + transition_steps
        assert got[first - 1] == got[begin] and got[first] < got[first - 1]


# -- inverse time: Keras -------------------------------------------------------------------


@pytest.mark.parametrize("staircase", [False, True])
def test_inverse_time_matches_keras(staircase):
    initial, decay_steps, rate = 0.3, 20, 0.5
    want = []
    for t in range(500):
        p = math.floor(t / decay_steps) if staircase else t / decay_steps
        want.append(initial / (1 + rate * p))
    got = check(InverseTimeDecayController(initial, decay_steps, rate, staircase), want)
    assert got[19] == pytest.approx(0.3 if staircase else 0.3 / 1.475, rel=RTOL)


# -- piecewise constant: Keras ('previous') and optax ('next') -----------------------------


def keras_piecewise(step, boundaries, values):
    if step <= boundaries[0]:
        return values[0]
    if step > boundaries[-1]:
        return values[-1]
    for low, high, value in zip(boundaries[:-1], boundaries[1:], values[1:-1], strict=True):
        if low < step <= high:
            return value
    raise AssertionError(step)


def optax_piecewise(count, init, boundaries_and_scales):
    value = init
    for threshold, scale in sorted(boundaries_and_scales.items()):
        indicator = max(0.0, float(np.sign(threshold - count)))
        value = value * indicator + (1 - indicator) * scale * value
    return value


def test_piecewise_matches_keras_boundary_batch_keeps_the_previous_value():
    boundaries, values = [10, 30, 31], [0.5, 0.05, 0.2, 0.001]
    controller = PiecewiseConstantController(boundaries, values)
    got = check(controller, [keras_piecewise(t, boundaries, values) for t in range(60)])
    assert got[10] == np.float32(0.5) and got[11] == np.float32(0.05)


def test_piecewise_matches_optax_boundary_batch_takes_the_next_value():
    scales = {0: 0.5, 30: 0.1, 70: 2.0}
    values = [0.4, 0.4 * 0.5, 0.4 * 0.5 * 0.1, 0.4 * 0.5 * 0.1 * 2.0]
    controller = PiecewiseConstantController([0, 30, 70], values, at_boundary="next")
    got = check(controller, [optax_piecewise(t, 0.4, scales) for t in range(100)])
    assert got[29] != got[30]


# -- PyTorch's StepLR and MultiStepLR, in their chainable form -----------------------------


def torch_step_lr(base, step_size, gamma, steps):
    """`StepLR.get_lr` per `scheduler.step()`: the group's LR times gamma at a multiple."""
    lr, out = base, []
    for last_epoch in range(steps):
        if last_epoch != 0 and last_epoch % step_size == 0:
            lr = lr * gamma
        out.append(lr)
    return out


def torch_multistep_lr(base, milestones, gamma, steps):
    """`MultiStepLR.get_lr`: times gamma**(times the epoch is listed) at a milestone."""
    lr, out = base, []
    for last_epoch in range(steps):
        if last_epoch in milestones:
            lr = lr * gamma ** milestones.count(last_epoch)
        out.append(lr)
    return out


@pytest.mark.parametrize(
    ("base", "step_size", "gamma"),
    [(0.3, 7, 0.9), (1.0, 1, 0.99), (0.05, 100, 0.1), (0.01, 3, 1.05)],
)
def test_step_matches_torch_step_lr(base, step_size, gamma):
    check(StepController(base, step_size, gamma), torch_step_lr(base, step_size, gamma, 1000))


@pytest.mark.parametrize(("milestones", "gamma"), [([100, 250], 0.1), ([0, 20, 20, 55], 0.5)])
def test_multistep_matches_torch_multistep_lr_repeats_counted(milestones, gamma):
    got = check(
        MultiStepController(0.2, milestones, gamma), torch_multistep_lr(0.2, milestones, gamma, 400)
    )
    if 20 in milestones:  # listed twice: gamma**2 at once
        assert got[20] == pytest.approx(got[19] * gamma**2, rel=RTOL)


# -- in-graph, bad arguments ---------------------------------------------------------------


def every_family():
    return [
        InverseSqrtController(0.1, 10, None, True, 1e-8),
        PolynomialDecayController(0.1, 30, 1e-3, 2.0, True, 5),
        ExponentialDecayController(0.1, 10, 0.5, True, 3, 0.01),
        InverseTimeDecayController(0.1, 10, 0.5, True),
        PiecewiseConstantController([10, 20], [0.1, 0.01, 0.001], "next"),
        StepController(0.1, 10, 0.5),
        MultiStepController(0.1, [10, 20], 0.5),
    ]


def test_all_families_run_in_one_traced_function_without_retracing_or_host_calls():
    controllers = every_family()
    eager = [[float(c.compute(make_signals(t, 1.0)).lr) for t in range(0, 100, 7)]
             for c in controllers]  # fmt: skip

    @tf.function(autograph=False)  # as the trainer's loop is traced
    def lrs(step: tf.Tensor) -> tf.Tensor:
        return tf.stack([c.compute(make_signals(step, 1.0)).lr for c in controllers])

    got = np.array([lrs(tf.constant(t, tf.int64)).numpy() for t in range(0, 100, 7)])
    assert lrs.experimental_get_tracing_count() == 1
    np.testing.assert_array_equal(got.T, eager)
    graph = lrs.get_concrete_function(tf.constant(0, tf.int64)).graph
    ops = {op.type for op in graph.get_operations()}
    assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}, ops


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: InverseSqrtController(peak_lr=0), "InverseSqrtController.peak_lr must be > 0"),
        (lambda: InverseSqrtController(timescale=0), "InverseSqrtController.timescale must be"),
        (lambda: InverseSqrtController(linear_warmup=1), "InverseSqrtController.linear_warmup"),
        (lambda: PolynomialDecayController(decay_steps=0), "PolynomialDecayController.decay_steps"),
        (lambda: PolynomialDecayController(power=-1.0), "PolynomialDecayController.power"),
        (lambda: PolynomialDecayController(0.0, end_lr=0.0), "PolynomialDecayController.end_lr"),
        (lambda: PolynomialDecayController(cycle="yes"), "PolynomialDecayController.cycle"),
        (lambda: ExponentialDecayController(decay_rate=0.0), "ExponentialDecayController.decay_r"),
        (lambda: ExponentialDecayController(staircase=1), "ExponentialDecayController.staircase"),
        (lambda: ExponentialDecayController(end_lr=-1.0), "ExponentialDecayController.end_lr"),
        (lambda: InverseTimeDecayController(decay_steps=2.5), "InverseTimeDecayController.decay_"),
        (lambda: PiecewiseConstantController([20, 10], [1.0, 0.1, 0.01]), r"sort it: \[10, 20\]"),
        (lambda: PiecewiseConstantController([10], [1.0]), "PiecewiseConstantController.values"),
        (
            lambda: PiecewiseConstantController([10], [1.0, -0.1]),
            r"values must be LRs, got \[1.0, -0.1\]: values\[1\] must be >= 0",
        ),
        (lambda: PiecewiseConstantController(at_boundary="after"), "at_boundary must be"),
        (lambda: StepController(step_size=0), "StepController.step_size must be an int >= 1"),
        (lambda: StepController(gamma=0.0), "StepController.gamma must be > 0"),
        (lambda: MultiStepController(milestones=[30, 10]), "MultiStepController.milestones must"),
        (lambda: MultiStepController(milestones=[]), "MultiStepController.milestones must"),
        (
            lambda: MultiStepController(milestones=[-1]),
            r"milestones must be ints >= 0 \(batches\), got \[-1\]",
        ),
    ],
)
def test_bad_arguments_name_the_binding(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.subprocess
def test_the_reference_check_without_a_reference_says_how_to_get_it_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "tools/check_schedule_families_reference.py",
         f"--jax_python={tmp_path}/none/bin/python"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"{tmp_path}/none/bin/python does not exist: a venv with jax and optax (pip install "
        "optax), then pass its path (see --help)"
    )
