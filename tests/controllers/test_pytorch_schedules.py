"""PyTorch-semantics schedules against numpy re-implementations of PyTorch's own
update rules (iterative where PyTorch is iterative), over at least 3 cycles.

`tools/check_torch_parity.py` compares with torch itself where torch is installed.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import (
    CosineRestartsController,
    CyclicController,
    OneCycleController,
)
from lrresearch.controllers.signals import make_signals
from tests.support import REPO


def ours(controller, steps: int) -> np.ndarray:
    compute = tf.function(lambda t: controller.compute(make_signals(t, 1.0, 1.0)).lr)
    lrs = np.array([float(compute(tf.constant(t, tf.int64))) for t in range(steps)])
    assert compute.experimental_get_tracing_count() == 1
    return lrs


def one_cycle_reference(
    max_lr, total, pct_start=0.3, strategy="cos", div=25.0, final_div=1e4, three_phase=False
):
    initial = max_lr / div
    minimum = initial / final_div
    if three_phase:
        phases = [
            (pct_start * total - 1, initial, max_lr),
            (2 * pct_start * total - 2, max_lr, initial),
            (total - 1, initial, minimum),
        ]
    else:
        phases = [(pct_start * total - 1, initial, max_lr), (total - 1, max_lr, minimum)]
    return np.array([_one_cycle_value(phases, t, strategy) for t in range(total)])


def _one_cycle_value(phases, t, strategy):
    """OneCycleLR's value at step `t`: the phase holding `t`, annealed from its start to
    its end value (cosine or linear), as `OneCycleLR.get_lr` computes it."""
    start_step = 0.0
    for i, (end_step, start, end) in enumerate(phases):
        if t <= end_step or i == len(phases) - 1:
            pct = (t - start_step) / (end_step - start_step)
            if strategy == "cos":
                return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)
            return (end - start) * pct + start
        start_step = end_step
    raise AssertionError(t)


def cyclic_reference(base, top, up, down, mode, gamma, steps):
    total = up + down
    ratio = up / total
    out = []
    for t in range(steps):
        cycle = math.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        scale = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        factor = {"triangular": 1.0, "triangular2": 1 / 2.0 ** (cycle - 1), "exp_range": gamma**t}[
            mode
        ]
        out.append(base + (top - base) * scale * factor)
    return np.array(out)


def restarts_reference(base, t0, t_mult, eta_min, steps):
    """PyTorch's own bookkeeping: T_cur += 1 per step; restart when T_cur >= T_i."""
    t_cur, t_i, out = 0, t0, []
    for _ in range(steps):
        out.append(eta_min + (base - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2)
        t_cur += 1
        if t_cur >= t_i:
            t_cur -= t_i
            t_i *= t_mult
    return np.array(out)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_lr=0.1, total=600),
        dict(max_lr=0.3, total=497, pct_start=0.25, strategy="linear", div=10, final_div=100),
        dict(max_lr=0.05, total=500, pct_start=0.4, three_phase=True),
        dict(max_lr=1.0, total=333, strategy="linear", three_phase=True),
    ],
)
def test_one_cycle_matches_pytorch_rule(kwargs):
    ctrl = OneCycleController(
        max_lr=kwargs["max_lr"],
        total_steps=kwargs["total"],
        pct_start=kwargs.get("pct_start", 0.3),
        anneal_strategy=kwargs.get("strategy", "cos"),
        div_factor=kwargs.get("div", 25.0),
        final_div_factor=kwargs.get("final_div", 1e4),
        three_phase=kwargs.get("three_phase", False),
    )
    expected = one_cycle_reference(**kwargs)
    np.testing.assert_allclose(ours(ctrl, kwargs["total"]), expected, rtol=1e-6)
    assert ctrl.initial_lr == pytest.approx(expected[0])
    assert expected.max() == pytest.approx(kwargs["max_lr"], rel=1e-2)


