"""Controllers against independent numpy re-implementations of their documented rules.

Each reference below is written from the rules the controllers' docstrings state (the
seed strategies' in `lrresearch/controllers/seed.py`), not from the controller code.
The controllers are driven batch by batch with `lrresearch.make_signals`, as a notebook
or custom loop would.
"""

import collections
import math

import numpy as np
import pytest
import tensorflow as tf

from lrresearch import (
    ConstantController,
    CyclicalController,
    GradNormController,
    LossTrendController,
    WarmupCosineController,
    make_signals,
)
from lrresearch.controllers import CosineCycleController, Warmup

RTOL = 1e-5
F32 = np.float32


def drive(controller, losses, norms=None, steps=None):
    """Runs `controller` eagerly, one batch per loss; returns (lrs, {diagnostic: values})."""
    losses = np.asarray(losses, F32)
    norms = np.zeros_like(losses) if norms is None else np.asarray(norms, F32)
    steps = np.arange(len(losses)) if steps is None else np.asarray(steps, np.int64)
    lrs, diagnostics = [], collections.defaultdict(list)
    for step, loss, norm in zip(steps, losses, norms, strict=True):
        out = controller.compute(make_signals(int(step), float(loss), float(norm)))
        lrs.append(out.lr.numpy())
        for name, value in out.diagnostics.items():
            diagnostics[name].append(value.numpy())
    return np.array(lrs), {name: np.array(v) for name, v in diagnostics.items()}


# ---------------------------------------------------------------------------------------
# ConstantController
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"lr": 0.3}, {"lr": 1e-6}])
def test_constant_controller_returns_its_lr_every_batch(kwargs):
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.1, 5.0, 300)
    losses[[0, 7, 150]] = [np.nan, np.inf, -np.inf]
    lrs, diagnostics = drive(ConstantController(**kwargs), losses, norms=rng.lognormal(0, 3, 300))
    expected = kwargs.get("lr", 0.01)
    assert lrs.dtype == np.float32
    np.testing.assert_allclose(lrs, np.full(300, expected), rtol=RTOL)
    assert diagnostics == {}


# ---------------------------------------------------------------------------------------
# WarmupCosineController
# ---------------------------------------------------------------------------------------


def warmup_cosine_reference(
    steps, base_lr=0.1, warmup_steps=100, decay_steps=2000, init_lr=0.0, end_lr=0.0
):
    """Linear warmup from init_lr to base_lr, then cosine to end_lr, then end_lr."""
    lrs = []
    for t in np.asarray(steps, np.float64):
        if t < warmup_steps:
            lrs.append(init_lr + (base_lr - init_lr) * t / warmup_steps)
        else:
            span = decay_steps - warmup_steps
            s = min(t - warmup_steps, span)
            lrs.append(end_lr + (base_lr - end_lr) * 0.5 * (1 + math.cos(math.pi * s / span)))
    return np.array(lrs)


WARMUP_COSINE_CASES = [
    {},  # the defaults: warmup 100, decay 2000
    {"base_lr": 0.5, "warmup_steps": 0, "decay_steps": 300, "end_lr": 0.01},
    {"base_lr": 1e-3, "warmup_steps": 50, "decay_steps": 400, "init_lr": 1e-5, "end_lr": 1e-4},
    {"base_lr": 0.1, "warmup_steps": 30, "decay_steps": 31, "init_lr": 0.2, "end_lr": 0.05},
    {"base_lr": 2.0, "warmup_steps": 1, "decay_steps": 2},
]


@pytest.mark.parametrize("kwargs", WARMUP_COSINE_CASES)
def test_warmup_cosine_matches_closed_form(kwargs):
    params = {"base_lr": 0.1, "warmup_steps": 100, "decay_steps": 2000, **kwargs}
    # Every batch for short schedules; for the long default schedule every 5th batch
    # plus every boundary (step only, so the batch indices need not be contiguous).
    horizon = params["decay_steps"] + 150
    stride = 5 if horizon > 1000 else 1
    w, d = params["warmup_steps"], params["decay_steps"]
    steps = np.unique(
        np.concatenate(
            [
                np.arange(0, horizon, stride),
                [0, 1, w - 1, w, w + 1, d - 1, d, d + 1, 10 * d],
            ]
        )
    )
    steps = steps[steps >= 0]
    lrs, diagnostics = drive(WarmupCosineController(**params), np.ones(len(steps)), steps=steps)
    expected = warmup_cosine_reference(steps, **params)
    # atol: the cosine tail towards end_lr = 0 is a difference of nearly equal float32s.
    np.testing.assert_allclose(lrs, expected, rtol=RTOL, atol=1e-7 * params["base_lr"])
    np.testing.assert_array_equal(diagnostics["warmup"], (steps < w).astype(F32))


