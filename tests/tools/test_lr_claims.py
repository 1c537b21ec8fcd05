"""The pure parts of the claims scripts (tools/lr_insensitivity.py, tools/warmup_free.py,
tools/cached_runs.py): the insensitivity figure against hand-computed examples, and a
kept result refused when its run was configured otherwise. No training."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))  # the scripts import each other by name

import cached_runs  # noqa: E402
import lr_insensitivity  # noqa: E402


def test_insensitive_range_is_the_run_of_grid_lrs_around_the_best_within_one_point():
    lrs = [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0]
    means = [87.0, 94.7, 97.65, 97.97, 97.92, 97.92, 97.92]  # MoMo's record
    assert lr_insensitivity.insensitive_range(lrs, means) == (0.1, 1000.0, 4.0)
    # A dip below the band breaks the run even if later LRs come back into it.
    lo, hi, decades = lr_insensitivity.insensitive_range(lrs, [50, 97, 98, 96, 97.5, 10, 9])
    assert (lo, hi, decades) == (1e-2, 0.1, 1.0)


def test_insensitive_range_sorts_the_grid_and_counts_nan_as_outside():
    lrs = [10.0, 0.1, 1.0, 100.0]
    means = [97.5, 97.0, 98.0, math.nan]
    assert lr_insensitivity.insensitive_range(lrs, means) == (0.1, 10.0, 2.0)
    assert lr_insensitivity.insensitive_range([1.0], [50.0]) == (1.0, 1.0, 0.0)


def test_authors_record_gives_the_claimed_ranges():
    # MoMo within a point over lr 0.1..1000 and SGD-M collapsing at lr >= 10 (the claim).
    ranges = {
        m: lr_insensitivity.insensitive_range(list(a), list(a.values()))
        for m, a in lr_insensitivity.AUTHORS.items()
    }
    assert ranges["momo"] == (0.1, 1000.0, 4.0)
    assert ranges["sgdm"] == (0.1, 1.0, 1.0)
    assert ranges["momo_adam"][2] == 4.0


def test_a_kept_result_of_a_run_configured_otherwise_is_refused(tmp_path):
    spec = cached_runs.Spec("digits-sgdm-lr1-s0", "base.gin", ("Trainer.steps = 10",), 0)
    (tmp_path / "results").mkdir()
    kept = {"name": spec.name, "gin_file": "base.gin", "params": ["Trainer.steps = 20"],
            "seed": 0, "run_dir": spec.name, "seconds": 1.0,
            "series": {"eval/accuracy": {"steps": [9], "values": [0.5]}}}  # fmt: skip
    (tmp_path / "results" / f"{spec.name}.json").write_text(json.dumps(kept))
    with pytest.raises(cached_runs.StaleResultError, match="remove it"):
        cached_runs.load(spec, str(tmp_path))
    kept["params"] = list(spec.params)
    (tmp_path / "results" / f"{spec.name}.json").write_text(json.dumps(kept))
    result = cached_runs.load(spec, str(tmp_path))
    assert result.last("eval/accuracy") == (9, 0.5) and result.total("guard/skipped") == 0.0
    assert cached_runs.load(spec._replace(name="other"), str(tmp_path)) is None


def test_sgdm_runs_the_authors_dampened_momentum_at_a_tenth_of_the_lr():
    bindings = lr_insensitivity.METHODS["sgdm"].bindings(10.0)
    assert "ConstantController.lr = 1.0" in bindings
    assert "Trainer.optimizer = 'momentum'" in bindings


def test_early_windows_average_the_first_hundred_batches_by_ten():
    import warmup_free

    loss = np.arange(400, dtype=np.float64)
    np.testing.assert_allclose(warmup_free.early_windows(loss), np.arange(10) * 10 + 4.5)
    assert warmup_free.early_windows(loss[:35]).shape == (3,)