def test_one_cycle_holds_its_final_lr_after_total_steps():
    ctrl = OneCycleController(max_lr=0.1, total_steps=100)
    lrs = ours(ctrl, 130)
    np.testing.assert_allclose(lrs[99:], lrs[99], rtol=1e-7)
    assert lrs[99] == pytest.approx(0.1 / 25 / 1e4, rel=1e-5)


@pytest.mark.parametrize(
    "mode,up,down,gamma",
    [
        ("triangular", 100, None, 1.0),
        ("triangular2", 60, 140, 1.0),
        ("exp_range", 50, 75, 0.995),
        ("triangular", 1, 1, 1.0),
    ],
)
def test_cyclic_matches_pytorch_rule_over_several_cycles(mode, up, down, gamma):
    ctrl = CyclicController(
        base_lr=1e-3, max_lr=6e-3, step_size_up=up, step_size_down=down, mode=mode, gamma=gamma
    )
    steps = 4 * (up + (down or up)) + 7
    expected = cyclic_reference(1e-3, 6e-3, up, down or up, mode, gamma, steps)
    np.testing.assert_allclose(ours(ctrl, steps), expected, rtol=1e-6)


@pytest.mark.parametrize("t0,t_mult,eta_min", [(50, 1, 0.0), (20, 2, 1e-4), (7, 3, 1e-3)])
def test_cosine_restarts_matches_pytorch_bookkeeping(t0, t_mult, eta_min):
    steps = t0 * (1 + t_mult + t_mult**2 + t_mult**3) + 5  # four cycles and a bit
    ctrl = CosineRestartsController(base_lr=0.1, T_0=t0, T_mult=t_mult, eta_min=eta_min)
    expected = restarts_reference(0.1, t0, t_mult, eta_min, steps)
    got = ours(ctrl, steps)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Every restart starts again at base_lr.
    starts = [
        t0 * (t_mult**n - 1) // max(t_mult - 1, 1) if t_mult > 1 else t0 * n for n in range(4)
    ]
    np.testing.assert_allclose(got[starts], 0.1, rtol=1e-6)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: OneCycleController(pct_start=1.2), "OneCycleController.pct_start"),
        (lambda: OneCycleController(anneal_strategy="cosine"), "OneCycleController.anneal"),
        (lambda: OneCycleController(total_steps=1), "OneCycleController.total_steps"),
        (lambda: CyclicController(mode="tri"), "CyclicController.mode"),
        (lambda: CyclicController(step_size_up=0), "CyclicController.step_size_up"),
        (lambda: CosineRestartsController(T_mult=0), "CosineRestartsController.T_mult"),
        (lambda: CosineRestartsController(T_0=2.5), "CosineRestartsController.T_0"),
        (lambda: CosineRestartsController(eta_min=1.0), "CosineRestartsController.eta_min"),
    ],
)
def test_bad_arguments_name_the_parameter(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# -- cyclic momentum (cycle_momentum=True) ------------------------------------------


def one_cycle_momentum_reference(
    total, pct_start=0.3, strategy="cos", three_phase=False, low=0.85, high=0.95, steps=None
):
    """OneCycleLR.get_lr's momentum, written out from its `_schedule_phases`: down from
    `high` to `low` while the LR rises, back up while it falls (three-phase: held)."""
    if three_phase:
        phases = [
            (pct_start * total - 1, high, low),
            (2 * pct_start * total - 2, low, high),
            (total - 1, high, high),
        ]
    else:
        phases = [(pct_start * total - 1, high, low), (total - 1, low, high)]
    # Ours holds the final value past `total`; PyTorch raises there.
    steps = range(steps or total)
    return np.array([_one_cycle_value(phases, min(t, total - 1), strategy) for t in steps])


def cyclic_momentum_reference(low, high, up, down, mode, gamma, steps):
    """CyclicLR.get_lr's momentum: `max_momentum - base_height * scale_fn(...)`, with
    `scale_fn(cycle)` for the triangular modes and `scale_fn(last_epoch)` for exp_range."""
    total = up + down
    ratio = up / total
    out = []
    for t in range(steps):
        cycle = math.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        scale_factor = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        scale_fn = {"triangular": 1.0, "triangular2": 1 / 2.0 ** (cycle - 1)}.get(mode)
        if mode == "exp_range":
            scale_fn = gamma**t
        out.append(high - (high - low) * scale_factor * scale_fn)
    return np.array(out)


def our_momenta(controller, steps: int) -> np.ndarray:
    compute = tf.function(lambda t: controller.compute(make_signals(t, 1.0, 1.0)).momentum)
    momenta = np.array([float(compute(tf.constant(t, tf.int64))) for t in range(steps)])
    assert compute.experimental_get_tracing_count() == 1
    return momenta


FLOAT32_ROUNDING = 2.0**-24


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(total=600),
        dict(total=497, pct_start=0.25, strategy="linear", low=0.8, high=0.9),
        dict(total=500, pct_start=0.4, three_phase=True),
        dict(total=333, strategy="linear", three_phase=True, low=0.5, high=0.99),
    ],
)
def test_one_cycle_momentum_matches_pytorch_rule(kwargs):
    ctrl = OneCycleController(
        total_steps=kwargs["total"],
        pct_start=kwargs.get("pct_start", 0.3),
        anneal_strategy=kwargs.get("strategy", "cos"),
        three_phase=kwargs.get("three_phase", False),
        cycle_momentum=True,
        base_momentum=kwargs.get("low", 0.85),
        max_momentum=kwargs.get("high", 0.95),
    )
    steps = kwargs["total"] + 20
    expected = one_cycle_momentum_reference(**kwargs, steps=steps)
    np.testing.assert_allclose(our_momenta(ctrl, steps), expected, rtol=FLOAT32_ROUNDING)
    assert expected[0] == pytest.approx(kwargs.get("high", 0.95))
    assert expected.min() == pytest.approx(kwargs.get("low", 0.85), abs=1e-3)
    assert ctrl.optimizer_hyperparameters == {"momentum"}