def test_warmup_cosine_peaks_at_warmup_end_and_stays_at_end_lr_after_decay():
    controller = WarmupCosineController(
        base_lr=0.4, warmup_steps=10, decay_steps=60, init_lr=0.04, end_lr=0.004
    )
    steps = [9, 10, 11, 59, 60, 61, 100, 10**6, 10**12]
    lrs, _ = drive(controller, np.ones(len(steps)), steps=steps)
    np.testing.assert_allclose(lrs[0], 0.04 + 0.36 * 9 / 10, rtol=RTOL)
    np.testing.assert_allclose(lrs[1], 0.4, rtol=RTOL)
    assert lrs[2] < lrs[1]
    assert lrs[3] > 0.004
    np.testing.assert_allclose(lrs[4:], 0.004, rtol=RTOL)


def test_warmup_cosine_without_warmup_starts_at_base_lr():
    controller = WarmupCosineController(base_lr=0.3, warmup_steps=0, decay_steps=10)
    lrs, diagnostics = drive(controller, np.ones(3))
    np.testing.assert_allclose(lrs[0], 0.3, rtol=RTOL)
    np.testing.assert_allclose(lrs[1], 0.3 * 0.5 * (1 + math.cos(math.pi / 10)), rtol=RTOL)
    np.testing.assert_array_equal(diagnostics["warmup"], [0.0, 0.0, 0.0])
    assert controller.initial_lr == 0.3


def optax_warmup_cosine(steps, init_value, peak_value, warmup_steps, decay_steps, end_value):
    """optax.warmup_cosine_decay_schedule in numpy float64, written as optax composes it:
    join_schedules([linear_schedule(init, peak, warmup), cosine_decay_schedule(peak,
    decay_steps - warmup, alpha=end / peak)], [warmup]) (optax/schedules/_schedule.py)."""
    out = []
    for count in np.asarray(steps, np.float64):
        if count < warmup_steps:  # polynomial_schedule with power 1
            frac = 1.0 - count / warmup_steps
            out.append((init_value - peak_value) * frac + peak_value)
        else:
            span = decay_steps - warmup_steps
            local = min(count - warmup_steps, span)
            cosine = 0.5 * (1.0 + np.cos(np.pi * local / span))
            alpha = end_value / peak_value
            out.append(peak_value * ((1.0 - alpha) * cosine + alpha))
    return np.array(out)


F32_HALF_ULP = 2.0**-24  # the relative error of rounding a float64 to float32


