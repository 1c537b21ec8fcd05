"""tools/frozen_scoring.py (the AlgoPerf-style scoring of docs/results-frozen-config.md)
against hand-computed examples, and tools/frozen_config.py's plan: which value the
calibration freezes, that a run in two roles is planned once, and the baseline's
`lrresearch tune` command (tools/frozen_tuning.py). No training."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))  # the scripts import each other by name

import frozen_config  # noqa: E402
import frozen_methods as fm  # noqa: E402
import frozen_scoring as sc  # noqa: E402

INF = math.inf


def test_final_metric_is_an_error_rate_or_the_loss_and_inf_when_diverged():
    assert sc.final_metric(0.97, higher_is_better=True) == pytest.approx(0.03)
    assert sc.final_metric(2.8, higher_is_better=False) == 2.8
    assert sc.final_metric(math.nan, higher_is_better=True) == INF
    assert sc.mean_std([0.1, 0.3]) == pytest.approx((0.2, 0.1))
    assert sc.mean_std([0.1, INF])[0] == INF


def test_ratios_and_profile_match_a_hand_computed_example():
    floors = {"a": 0.01, "b": 0.01, "lm": 1e-6}
    table = {
        "X": {"a": 0.0, "b": 0.10, "lm": 3.0},
        "Y": {"a": 0.02, "b": 0.05, "lm": INF},  # diverged on lm
        "Z": {"a": 0.03, "b": 0.06, "lm": 3.3},
        "W": {"a": 0.01, "b": 0.05},  # never ran lm
    }
    # a: the best 0.0 is floored at 0.01 (one example); b: best 0.05; lm: best 3.0.
    expected = {
        "X": {"a": 1.0, "b": 2.0, "lm": 1.0},
        "Y": {"a": 2.0, "b": 1.0, "lm": INF},
        "Z": {"a": 3.0, "b": 1.2, "lm": 1.1},
        "W": {"a": 1.0, "b": 1.0, "lm": INF},
    }
    r = sc.ratios(table, floors)
    for c, by_w in expected.items():
        assert r[c] == pytest.approx(by_w), c
    taus = (1.0, 1.1, 1.25, 2.0, 3.0)
    rho = sc.profile(r, taus)
    assert rho["X"] == pytest.approx([2 / 3, 2 / 3, 2 / 3, 1, 1])
    assert rho["Y"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert rho["Z"] == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1])  # 3.3 / 3.0 counts at 1.1
    assert rho["W"] == pytest.approx([2 / 3] * 5)
    assert sc.gap(0.03, 0.02) == pytest.approx(0.01)


def test_the_calibration_freezes_the_best_seed0_value_and_a_run_is_planned_once(tmp_path):
    method = fm.Method("M", "M", "lr", 1.0, lambda v: (f"M.lr = {v!r}",), "test")
    study = frozen_config.Study(True, str(tmp_path), [method])
    assert study.calibrated(method) is None  # nothing finished yet
    names = [c for c in study.configurations() if c.startswith("M")]
    assert names == ["M, published (lr 1)"]  # the frozen one waits for its grid
    accuracy = {0.1: 0.5, 0.3: 0.9, 1.0: 0.8, 3.0: 0.7, 10.0: 0.9}  # 0.3 and 10 tie
    for value, job in study.calibration_grid(method).items():
        study.save(job, {"step": 20, "value": accuracy[value], "run_dir": "", "seconds": 1.0})
    assert study.calibrated(method) == pytest.approx(0.3)  # the tie nearer 1 in log
    reloaded = frozen_config.Study(True, str(tmp_path), [method])  # from the cache files
    assert reloaded.calibrated(method) == pytest.approx(0.3)
    assert "M, frozen (lr 0.3)" in reloaded.configurations()
    plan = reloaded.plan()
    keys = [reloaded.key(j) for j in plan]
    assert len(keys) == len(set(keys))
    # The published value's digits seed-0 run is the grid's x1 run: planned once, done.
    published = reloaded.job("digits", method.bindings(1.0), 0)
    assert reloaded.key(published) in reloaded.results
    assert [j.phase for j in plan] == sorted(j.phase for j in plan)
    scored = [j for j in plan if j.phase == 1]
    assert [j.workload == "lm" for j in scored] == sorted(j.workload == "lm" for j in scored)


def test_the_baseline_tune_command_is_one_lrresearch_tune_accepts_and_the_page_shows_it(tmp_path):
    """The tune's command line (`frozen_tuning.command`): the tune parser takes it, its
    bindings are the baseline's with the peak searched over the grid, and the page's
    copy (`shown`) splits back into the same arguments."""
    import shlex

    import frozen_tuning

    from lrresearch.cli.parser import build_parser

    study = frozen_config.Study(False, str(tmp_path), [])
    w = study.ws["digits"]
    grid = study.baseline_peaks("digits")
    cmd = frozen_tuning.command(w, grid, "runs/x", "digits", 2)
    args = build_parser().parse_args(cmd[3:])
    assert (args.sampler, args.trials, args.metric, args.workers) == ("grid", len(grid), w.tag, 2)
    peak = [b for b in fm.baseline(w.steps, 0.5) if b.startswith(frozen_tuning.PEAK)]
    fixed = [b for b in fm.baseline(w.steps, 0.5) if b not in peak]
    assert args.gin_param == [*w.params, *fixed, "Trainer.seed = 0"]
    (search,) = args.search
    assert search == f"{frozen_tuning.PEAK}=choice([{', '.join(map(repr, grid))}])"
    assert shlex.split(frozen_tuning.shown(cmd)) == ["lrresearch", *cmd[3:]]
