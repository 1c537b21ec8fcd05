"""LR range test: the ramp, the in-graph smoothing and divergence, the suggestions, and
the command end to end."""

from __future__ import annotations

import glob
import math
import os

import numpy as np
import pytest

from lrresearch.cli import commands as cli
from lrresearch.controllers.signals import make_signals
from lrresearch.studies.lr_find import (
    LRRangeController,
    check_descent,
    fastai_window,
    slide,
    suggest,
    suggest_all,
    valley,
    y_range,
)
from tests.support import Events


def test_range_ramp_smoothing_and_divergence_match_a_reference():
    rng = np.random.default_rng(0)
    n = 120
    losses = np.concatenate([2.3 - np.linspace(0, 1.5, 80), np.linspace(0.8, 9.0, 40)])
    losses += 0.05 * rng.normal(size=n)
    ctrl = LRRangeController(1e-5, 10.0, n, smoothing=0.9, diverge_factor=3.0)
    lrs, smoothed, diverged = [], [], []
    for t, loss in enumerate(losses):
        out = ctrl.compute(make_signals(t, float(loss)))
        lrs.append(float(out.lr))
        smoothed.append(float(out.diagnostics["smoothed_loss"]))
        diverged.append(bool(ctrl.diverged.numpy()))
    t = np.arange(n)
    np.testing.assert_allclose(lrs, 1e-5 * (10.0 / 1e-5) ** (t / (n - 1)), rtol=1e-5)
    ema, ref, best, ref_div, flag = 0.0, [], math.inf, [], False
    for i, loss in enumerate(losses):
        ema = 0.9 * ema + 0.1 * loss
        s = ema / (1 - 0.9 ** (i + 1))
        ref.append(s)
        flag = flag or s > 3.0 * best
        best = min(best, s)
        ref_div.append(flag)
    np.testing.assert_allclose(smoothed, ref, rtol=1e-5)
    assert diverged == ref_div and any(ref_div) and not ref_div[0]
    np.testing.assert_allclose(ctrl.lrs.numpy(), lrs, rtol=1e-7)


def test_suggestions_on_a_known_curve():
    lrs = np.geomspace(1e-5, 10, 300)
    x = np.log10(lrs)
    # Flat, then a descent steepest at lr = 1e-2, a minimum at lr = 1, then divergence.
    smoothed = 2.0 - np.tanh((x + 2) * 2.0) + np.where(x > 0, 5 * x**2, 0.0)
    steepest, min10 = suggest(lrs, smoothed)
    assert steepest == pytest.approx(1e-2, rel=0.06)
    assert min10 == pytest.approx(lrs[np.argmin(smoothed)] / 10)
    assert steepest < lrs[np.argmin(smoothed)]


def test_linear_mode_ramps_the_lr_linearly_to_end_lr():
    ctrl = LRRangeController(1e-3, 2.0, 50, mode="linear")
    lrs = [float(ctrl.compute(make_signals(t, 1.0)).lr) for t in range(50)]
    np.testing.assert_allclose(lrs, 1e-3 + (2.0 - 1e-3) * np.arange(50) / 49, rtol=1e-6)
    with pytest.raises(ValueError, match="mode must be one of"):
        LRRangeController(1e-3, 2.0, 50, mode="cosine")


def test_valley_is_about_halfway_down_the_longest_decreasing_run():
    lrs = 10.0 ** np.arange(9)
    # Longest strictly decreasing subsequence: 5, 4, 3, 2, 1, 0.5 (indices 1..6), which
    # fastai counts from start = end - length = 6 - 6 = 0: sections 2, index 0 + 2 + 1.
    assert valley(lrs, np.array([3, 5, 4, 3, 2, 1, 0.5, 2, 8])) == lrs[3]
    # Nothing decreases: start = end = 0.
    assert valley(lrs, np.arange(9.0)) == lrs[0]


def test_slide_stops_where_the_slopes_lr_diff_apart_agree():
    lrs = 10.0 ** np.arange(9)
    # np.gradient: [-1, -1, -1, -1, -0.5, 0.5, 1.5, 3, 4]. Pairs (right, right - 3) from
    # the end differ by 3.5, 3.5, 2.5, 1.5, then 0.5 <= 0.6 (indices 4 and 1): the
    # last pair that differed had its left end at index 2.
    losses = np.array([5, 4, 3, 2, 1, 1, 2, 4, 8.0])
    assert slide(lrs, losses, lr_diff=3, thresh=0.6) == lrs[2]
    assert slide(lrs, losses, lr_diff=3, thresh=0.6, adjust_value=0.5) == lrs[2] / 2
    with pytest.raises(ValueError, match="more than lr_diff=15"):
        slide(lrs, losses)


def test_fastai_suggestions_read_the_trimmed_curve_up_to_divergence():
    lrs = np.geomspace(1e-5, 10, 300)
    x = np.log10(lrs)
    smoothed = 2.0 - np.tanh((x + 2) * 2.0) + np.where(x > 0, 5 * x**2, 0.0)
    window_lrs, window_loss = fastai_window(lrs, smoothed, 300, 4.0)
    first, diverged = 30, int(np.argmax(smoothed > 4 * np.minimum.accumulate(smoothed)))
    np.testing.assert_array_equal(window_lrs, lrs[first : diverged + 1 - 5])
    found = suggest_all(lrs, smoothed, 300, 4.0)
    assert list(found) == ["steepest", "min10", "valley", "slide"]
    assert found["valley"] == valley(window_lrs, window_loss)
    # The valley lies on the descent, below the minimum (lr ~0.99).
    assert 1e-3 < found["valley"] < 0.5 and np.isfinite(found["slide"])


