"""`lrresearch sweep`: parsing, the cross product, failures that do not stop a sweep."""

from __future__ import annotations

import json

import pytest

from lrresearch import cli
from lrresearch.sweep import parse_sweep, split_values


def test_split_values_respects_brackets_and_quotes():
    assert split_values("[0, 1,2]") == ["0", "1", "2"]
    assert split_values("[@A(), @B(x=1, y=(2, 3)), 'a,b', \"[c]\"]") == [
        "@A()",
        "@B(x=1, y=(2, 3))",
        "'a,b'",
        '"[c]"',
    ]
    with pytest.raises(ValueError, match="brackets"):
        split_values("0, 1")
    with pytest.raises(ValueError, match="empty"):
        split_values("[]")


def test_parse_sweep():
    assert parse_sweep("Trainer.seed=[0, 1]") == ("Trainer.seed", ["0", "1"])
    assert parse_sweep("scope/mlp.hidden = [(8,), (16, 16)]") == (
        "scope/mlp.hidden",
        ["(8,)", "(16, 16)"],
    )
    with pytest.raises(ValueError, match=r"Configurable\.param"):
        parse_sweep("[0, 1]")


def test_sweep_runs_the_cross_product_and_reports_failures(tmp_path, capsys):
    argv = [
        "sweep",
        f"--logdir={tmp_path}",
        "--sweep_name=s",
        "--quiet",
        "--gin_param=Trainer.steps = 20",
        "--gin_param=Trainer.steps_per_loop = 10",
        "--gin_param=mlp.hidden = (8,)",
        "--sweep=Trainer.controller=[@ConstantController(), @LossTrendController()]",
        "--sweep=Trainer.seed=[0, 1]",
    ]
    assert cli.main(argv) == 1  # LossTrendController without max_lr fails, twice
    out = capsys.readouterr().out
    assert "2/4 runs ok" in out and out.count("FAILED") == 2
    assert "LossTrendController.max_lr" in out
    manifest = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [p["bindings"] for p in manifest["points"]] == [
        {"Trainer.controller": c, "Trainer.seed": s}
        for c in ("@ConstantController()", "@LossTrendController()")
        for s in ("0", "1")
    ]
    ok = [p["run"] for p in manifest["points"][:2]]
    for run in ok:
        assert (tmp_path / "s" / run / "config.gin").exists()
    # The sweep root holds the HParams experiment and the layout.
    assert list((tmp_path / "s").glob("events.out.tfevents.*"))


def test_sweep_rejects_a_bad_binding_before_running_anything(tmp_path, capsys):
    argv = ["sweep", f"--logdir={tmp_path}", "--sweep=Trainer.seeed=[0, 1]"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "seeed" in err and "seed" in err
    assert list(tmp_path.iterdir()) == []