@pytest.mark.parametrize(
    "mode,up,down,gamma",
    [("triangular", 100, None, 1.0), ("triangular2", 60, 140, 1.0), ("exp_range", 50, 75, 0.995)],
)
def test_cyclic_momentum_matches_pytorch_rule_over_several_cycles(mode, up, down, gamma):
    ctrl = CyclicController(
        step_size_up=up, step_size_down=down, mode=mode, gamma=gamma, cycle_momentum=True
    )
    steps = 4 * (up + (down or up)) + 7
    expected = cyclic_momentum_reference(0.8, 0.9, up, down or up, mode, gamma, steps)
    np.testing.assert_allclose(our_momenta(ctrl, steps), expected, rtol=FLOAT32_ROUNDING)


def test_momentum_is_not_cycled_by_default():
    """PyTorch's default is cycle_momentum=True; ours is False, so configurations
    written before it keep their results."""
    for ctrl in (OneCycleController(total_steps=100), CyclicController()):
        assert ctrl.compute(make_signals(0, 1.0, 1.0)).momentum is None
        assert ctrl.optimizer_hyperparameters == frozenset()


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: OneCycleController(cycle_momentum=1), "OneCycleController.cycle_momentum"),
        (lambda: OneCycleController(base_momentum=-0.1), "OneCycleController.base_momentum"),
        (lambda: OneCycleController(max_momentum=1.0), "OneCycleController.max_momentum"),
        (lambda: CyclicController(max_momentum=float("nan")), "CyclicController.max_momentum"),
    ],
)
def test_bad_momentum_arguments_name_the_parameter(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.subprocess
def test_torch_parity_tool_without_torch_says_how_to_point_it_at_torch():
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here")
    done = subprocess.run(
        [sys.executable, "tools/check_torch_parity.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr
    assert "PYTHONPATH=/tmp/refpkgs" in done.stderr and len(done.stderr.splitlines()) == 1