@pytest.mark.slow
def test_lr_find_command_writes_plot_summaries_and_binding(tmp_path, capsys):
    gin_out = tmp_path / "suggested.gin"
    argv = [
        "lr-find",
        "--num_steps=60",
        "--start_lr=1e-4",
        "--end_lr=100",
        "--gin_param=mlp.hidden = (16,)",
        "--gin_param=Trainer.steps_per_loop = 10",
        f"--logdir={tmp_path}",
        "--run_name=find",
        "--binding=GradNormController.base_lr",
        f"--write_gin={gin_out}",
        "--quiet",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    run = tmp_path / "find"
    assert (run / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert glob.glob(str(run / "events.out.tfevents.*"))
    events = Events(run)
    lr = events.scalar("lr")
    assert len(events.scalar("controller/smoothed_loss")) == len(lr) <= 60
    np.testing.assert_allclose(lr, 1e-4 * (1e6) ** (np.arange(len(lr)) / 59), rtol=1e-4)
    binding = next(line for line in out.splitlines() if line.startswith("GradNormController"))
    value = float(binding.split("=")[1])
    assert 1e-4 <= value <= 100
    assert binding in gin_out.read_text()
    # Neither the run nor the gin file is ever overwritten.
    assert cli.main(argv) == 2
    assert "never overwritten" in capsys.readouterr().err
    os.remove(gin_out)
    assert cli.main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_lr_find_rejects_an_inverted_range(tmp_path, capsys):
    assert cli.main(["lr-find", "--start_lr=1", "--end_lr=0.1", f"--logdir={tmp_path}"]) == 2
    assert "start_lr" in capsys.readouterr().err


LRS = np.geomspace(1e-6, 10, 200)


def descending_then_exploding() -> np.ndarray:
    """The README example's shape: flat at 1.42, down to 1.05 near lr 1, then 4e5."""
    x = np.log10(LRS)
    curve = 1.42 - 0.37 * np.clip((x + 4) / 4, 0, 1) ** 2
    curve[-8:] = np.geomspace(5.0, 4.1e5, 8)
    return curve


def test_a_curve_with_a_descent_is_accepted_and_plotted_in_its_useful_range():
    curve = descending_then_exploding()
    assert check_descent(LRS, curve, diverge_factor=4.0) is None
    bottom, top = y_range(curve)
    assert 1.0 < bottom < 1.05 and 1.42 < top < 2.0  # not -20,000..4e5


@pytest.mark.parametrize(
    ("curve", "needles"),
    [
        # Diverges at once: the LR was too high from the first batch.
        (
            np.concatenate([[2.3], np.geomspace(50, 1e8, 199)]),
            ["diverged at batch 1", "lower --start_lr (e.g. 1e-09)"],
        ),
        # Blows up, recovers to its first value, then diverges: no descent below the start.
        (
            np.concatenate(
                [[1.42], np.full(20, 3.4), np.linspace(3.4, 1.42, 100), np.geomspace(1.42, 100, 79)]
            ),
            [
                "did not descend before it diverged",
                "0.0% below its starting level 1.42",
                "lower --start_lr",
                "--diverge_factor",
            ],
        ),
        # Flat: the LRs tried were too low.
        (1.42 + 0.01 * np.sin(np.arange(200)), ["stayed flat", "higher --end_lr", "--num_steps"]),
    ],
    ids=["at-once", "recovers", "flat"],
)
def test_a_curve_without_descent_gets_a_reason_and_a_fix(curve, needles):
    reason = check_descent(LRS, curve, diverge_factor=4.0)
    for needle in needles:
        assert needle in reason, (needle, reason)


def test_lr_find_refuses_to_suggest_when_the_loss_diverges_at_once(tmp_path, capsys):
    argv = [
        "lr-find",
        "--num_steps=40",
        "--start_lr=30",
        "--end_lr=3000",
        "--gin_param=mlp.hidden = (16,)",
        f"--logdir={tmp_path}",
        "--run_name=hot",
        "--quiet",
    ]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert "ConstantController.lr" not in captured.out  # no suggestion
    assert "lr-find: no LR to suggest" in captured.err and "--start_lr" in captured.err
    assert len(captured.err.splitlines()) <= 3
    assert (tmp_path / "hot" / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lr_find_linear_mode_prints_all_four_and_binds_the_chosen_one(tmp_path, capsys):
    argv = [
        "lr-find",
        "--num_steps=40",
        "--start_lr=1e-3",
        "--end_lr=20",
        "--mode=linear",
        "--suggestion=valley",
        "--gin_param=mlp.hidden = (16,)",
        f"--logdir={tmp_path}",
        "--run_name=linear",
        "--quiet",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    lr = Events(tmp_path / "linear").scalar("lr")
    np.testing.assert_allclose(lr, 1e-3 + (20 - 1e-3) * np.arange(len(lr)) / 39, rtol=1e-5)
    summary = next(line for line in out.splitlines() if line.startswith("lr-find:"))
    values = dict(part.rsplit(" ", 1) for part in summary.split("suggestions: ")[1].split(", "))
    assert list(values) == ["steepest", "min/10", "valley", "slide"]
    assert f"ConstantController.lr = {values['valley']}" in out.splitlines()