@pytest.mark.slow
@pytest.mark.parametrize(
    "base_lr,warmup_steps,decay_steps,init_lr,end_lr",
    [
        (0.1, 100, 2000, 0.0, 0.0),  # the defaults: the tail towards 0 was 7e-4 off
        (3e-4, 1000, 100_000, 1e-7, 0.0),
        (0.5, 0, 300, 0.0, 1e-3),
        (1.0, 7, 10, 0.2, 0.0),
    ],
)
def test_warmup_cosine_is_float64_optax_rounded_to_float32(
    base_lr, warmup_steps, decay_steps, init_lr, end_lr
):
    # Every batch of the warmup and of the last 500 before decay_steps, a stride through
    # the middle, and beyond the end.
    steps = np.unique(
        np.r_[
            0 : min(decay_steps, 2000),
            max(decay_steps - 500, 0) : decay_steps + 50,
            0 : decay_steps : max(decay_steps // 997, 1),
            10 * decay_steps,
        ]
    )
    controller = WarmupCosineController(base_lr, warmup_steps, decay_steps, init_lr, end_lr)
    compute = tf.function(lambda t: controller.compute(make_signals(t, 1.0, 1.0)).lr)
    got = np.array([compute(tf.constant(t, tf.int64)).numpy() for t in steps], np.float64)
    expected = optax_warmup_cosine(steps, init_lr, base_lr, warmup_steps, decay_steps, end_lr)
    exact_zero = expected == 0.0
    np.testing.assert_array_equal(got[exact_zero], 0.0)
    relative = np.abs(got - expected)[~exact_zero] / expected[~exact_zero]
    # One rounding to float32 (a float64 difference of 1e-16 may tip it to the far side
    # of a rounding boundary: 1.01 half-ulps).
    assert relative.max() <= 1.01 * F32_HALF_ULP, relative.max()
    assert got[-1] == np.float32(end_lr)  # beyond decay_steps
    tail = (steps > decay_steps - 50) & (steps < decay_steps) & ~exact_zero
    assert np.all(relative[tail[~exact_zero]] <= 1.01 * F32_HALF_ULP)


def test_cosine_cycle_and_warmup_factor_round_once_to_float32():
    cycle = CosineCycleController(min_lr=1e-5, max_lr=1.0, cycle_length=1000)
    steps = np.r_[0:1000:7, 990:1010]
    got = np.array([cycle.compute(make_signals(int(t), 1.0)).lr.numpy() for t in steps])
    x = (steps % 1000) / 1000.0
    expected = 1e-5 + 0.5 * (1.0 - 1e-5) * (1.0 + np.cos(np.pi * x))
    assert np.max(np.abs(got - expected) / expected) <= 1.01 * F32_HALF_ULP
    warm = Warmup(ConstantController(0.3), warmup_steps=300, start_factor=1e-3, shape="exponential")
    steps = np.arange(0, 320, 3)
    got = np.array([warm.compute(make_signals(int(t), 1.0)).lr.numpy() for t in steps])
    expected = np.float64(np.float32(0.3)) * 1e-3 ** (1.0 - np.minimum(steps / 300, 1.0))
    assert np.max(np.abs(got - expected) / expected) <= 1.01 * F32_HALF_ULP


# ---------------------------------------------------------------------------------------
# GradNormController
# ---------------------------------------------------------------------------------------

GRAD_NORM_DEFAULTS = {
    "base_lr": 0.1,
    "low_norm_threshold": 1e-3,
    "low_norm_lr": 0.11,
    "slope": 0.005,
    "min_lr": 0.01,
}


def grad_norm_reference(norm, base_lr, low_norm_threshold, low_norm_lr, slope, min_lr):
    """Documented: low_norm_lr if norm < threshold else max(min_lr, base_lr - slope*norm)."""
    norm = F32(norm)  # the controller sees a float32 norm and compares it in float32
    if norm < F32(low_norm_threshold):
        return low_norm_lr
    return max(min_lr, base_lr - slope * float(norm))


GRAD_NORM_CASES = [
    {},
    {"base_lr": 0.5, "low_norm_threshold": 0.01, "low_norm_lr": 1.0, "slope": 0.2, "min_lr": 1e-3},
    {
        "base_lr": 0.05,
        "low_norm_threshold": 0.0,
        "low_norm_lr": 0.2,
        "slope": 1e-3,
        "min_lr": 0.05,
    },  # threshold 0: never low; min_lr == base_lr: always the floor
    {
        "base_lr": 1.0,
        "low_norm_threshold": 5.0,
        "low_norm_lr": 0.5,
        "slope": 0.0,
        "min_lr": 0.1,
    },  # slope 0: the sloped branch is flat at base_lr
]


@pytest.mark.parametrize("kwargs", GRAD_NORM_CASES)
def test_grad_norm_matches_reference_rule(kwargs):
    params = {**GRAD_NORM_DEFAULTS, **kwargs}
    thr = F32(params["low_norm_threshold"])
    rng = np.random.default_rng(1)
    # Zero, the threshold and its float32 neighbours, huge norms, then a wide spread.
    edges = [thr, np.nextafter(thr, F32(0)), np.nextafter(thr, F32(np.inf))] if thr else []
    norms = np.concatenate(
        [
            [0.0, *edges, 1e6, 1e30],
            rng.lognormal(mean=0.0, sigma=3.0, size=400),
        ]
    ).astype(F32)
    lrs, diagnostics = drive(GradNormController(**kwargs), np.ones(len(norms)), norms=norms)
    expected = [grad_norm_reference(n, **params) for n in norms]
    np.testing.assert_allclose(lrs, expected, rtol=RTOL)
    np.testing.assert_array_equal(diagnostics["low_norm"], (norms < thr).astype(F32))
    # The data reach the sloped branch and the floor (and the flat region if there is one).
    sloped = params["base_lr"] - params["slope"] * norms.astype(np.float64)
    if params["slope"] > 0:
        assert np.any(sloped <= params["min_lr"])
    if params["slope"] > 0 and params["min_lr"] < params["base_lr"]:
        assert np.any((norms >= thr) & (sloped > params["min_lr"]))
    if thr > 0:
        assert np.any(norms < thr)


def test_grad_norm_zero_norm_uses_low_norm_lr():
    lrs, diagnostics = drive(GradNormController(), [1.0], norms=[0.0])
    np.testing.assert_allclose(lrs, [0.11], rtol=RTOL)
    np.testing.assert_array_equal(diagnostics["low_norm"], [1.0])


def test_grad_norm_at_threshold_is_not_low():
    threshold = 0.25  # exact in float32
    controller = GradNormController(low_norm_threshold=threshold, low_norm_lr=0.5)
    below = float(np.nextafter(F32(threshold), F32(0)))
    lrs, diagnostics = drive(controller, [1.0, 1.0], norms=[threshold, below])
    np.testing.assert_allclose(lrs, [0.1 - 0.005 * threshold, 0.5], rtol=RTOL)
    np.testing.assert_array_equal(diagnostics["low_norm"], [0.0, 1.0])


def test_grad_norm_large_norm_is_floored_at_min_lr():
    # base_lr - slope * norm reaches min_lr at norm = (0.1 - 0.01) / 0.005 = 18.
    lrs, _ = drive(GradNormController(), np.ones(4), norms=[17.0, 18.0, 19.0, 1e9])
    np.testing.assert_allclose(lrs, [0.1 - 0.005 * 17, 0.01, 0.01, 0.01], rtol=RTOL)


@pytest.mark.parametrize("norm", [np.nan, np.inf])
def test_grad_norm_non_finite_norm_gives_non_finite_lr(norm):
    # The trainer's guard rejects a non-finite LR and keeps the previous one; a finite
    # LR here (e.g. max(min_lr, -inf) = min_lr) would slip through the guard unseen.
    lrs, _ = drive(GradNormController(), [1.0], norms=[norm])
    assert not np.isfinite(lrs[0])


# ---------------------------------------------------------------------------------------
# LossTrendController
# ---------------------------------------------------------------------------------------


class LossTrendReference:
    """The documented rule, one batch at a time, with the LR kept in float32."""

    def __init__(
        self, initial_lr=1e-3, window=100, decrease=0.95, increase=1.05, min_lr=1e-6, max_lr=None
    ):
        self.window, self.decrease, self.increase = window, decrease, increase
        self.min_lr, self.max_lr = F32(min_lr), F32(max_lr)
        self.losses = collections.deque(maxlen=window)  # finite batch losses, oldest first
        self.lr = F32(initial_lr)

    def step(self, loss):
        """Returns (lr, trend) for a batch with this loss."""
        loss = F32(loss)
        if not np.isfinite(loss):
            return self.lr, self.trend()
        self.losses.append(loss)
        trend = self.trend()
        if len(self.losses) == self.window:
            factor = F32(self.decrease if trend > 0 else self.increase)
            self.lr = F32(np.clip(self.lr * factor, self.min_lr, self.max_lr))
        return self.lr, trend

    def trend(self):
        if len(self.losses) < self.window:
            return 0.0
        values = np.array(self.losses, np.float64)
        newer = values[self.window - self.window // 2 :]
        older = values[: self.window - self.window // 2]
        assert len(newer) == self.window // 2
        return newer.mean() - older.mean()


def run_loss_trend_reference(losses, **kwargs):
    reference = LossTrendReference(**kwargs)
    lrs, trends = zip(*(reference.step(loss) for loss in losses), strict=True)
    return np.array(lrs), np.array(trends)


def wavy_losses(n, seed, period=80, noise=0.05):
    """Batch losses that fall and rise in turn, with noise, and a few non-finite ones."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    losses = 2.0 + 0.5 * np.sin(2 * np.pi * t / period) + noise * rng.standard_normal(n)
    return losses.astype(F32)


LOSS_TREND_CASES = [
    # (kwargs, whether this data must drive the LR onto both min_lr and max_lr)
    ({"max_lr": 0.1}, False),  # every other default: window 100, x0.95 / x1.05, 1e-6
    (
        {
            "initial_lr": 0.01,
            "window": 7,
            "decrease": 0.5,
            "increase": 1.5,
            "min_lr": 1e-4,
            "max_lr": 0.05,
        },
        True,
    ),  # odd window
    (
        {
            "initial_lr": 0.2,
            "window": 8,
            "decrease": 0.8,
            "increase": 1.2,
            "min_lr": 0.05,
            "max_lr": 1.0,
        },
        True,
    ),  # even window
    (
        {
            "initial_lr": 1e-3,
            "window": 2,
            "decrease": 1.0,
            "increase": 1.01,
            "min_lr": 1e-3,
            "max_lr": 1.1e-3,
        },
        True,
    ),  # smallest window; decrease 1 (allowed)
]


@pytest.mark.slow
@pytest.mark.parametrize(("kwargs", "hits_bounds"), LOSS_TREND_CASES)
def test_loss_trend_matches_reference_rule(kwargs, hits_bounds):
    n = 400 if kwargs.get("window", 100) == 100 else 300
    losses = wavy_losses(n, seed=2, period=60 if n < 400 else 160)
    losses[[5, 130, 131, 250]] = [np.nan, np.inf, np.nan, -np.inf]
    lrs, diagnostics = drive(LossTrendController(**kwargs), losses)
    expected_lrs, expected_trends = run_loss_trend_reference(losses, **kwargs)
    full = expected_trends != 0.0
    # The decision is `trend > 0`: make sure no batch of this data sits on a near tie,
    # where float32 rounding inside the controller could legitimately go either way.
    assert np.min(np.abs(expected_trends[full])) > 1e-5
    np.testing.assert_allclose(lrs, expected_lrs, rtol=RTOL)
    np.testing.assert_allclose(diagnostics["trend"], expected_trends, rtol=1e-4, atol=1e-6)
    # Both directions happen, and the LR moved.
    assert np.any(expected_trends > 0) and np.any(expected_trends < 0)
    assert len(np.unique(expected_lrs)) > 2
    if hits_bounds:
        assert np.any(lrs == F32(kwargs["max_lr"])) and np.any(lrs == F32(kwargs["min_lr"]))


@pytest.mark.parametrize("window", [2, 5, 8, 100])
def test_loss_trend_holds_lr_until_window_full(window):
    losses = np.linspace(3.0, 1.0, window + 3)  # falling: the first adjustment increases
    controller = LossTrendController(initial_lr=0.01, window=window, max_lr=1.0)
    lrs, diagnostics = drive(controller, losses)
    np.testing.assert_array_equal(lrs[: window - 1], np.full(window - 1, F32(0.01)))
    np.testing.assert_allclose(lrs[window - 1], 0.01 * 1.05, rtol=RTOL)
    np.testing.assert_allclose(lrs[window:], 0.01 * 1.05 ** np.arange(2, 5), rtol=RTOL)
    np.testing.assert_array_equal(diagnostics["trend"][: window - 1], 0.0)
    assert diagnostics["trend"][window - 1] < 0
    np.testing.assert_allclose(
        diagnostics["window_fill"],
        np.minimum(np.arange(1, window + 4) / window, 1.0),
        rtol=RTOL,
    )


def test_loss_trend_first_batch_is_initial_lr():
    controller = LossTrendController(initial_lr=0.02, window=4, max_lr=0.1)
    lrs, diagnostics = drive(controller, [5.0])
    assert lrs[0] == F32(0.02) == F32(controller.initial_lr)
    assert diagnostics["trend"][0] == 0.0


@pytest.mark.parametrize(
    ("window", "losses", "newer", "older"),
    [
        # Odd window 5: newer = the 2 newest losses, older = the 3 before them. With
        # newer = 3 the decision would flip (mean 4 vs 0 instead of 1 vs 10/3).
        (5, [0.0, 0.0, 10.0, 1.0, 1.0], [1.0, 1.0], [0.0, 0.0, 10.0]),
        # Even window 4: 2 and 2.
        (4, [4.0, 0.0, 1.0, 2.0], [1.0, 2.0], [4.0, 0.0]),
        # Window 3 after wrapping around the ring: the last 3 of 5 losses, oldest first.
        (3, [9.0, 9.0, 1.0, 5.0, 2.0], [2.0], [1.0, 5.0]),
    ],
)
def test_loss_trend_compares_newer_half_with_older_rest(window, losses, newer, older):
    controller = LossTrendController(
        initial_lr=0.01, window=window, decrease=0.5, increase=2.0, min_lr=1e-6, max_lr=100.0
    )
    lrs, diagnostics = drive(controller, losses)
    trend = np.mean(newer) - np.mean(older)
    np.testing.assert_allclose(diagnostics["trend"][-1], trend, rtol=1e-6)
    expected_lrs, _ = run_loss_trend_reference(
        losses, initial_lr=0.01, window=window, decrease=0.5, increase=2.0, max_lr=100.0
    )
    np.testing.assert_allclose(lrs, expected_lrs, rtol=RTOL)
    assert lrs[-1] == F32(lrs[-2] * (0.5 if trend > 0 else 2.0))


def test_loss_trend_equal_halves_count_as_not_rising():
    # A flat loss has trend exactly 0 (0.5 and 2.0 are exact in float32): "newer strictly
    # higher" is false, so the LR increases every batch until it sticks at max_lr.
    controller = LossTrendController(initial_lr=1e-3, window=5, increase=2.0, max_lr=0.1)
    lrs, diagnostics = drive(controller, np.full(20, 0.5))
    expected = np.minimum(1e-3 * 2.0 ** np.maximum(np.arange(20) - 3, 0), 0.1)
    np.testing.assert_allclose(lrs, expected, rtol=RTOL)
    assert lrs[-1] == F32(0.1)
    np.testing.assert_array_equal(diagnostics["trend"], 0.0)


def test_loss_trend_clips_to_min_lr_on_rising_loss():
    controller = LossTrendController(
        initial_lr=1e-2, window=6, decrease=0.5, min_lr=1e-4, max_lr=1.0
    )
    lrs, _ = drive(controller, np.arange(30, dtype=F32))
    expected = np.maximum(1e-2 * 0.5 ** np.maximum(np.arange(30) - 4, 0), 1e-4)
    np.testing.assert_allclose(lrs, expected, rtol=RTOL)
    assert lrs[-1] == F32(1e-4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_loss_trend_non_finite_loss_is_skipped(bad):
    window = 4
    losses = np.array([3.0, 2.0, bad, 1.5, 1.0, 4.0, bad, 5.0, 0.5], F32)
    controller = LossTrendController(
        initial_lr=0.01, window=window, decrease=0.5, increase=2.0, max_lr=10.0
    )
    lrs, diagnostics = drive(controller, losses)
    # The bad batch does not count: the window of 4 finite losses is full at index 4.
    np.testing.assert_array_equal(lrs[:4], np.full(4, F32(0.01)))
    assert lrs[4] == F32(0.02)  # [3, 2 | 1.5, 1]: falling
    assert lrs[5] == F32(0.01)  # [2, 1.5 | 1, 4]: rising
    assert lrs[6] == lrs[5]  # bad loss: LR unchanged
    assert lrs[7] == F32(0.005)  # [1.5, 1 | 4, 5]: the bad loss left no trace
    assert lrs[8] == F32(0.0025)  # [1, 4 | 5, 0.5]: 2.75 vs 2.5, still rising
    np.testing.assert_allclose(diagnostics["trend"][7], 4.5 - 1.25, rtol=1e-6)
    expected_lrs, _ = run_loss_trend_reference(
        losses, initial_lr=0.01, window=window, decrease=0.5, increase=2.0, max_lr=10.0
    )
    np.testing.assert_array_equal(lrs, expected_lrs)


def test_loss_trend_state_survives_checkpoint(tmp_path):
    kwargs = {
        "initial_lr": 0.01,
        "window": 40,
        "decrease": 0.8,
        "increase": 1.1,
        "min_lr": 1e-4,
        "max_lr": 0.5,
    }
    losses = wavy_losses(250, seed=3, period=70)
    original = LossTrendController(**kwargs)
    drive(original, losses[:150])
    path = tf.train.Checkpoint(controller=original).save(str(tmp_path / "ckpt"))

    restored = LossTrendController(**kwargs)
    tf.train.Checkpoint(controller=restored).restore(path).assert_consumed()
    continued, _ = drive(original, losses[150:], steps=np.arange(150, 250))
    resumed, _ = drive(restored, losses[150:], steps=np.arange(150, 250))
    np.testing.assert_array_equal(resumed, continued)
    # And both follow the uninterrupted rule (a fresh controller would restart the window).
    expected, _ = run_loss_trend_reference(losses, **kwargs)
    np.testing.assert_allclose(resumed, expected[150:], rtol=RTOL)


# ---------------------------------------------------------------------------------------
# CyclicalController
# ---------------------------------------------------------------------------------------

CYCLICAL_DEFAULTS = {
    "min_lr": 1e-3,
    "max_lr": 1e-2,
    "cycle_length": 1000,
    "nudge_below_loss": 1.0,
    "nudge_factor": 1.01,
}


def cyclical_reference(steps, losses, min_lr, max_lr, cycle_length, nudge_below_loss, nudge_factor):
    """Returns (lr, base, factor) per batch, from the documented rule."""
    x = (np.asarray(steps, np.int64) % cycle_length) / cycle_length
    base = min_lr + 0.5 * (max_lr - min_lr) * (1 + np.cos(np.pi * x))
    below = np.asarray(losses, F32) < F32(nudge_below_loss)  # NaN compares False
    factor = np.where(below, nudge_factor, 1.0)
    return base * factor, base, factor


CYCLICAL_CASES = [
    {},  # cycle 1000
    {
        "min_lr": 1e-4,
        "max_lr": 0.3,
        "cycle_length": 64,
        "nudge_below_loss": 2.0,
        "nudge_factor": 1.5,
    },
    {
        "min_lr": 0.05,
        "max_lr": 0.05,
        "cycle_length": 7,
        "nudge_below_loss": -1.0,
        "nudge_factor": 0.5,
    },  # flat cycle; a nudge below 1 (allowed, > 0)
    {"cycle_length": 1},  # every batch starts a cycle
]


@pytest.mark.parametrize("kwargs", CYCLICAL_CASES)
def test_cyclical_matches_reference_rule(kwargs):
    params = {**CYCLICAL_DEFAULTS, **kwargs}
    # Stateless: for the 1000-batch default cycle, its start and the restart at 1000.
    steps = np.r_[0:300, 850:1150] if params["cycle_length"] == 1000 else np.arange(300)
    n = len(steps)
    rng = np.random.default_rng(4)
    threshold = params["nudge_below_loss"]
    losses = rng.uniform(threshold - 1.0, threshold + 1.0, n).astype(F32)
    losses[[0, 3, 4, 5, 6]] = [threshold, np.nan, np.inf, -np.inf, threshold - 1e-3]
    lrs, diagnostics = drive(CyclicalController(**kwargs), losses, steps=steps)
    expected, base, factor = cyclical_reference(steps, losses, **params)
    np.testing.assert_allclose(lrs, expected, rtol=RTOL)
    np.testing.assert_allclose(diagnostics["base"], base, rtol=RTOL)
    np.testing.assert_allclose(diagnostics["factor"], factor, rtol=1e-7)


@pytest.mark.parametrize("cycle_length", [10, 1000, 999_983])
def test_cyclical_restarts_at_max_lr_on_cycle_boundaries(cycle_length):
    params = {**CYCLICAL_DEFAULTS, "min_lr": 0.01, "max_lr": 0.1, "cycle_length": cycle_length}
    ks = [1, 2, 3, 1000, 10**6, 10**9]
    steps = [s for k in ks for s in (k * cycle_length - 1, k * cycle_length, k * cycle_length + 1)]
    losses = np.full(len(steps), 5.0)  # no nudge
    lrs, _ = drive(CyclicalController(**params), losses, steps=steps)
    expected, _, _ = cyclical_reference(steps, losses, **params)
    np.testing.assert_allclose(lrs, expected, rtol=RTOL)
    np.testing.assert_allclose(lrs[1::3], 0.1, rtol=RTOL)  # step = k * cycle_length
    # The batch before a restart is the cycle's lowest LR, just above min_lr.
    assert np.all(lrs[0::3] < lrs[2::3]) and np.all(lrs[0::3] >= F32(0.01))


@pytest.mark.parametrize("loss", [np.nan, np.inf, 1.0, 1.5])
def test_cyclical_nudge_needs_a_loss_strictly_below_threshold(loss):
    controller = CyclicalController(cycle_length=100, nudge_factor=1.5)
    lrs, diagnostics = drive(controller, [0.5, loss])
    np.testing.assert_array_equal(diagnostics["factor"], [1.5, 1.0])
    np.testing.assert_allclose(lrs[1], diagnostics["base"][1], rtol=1e-7)


# ---------------------------------------------------------------------------------------
# All controllers: compiled use, first batch
# ---------------------------------------------------------------------------------------

CONTROLLER_FACTORIES = {
    "constant": lambda: ConstantController(0.05),
    "warmup_cosine": lambda: WarmupCosineController(0.1, 20, 200, init_lr=0.01, end_lr=1e-3),
    "grad_norm": lambda: GradNormController(),
    "loss_trend": lambda: LossTrendController(window=9, decrease=0.9, increase=1.1, max_lr=0.1),
    "cyclical": lambda: CyclicalController(cycle_length=50),
}


@pytest.mark.parametrize("name", sorted(CONTROLLER_FACTORIES))
def test_controller_runs_inside_tf_function_traced_once(name):
    n = 200
    rng = np.random.default_rng(5)
    losses = wavy_losses(n, seed=5, period=40) - 1.0  # around the Cyclical nudge threshold
    losses[[17, 90]] = [np.nan, np.inf]
    norms = rng.lognormal(-1.0, 3.0, n).astype(F32)
    norms[[3, 4]] = [0.0, 1e-3]

    compiled = CONTROLLER_FACTORIES[name]()

    @tf.function
    def compute(step, loss, norm):
        out = compiled.compute(make_signals(step, loss, norm))
        return out.lr, out.diagnostics

    lrs, diagnostics = [], collections.defaultdict(list)
    for step in range(n):
        lr, diag = compute(
            tf.constant(step, tf.int64), tf.constant(losses[step]), tf.constant(norms[step])
        )
        lrs.append(lr.numpy())
        for key, value in diag.items():
            diagnostics[key].append(value.numpy())
    assert compute.experimental_get_tracing_count() == 1

    eager_lrs, eager_diagnostics = drive(CONTROLLER_FACTORIES[name](), losses, norms)
    np.testing.assert_allclose(lrs, eager_lrs, rtol=RTOL)
    assert set(diagnostics) == set(eager_diagnostics)
    for key, values in eager_diagnostics.items():
        np.testing.assert_allclose(diagnostics[key], values, rtol=1e-4, atol=1e-6)
    if name != "constant":
        assert len(np.unique(eager_lrs)) > 10  # the LR really moved


@pytest.mark.parametrize("name", sorted(set(CONTROLLER_FACTORIES) - {"grad_norm"}))
def test_controller_first_batch_uses_initial_lr(name):
    # GradNorm is left out: its first LR depends on the first batch's gradient norm.
    controller = CONTROLLER_FACTORIES[name]()
    lrs, _ = drive(controller, [5.0], norms=[1.0])
    np.testing.assert_allclose(lrs[0], controller.initial_lr, rtol=RTOL)


# ---------------------------------------------------------------------------------------
# Constructor validation
# ---------------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (ConstantController, {"lr": 0.0}, "lr"),
    (ConstantController, {"lr": -0.1}, "lr"),
    (ConstantController, {"lr": True}, "lr"),
    (ConstantController, {"lr": "0.1"}, "lr"),
    (ConstantController, {"lr": float("nan")}, "lr"),
    (WarmupCosineController, {"base_lr": 0.0}, "base_lr"),
    (WarmupCosineController, {"base_lr": -1.0}, "base_lr"),
    (WarmupCosineController, {"base_lr": "0.1"}, "base_lr"),
    (WarmupCosineController, {"warmup_steps": -1}, "warmup_steps"),
    (WarmupCosineController, {"warmup_steps": 10.0}, "warmup_steps"),
    (WarmupCosineController, {"warmup_steps": True}, "warmup_steps"),
    (WarmupCosineController, {"warmup_steps": 100, "decay_steps": 100}, "decay_steps"),
    (WarmupCosineController, {"warmup_steps": 100, "decay_steps": 50}, "decay_steps"),
    (WarmupCosineController, {"warmup_steps": 0, "decay_steps": 0}, "decay_steps"),
    (WarmupCosineController, {"decay_steps": "2000"}, "decay_steps"),
    (WarmupCosineController, {"init_lr": -1e-3}, "init_lr"),
    (WarmupCosineController, {"init_lr": False}, "init_lr"),
    (WarmupCosineController, {"end_lr": -1e-3}, "end_lr"),
    (WarmupCosineController, {"end_lr": "0"}, "end_lr"),
    (GradNormController, {"base_lr": 0.0}, "base_lr"),
    (GradNormController, {"base_lr": -0.1}, "base_lr"),
    (GradNormController, {"low_norm_lr": 0.0}, "low_norm_lr"),
    (GradNormController, {"low_norm_lr": -0.11}, "low_norm_lr"),
    (GradNormController, {"min_lr": 0.0}, "min_lr"),
    (GradNormController, {"min_lr": 0.2}, "min_lr"),  # above base_lr
    (GradNormController, {"slope": -0.005}, "slope"),
    (GradNormController, {"slope": "0.005"}, "slope"),
    (GradNormController, {"low_norm_threshold": True}, "low_norm_threshold"),
    (GradNormController, {"low_norm_threshold": "1e-3"}, "low_norm_threshold"),
    (LossTrendController, {}, "max_lr"),  # the required bound is missing
    (LossTrendController, {"max_lr": "0.1"}, "max_lr"),
    (LossTrendController, {"max_lr": 0.0}, "max_lr"),
    (LossTrendController, {"max_lr": 0.1, "initial_lr": 0.0}, "initial_lr"),
    (LossTrendController, {"max_lr": 0.1, "initial_lr": -1e-3}, "initial_lr"),
    (LossTrendController, {"max_lr": 0.1, "initial_lr": 0.5}, "initial_lr"),  # > max_lr
    (LossTrendController, {"max_lr": 0.1, "window": 1}, "window"),
    (LossTrendController, {"max_lr": 0.1, "window": 0}, "window"),
    (LossTrendController, {"max_lr": 0.1, "window": 10.0}, "window"),
    (LossTrendController, {"max_lr": 0.1, "window": True}, "window"),
    (LossTrendController, {"max_lr": 0.1, "decrease": 0.0}, "decrease"),
    (LossTrendController, {"max_lr": 0.1, "decrease": 1.5}, "decrease"),
    (LossTrendController, {"max_lr": 0.1, "increase": 0.9}, "increase"),
    (LossTrendController, {"max_lr": 0.1, "increase": True}, "increase"),
    (LossTrendController, {"max_lr": 0.1, "min_lr": 0.0}, "min_lr"),
    (LossTrendController, {"max_lr": 0.1, "min_lr": 0.2}, "min_lr"),  # above max_lr
    (CyclicalController, {"min_lr": 0.0}, "min_lr"),
    (CyclicalController, {"min_lr": -1e-3}, "min_lr"),
    (CyclicalController, {"max_lr": 0.0}, "max_lr"),
    (CyclicalController, {"min_lr": 0.1, "max_lr": 0.01}, "min_lr"),
    (CyclicalController, {"cycle_length": 0}, "cycle_length"),
    (CyclicalController, {"cycle_length": 100.0}, "cycle_length"),
    (CyclicalController, {"nudge_factor": 0.0}, "nudge_factor"),
    (CyclicalController, {"nudge_factor": "1.01"}, "nudge_factor"),
    (CyclicalController, {"nudge_below_loss": True}, "nudge_below_loss"),
    (CyclicalController, {"nudge_below_loss": float("inf")}, "nudge_below_loss"),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "param"),
    BAD_ARGUMENTS,
    ids=[f"{c.__name__}-{k}" for c, k, _ in BAD_ARGUMENTS],
)
def test_constructor_rejects_bad_argument_naming_it(cls, kwargs, param):
    with pytest.raises(ValueError, match=rf"\b{cls.__name__}\.{param}\b"):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (ConstantController, {"lr": 1}),  # an int is a number
        (WarmupCosineController, {"warmup_steps": 0, "decay_steps": 1}),
        (WarmupCosineController, {"warmup_steps": 99, "decay_steps": 100}),
        (GradNormController, {"min_lr": 0.1, "slope": 0}),
        (LossTrendController, {"window": 2, "min_lr": 0.1, "max_lr": 0.1, "initial_lr": 0.1}),
        (LossTrendController, {"decrease": 1.0, "increase": 1.0, "max_lr": 1}),
        (CyclicalController, {"min_lr": 0.01, "max_lr": 0.01, "cycle_length": 1}),
    ],
)
def test_constructor_accepts_boundary_values(cls, kwargs):
    cls(**kwargs)
