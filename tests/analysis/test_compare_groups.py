"""`lrresearch compare` over seeds: groups, their mean ± std, LR sensitivity, the x axis
and the export, checked against numpy on the runs' event files (TensorBoard's loader)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf

from lrresearch.analysis import (
    axes,
    bindings,
    compare,
    group_plot,
    group_stats,
    groups,
    sensitivity,
)
from lrresearch.cli import commands as cli
from lrresearch.studies.sweep import run_sweep
from tests.support import REPO, read_events

LRS = (0.01, 0.05, 0.2)
BASE = [
    "Trainer.steps = 30",
    "mlp.hidden = (8,)",
    "Trainer.eval_every = 10",
    "Trainer.histogram_every = 0",
    "Trainer.checkpoint_every = 0",
    "Trainer.controller = @ConstantController()",
]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """`sgd`: ConstantController.lr at 3 values x seeds 0, 1 (3 groups of 2); `prodigy`:
    Prodigy (no LR swept: its ConstantController.lr multiplier fixed at 1) x seeds 0, 1."""
    logdir = tmp_path_factory.mktemp("groups")
    quiet = lambda line: None  # noqa: E731
    lrs = f"ConstantController.lr=[{', '.join(map(str, LRS))}]"
    sgd, points = run_sweep(
        [], BASE, [lrs, "Trainer.seed=[0, 1]"], str(logdir), "sgd", progress=quiet
    )
    prodigy, more = run_sweep(
        [],
        [*BASE, "Trainer.optimizer = @Prodigy", "ConstantController.lr = 1.0"],
        ["Trainer.seed=[0, 1]"],
        str(logdir),
        "prodigy",
        progress=quiet,
    )
    assert all(p.status == "ok" for p in points + more), [p.error for p in points + more]
    return sgd, prodigy


def final(run: str, tag: str) -> float:
    return float(read_events(run).values(tag)[-1])


def read_csv(path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def runs_of(sweep: str) -> list[str]:
    return sorted(
        os.path.join(sweep, name)
        for name in os.listdir(sweep)
        if os.path.isdir(os.path.join(sweep, name))
    )


@pytest.mark.slow
def test_runs_differing_only_in_the_seed_are_one_group_with_numpy_mean_and_std(
    sweeps, tmp_path, capsys
):
    sgd, _ = sweeps
    assert cli.main(["compare", sgd, f"--out={tmp_path}", "--target_accuracy=0.1"]) == 0
    rows = {r["group"]: r for r in read_csv(tmp_path / "compare_groups.csv")}
    assert sorted(rows) == sorted(f"lr={lr:g}" for lr in LRS)
    for lr in LRS:
        row = rows[f"lr={lr:g}"]
        runs = [r for r in runs_of(sgd) if f"-lr={lr:g}-" in r + "-"]
        assert len(runs) == 2 and int(row["n"]) == 2
        for column, tag, pick in [
            ("final_eval/loss", "eval/loss", lambda v: v[-1]),
            ("best_eval/loss", "eval/loss", np.min),
            ("best_eval/accuracy", "eval/accuracy", np.max),
        ]:
            values = [float(pick(read_events(r).values(tag))) for r in runs]
            assert float(row[f"{column}_mean"]) == pytest.approx(np.mean(values), rel=1e-6)
            assert float(row[f"{column}_std"]) == pytest.approx(np.std(values, ddof=1), rel=1e-6)
        # Steps to target: the first eval step (+1) at or above the target, per run.
        reached = []
        for run in runs:
            events = read_events(run)
            hit = np.flatnonzero(events.values("eval/accuracy") >= 0.1)
            reached += [events.steps("eval/accuracy")[hit[0]] + 1] if hit.size else []
        assert int(row["steps_to_acc_ge_0.1_count"]) == len(reached)
        if reached:
            assert float(row["steps_to_acc_ge_0.1_mean"]) == pytest.approx(np.mean(reached))
    per_run = read_csv(tmp_path / "compare.csv")
    assert len(per_run) == 6 and {r["group"] for r in per_run} == set(rows)
    markdown = (tmp_path / "compare.md").read_text()
    assert "sample std (ddof=1)" in markdown and "| lr=0.05 | 2 |" in markdown
    assert "| 000-lr=0.01-seed=0 |" in markdown  # the per-run table follows
    assert "compare_groups.csv" in capsys.readouterr().out


@pytest.mark.slow
def test_group_curves_are_the_numpy_mean_and_std_of_the_runs(sweeps, tmp_path):
    sgd, _ = sweeps
    runs = runs_of(sgd)
    configs = [bindings.read_config(r) for r in runs]
    grouped = groups.group_runs(configs)
    data = [compare.load(r) for r in runs]
    xaxes = axes.x_axes("examples", runs, configs, data)
    bands = group_plot.plot_groups(
        grouped, data, xaxes, str(tmp_path / "g.png"), axes.X_LABELS["examples"]
    )
    (band,) = [b for b in bands if b.panel == "eval/loss" and b.label == "lr=0.2"]
    members = [r for r in runs if "-lr=0.2-" in r]
    events = [read_events(r) for r in members]
    losses = np.stack([e.values("eval/loss") for e in events])
    # --x=examples: (step + 1) x Trainer.batch_size (64, the default, in config.gin).
    np.testing.assert_array_equal(band.x, (events[0].steps("eval/loss") + 1) * 64.0)
    np.testing.assert_allclose(band.mean, losses.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(band.std, losses.std(axis=0, ddof=1), rtol=1e-6)
    (lr_band,) = [b for b in bands if b.panel == "lr" and b.label == "lr=0.2"]
    assert lr_band.n == 2 and lr_band.x[-1] == 30 * 64
    np.testing.assert_allclose(lr_band.mean, 0.2, rtol=1e-6)
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_group_by_regroups_and_a_run_without_config_is_its_own_group(sweeps, tmp_path):
    sgd, prodigy = sweeps
    lone = tmp_path / "lone"
    shutil.copytree(runs_of(sgd)[0], lone / "no-config")
    os.remove(lone / "no-config" / "config.gin")
    out = tmp_path / "out"
    argv = ["compare", sgd, prodigy, str(lone), f"--out={out}", "--group_by=Trainer.optimizer"]
    assert cli.main(argv) == 0
    rows = {r["group"]: r for r in read_csv(out / "compare_groups.csv")}
    assert set(rows) == {
        "optimizer=sgd",
        "optimizer=Prodigy",
        "no-config (no config.gin: a group of its own)",
    }
    assert int(rows["optimizer=sgd"]["n"]) == 6 and int(rows["optimizer=Prodigy"]["n"]) == 2
    losses = [final(r, "eval/loss") for r in runs_of(prodigy)]
    row = rows["optimizer=Prodigy"]
    assert float(row["final_eval/loss_mean"]) == pytest.approx(np.mean(losses), rel=1e-6)
    assert float(row["final_eval/loss_std"]) == pytest.approx(np.std(losses, ddof=1), rel=1e-6)
    lone_row = rows["no-config (no config.gin: a group of its own)"]
    assert lone_row["n"] == "1" and lone_row["final_eval/loss_std"] == ""  # n=1: no std
    assert (
        "| no-config (no config.gin: a group of its own) | 1 |" in (out / "compare.md").read_text()
    )


@pytest.mark.slow
def test_sensitivity_table_matches_numpy_and_parameter_free_is_a_flat_band(sweeps, tmp_path):
    sgd, prodigy = sweeps
    out = tmp_path / "out"
    assert cli.main(["compare", sgd, prodigy, f"--out={out}", "--sensitivity"]) == 0
    rows = read_csv(out / "sensitivity.csv")
    by_strategy: dict[str, list] = {}
    for row in rows:
        by_strategy.setdefault(row["strategy"], []).append(row)
    assert len(by_strategy) == 2
    (line,) = [v for v in by_strategy.values() if len(v) == 3]
    (flat,) = [v for v in by_strategy.values() if len(v) == 1]
    means = []
    for row, lr in zip(line, LRS, strict=True):
        assert row["binding"] == "ConstantController.lr" and float(row["lr"]) == lr
        losses = [final(r, "eval/loss") for r in runs_of(sgd) if f"-lr={lr:g}-" in r]
        assert int(row["n"]) == 2
        assert float(row["mean"]) == pytest.approx(np.mean(losses), rel=1e-6)
        assert float(row["std"]) == pytest.approx(np.std(losses, ddof=1), rel=1e-6)
        means.append(np.mean(losses))
    assert float(line[0]["best_lr"]) == LRS[int(np.argmin(means))]
    losses = [final(r, "eval/loss") for r in runs_of(prodigy)]
    assert flat[0]["lr"] == "" and int(flat[0]["n"]) == 2
    assert float(flat[0]["mean"]) == pytest.approx(np.mean(losses), rel=1e-6)
    assert "tuning-free" in (out / "sensitivity.md").read_text()
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"

    # The figure: a line with a band against the LR (log x), and a horizontal band.
    runs = runs_of(sgd) + runs_of(prodigy)
    configs = [bindings.read_config(r) for r in runs]
    finals = [final(r, "eval/loss") for r in runs]
    curves = sensitivity.curves(configs, finals, sensitivity.swept_lr_bindings(configs))
    drawn = sensitivity.plot(curves, "eval/loss", str(tmp_path / "s.png"))
    assert len(drawn["lines"]) == 1 and len(drawn["bands"]) == 1
    np.testing.assert_allclose(drawn["lines"][0].get_xdata(), LRS)
    np.testing.assert_allclose(drawn["lines"][0].get_ydata(), means, rtol=1e-6)
    (horizontal,) = drawn["flat"]
    assert list(horizontal.get_ydata()) == pytest.approx([np.mean(losses)] * 2, rel=1e-6)
    assert list(horizontal.get_xdata()) == [0, 1]  # axes coordinates: the whole x range
    (span,) = drawn["flat_bands"]
    assert span.get_y() == pytest.approx(np.mean(losses) - np.std(losses, ddof=1), rel=1e-5)
    assert span.get_height() == pytest.approx(2 * np.std(losses, ddof=1), rel=1e-5)
    assert (span.get_x(), span.get_width()) == (0, 1)  # axes coordinates: the whole x range
    assert horizontal.axes.get_xscale() == "log"


def test_lr_valued_bindings_follow_one_rule():
    for name in (
        "ConstantController.lr",
        "GradNormController.base_lr",
        "X.max_lr",
        "X.min_lr",
        "Adam.learning_rate",
        "X.eta",
        "X.eta_min",
        "s/X.initial_lr",
    ):
        assert sensitivity.is_lr_binding(name), name  # fmt: skip
    for name in ("Trainer.nonfinite_lr_factor", "X.slope", "X.lr_decay", "X.beta", "Trainer.seed"):
        assert not sensitivity.is_lr_binding(name), name


@pytest.mark.slow
def test_export_writes_every_point_of_every_run_and_never_overwrites(sweeps, tmp_path, capsys):
    sgd, prodigy = sweeps
    table = tmp_path / "points.csv"
    argv = ["compare", sgd, prodigy, f"--out={tmp_path / 'out'}", f"--export={table}"]
    assert cli.main(argv) == 0
    rows = read_csv(table)
    assert list(rows[0]) == ["run", "group", "step", "tag", "value", "wall_time"]
    counted: dict[tuple[str, str], list] = {}
    for row in rows:
        counted.setdefault((row["run"], row["tag"]), []).append(row)
    for run in runs_of(sgd) + runs_of(prodigy):
        events = read_events(run)
        scalars = events.tags_of("scalars")
        assert {"lr", "loss/batch", "eval/loss"} <= scalars
        for tag in scalars:
            got = counted.pop((os.path.basename(run), tag))
            assert len(got) == len(events.steps(tag))
            np.testing.assert_allclose([float(r["value"]) for r in got], events.values(tag))
    assert not counted
    assert len({r["group"] for r in rows}) == 4  # 3 LRs of SGD, and Prodigy
    # Parquet, read back with pyarrow.
    import pyarrow.parquet as pq

    parquet = tmp_path / "points.parquet"
    argv = ["compare", sgd, f"--out={tmp_path / 'out2'}", f"--export={parquet}"]
    assert cli.main(argv) == 0
    back = pq.read_table(parquet).to_pydict()
    sgd_rows = [r for r in rows if os.path.isdir(os.path.join(sgd, r["run"]))]
    assert len(back["run"]) == len(sgd_rows)
    assert back["step"] == [int(r["step"]) for r in sgd_rows]
    assert back["value"] == pytest.approx([float(r["value"]) for r in sgd_rows], rel=1e-12)
    # Never overwritten; nothing else written either.
    capsys.readouterr()
    argv = ["compare", sgd, f"--out={tmp_path / 'out3'}", f"--export={table}"]
    assert cli.main(argv) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert not (tmp_path / "out3").exists()


def test_bad_flags_are_one_screen_errors_naming_the_flag_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    runs = str(REPO / "tests" / "fixtures" / "runs_12dd54a")  # two old runs, no LR swept
    out = tmp_path / "out"
    for flags, says in [
        ([f"--export={tmp_path}/x.json"], ["--export=", ".csv or .parquet"]),
        (["--group_by=Trainer.optimzer"], ["--group_by=", "did you mean Trainer.optimizer"]),
        (["--sensitivity", runs], ["--sensitivity=", "not a gin binding"]),
        (["--sensitivity"], ["--sensitivity", "no LR-valued binding", "--sensitivity="]),
        (["--sensitivity", "--metric=eval/mae"], ["--metric=", "eval/loss"]),
    ]:
        assert cli.main(["compare", runs, f"--out={out}", *flags]) == 2, flags
        err = capsys.readouterr().err
        assert len(err.splitlines()) <= 3 and all(s in err for s in says), (flags, err)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    assert cli.main(["compare", runs, f"--out={out}", f"--export={tmp_path}/x.parquet"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'lrresearch[parquet]'" in err and ".csv" in err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_config_gin_is_read_with_gins_parser(tmp_path):
    text = """
import user_pkg.rules
LR = 0.1
train/Trainer.steps = 5
X.y = (1,
       2, @a/B(), %LR)
X.z = {'a': [1, 2]}
Trainer.optimizer = @Prodigy
M:
  k = 'relu'
"""
    assert bindings.parse_bindings(text) == {
        "LR": "0.1",
        "train/Trainer.steps": "5",
        "X.y": "(1, 2, @a/B(), %LR)",
        "X.z": "{'a': [1, 2]}",
        "Trainer.optimizer": "@Prodigy",
        "M.k": "'relu'",
    }
    old = bindings.read_config(str(REPO / "tests/fixtures/runs_12dd54a/loss_trend_dropout"))
    assert old.bindings["Trainer.controller"] == "@LossTrendController()"
    assert bindings.batch_size(old) == 8
    for text in ("X.y = (1,\n", "X.y = = 2\n"):  # cut, or edited: said so
        (tmp_path / "config.gin").write_text(text)
        broken = bindings.read_config(str(tmp_path))
        assert broken.bindings is None and "config.gin does not parse" in broken.problem


def write_events(path, start: float, points: list[tuple[int, float]]) -> None:
    """An event file whose first record (as a writer opens it) is at wall time `start`,
    then `lr` = 0.1 at each (step, wall time)."""
    from tensorflow.core.framework import summary_pb2
    from tensorflow.core.util import event_pb2

    plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    scalar = summary_pb2.SummaryMetadata(plugin_data=plugin)
    with tf.io.TFRecordWriter(str(path)) as writer:
        first = event_pb2.Event(wall_time=start, file_version="brain.Event:2")
        writer.write(first.SerializeToString())
        for step, wall in points:
            value = summary_pb2.Summary.Value(
                tag="lr", metadata=scalar, tensor=tf.make_tensor_proto(np.float32(0.1))
            )
            summary = summary_pb2.Summary(value=[value])
            event = event_pb2.Event(step=step, wall_time=wall, summary=summary)
            writer.write(event.SerializeToString())


def test_x_time_removes_the_stop_of_a_resumed_run(tmp_path):
    # Killed after step 4 at t=1000.5; resumed: its writer opens at t=2000.0.
    write_events(tmp_path / "events.out.tfevents.1000.vm.1.v2", 1000.0,
                 [(s, 1000.1 + 0.1 * s) for s in range(5)])  # fmt: skip
    write_events(tmp_path / "events.out.tfevents.2000.vm.2.v2", 2000.0,
                 [(s, 2000.1 + 0.1 * (s - 5)) for s in range(5, 10)])  # fmt: skip
    data = compare.load(str(tmp_path))
    axis = axes.x_axis("time", str(tmp_path), bindings.read_config(str(tmp_path)), data)
    np.testing.assert_allclose(axis.of(data["lr"]), 0.1 * np.arange(10), atol=1e-4)


def test_group_labels_name_the_method_and_the_bindings_that_differ(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    entries = []
    configs = []
    for index, (method, lr, seed) in enumerate(
        [
            ("cosine", "0.1", "0"),
            ("cosine", "0.1", "1"),
            ("cosine", "0.3", "0"),
            ("mine", "0.1", "0"),
        ]
    ):
        run = f"{index:03d}-{method}"
        entries.append({"run": run, "method": method, "bindings": {}})
        bound = {"Trainer.seed": seed, "X.lr": lr, "Trainer.steps": "30"}
        configs.append(bindings.RunConfig(str(sweep / run), bound))
    (sweep / "sweep.json").write_text(json.dumps({"points": entries}))
    configs.append(bindings.RunConfig(str(tmp_path / "keras_run"), None, "no config.gin"))
    found = groups.group_runs(configs)
    assert [(g.label, g.members) for g in found] == [
        ("cosine lr=0.1", [0, 1]),
        ("cosine lr=0.3", [2]),
        ("mine", [3]),
        ("keras_run (no config.gin: a group of its own)", [4]),
    ]
    # Without a manifest: the differing bindings only.
    os.remove(sweep / "sweep.json")
    assert [g.label for g in groups.group_runs(configs[:4])] == ["lr=0.1", "lr=0.3"]
    by = groups.group_runs(configs[:4], group_by=["Trainer.seed", "Y.unbound"])
    assert [g.label for g in by] == ["seed=0, unbound=(unbound)", "seed=1, unbound=(unbound)"]


def test_lr_range_within_x_pct_of_the_best_is_measured_in_decades():
    stats = [group_stats.Stat(m, 0.0, 2) for m in (1.0, 0.5, 0.52, 0.9)]
    curve = sensitivity.Curve("s", "X.lr", [1e-3, 1e-2, 1e-1, 1.0], stats, [[0]] * 4)
    assert curve.best(higher=False) == 1
    assert curve.width_decades(higher=False, within_pct=10) == pytest.approx(1.0)
    assert curve.width_decades(higher=False, within_pct=1) == 0.0
    assert curve.best(higher=True) == 0  # accuracy-like: the largest mean


def test_x_examples_needs_the_runs_batch_size(tmp_path, capsys):
    run = tmp_path / "runs" / "old"
    shutil.copytree(REPO / "tests" / "fixtures" / "runs_12dd54a" / "default", run)
    os.remove(run / "config.gin")
    out = tmp_path / "out"
    assert cli.main(["compare", str(run), f"--out={out}", "--x=examples"]) == 2
    err = capsys.readouterr().err
    assert str(run) in err and "Trainer.batch_size" in err and "--x=steps" in err
    assert not out.exists()


def test_labels_show_a_drawn_float_with_four_significant_digits():
    from lrresearch.analysis.bindings import short_value

    assert short_value("0.044303752452182654") == "0.0443"
    assert short_value("-2.5e-05") == "-2.5e-05"
    assert [short_value(v) for v in ("100", "(8,)", "@GradNormController()", "'relu'")] == [
        "100", "(8,)", "GradNormController", "relu"
    ]  # fmt: skip


def test_a_sensitivity_line_is_not_labelled_by_a_binding_it_holds_fixed():
    """Cosine swept over base_lr with init_lr 0, and a parameter-free run binding another
    init_lr (Prodigy's file): init_lr is 'swept' across the runs, yet the cosine line is
    labelled by what tells its own lines apart, nothing."""
    from lrresearch.analysis import sensitivity
    from lrresearch.analysis.bindings import RunConfig

    cosine = [
        RunConfig(f"c{lr}{seed}", {"W.base_lr": lr, "W.init_lr": "0.0", "Trainer.seed": seed})
        for lr in ("0.01", "0.1")
        for seed in ("0", "1")
    ]
    prodigy = [RunConfig("p", {"W.base_lr": "1.0", "W.init_lr": "1e-06", "O.d0": "1e-06"})]
    configs = cosine + prodigy
    swept = sensitivity.swept_lr_bindings(configs)
    assert swept == ["W.base_lr", "W.init_lr"]
    lines = sensitivity.curves(configs, [0.5, 0.6, 0.7, 0.8, 0.4], swept)
    (cosine_line,) = [c for c in lines if c.binding == "W.base_lr" and len(c.values) == 2]
    assert "init_lr" not in cosine_line.strategy
    np.testing.assert_allclose([s.mean for s in cosine_line.stats], [0.55, 0.75])


def test_a_log_panels_band_is_the_geometric_mean_and_stays_positive():
    from lrresearch.analysis import group_plot
    from lrresearch.analysis.curves import Series
    from lrresearch.analysis.groups import Group

    steps = np.arange(4)
    norms = [np.array([1.0, 0.01, 2.0, 1e-4]), np.array([1.0, 1.0, 0.5, 1.0])]
    data = [{"grad/global_norm": Series(steps, v, steps.astype(float))} for v in norms]
    group = Group(label="g", members=[0, 1], bindings={})
    xaxes = [type("X", (), {"of": staticmethod(lambda s: s.steps.astype(float))})()] * 2
    panel = ("grad/global_norm", "norm", True, False)
    (band,) = group_plot.group_bands([group], data, xaxes, [panel])
    logs = np.log(np.stack(norms))
    np.testing.assert_allclose(band.mean, np.exp(logs.mean(0)), rtol=1e-12)
    np.testing.assert_allclose(band.std, logs.std(0, ddof=1), rtol=1e-12)
    assert (band.low > 0).all() and (band.low <= band.mean).all() and (band.high >= band.mean).all()
    assert (np.stack(norms).mean(0) - np.stack(norms).std(0, ddof=1) < 0).any()  # mean - std would
    # An LR of exactly 0 (a warmup from init_lr = 0) has no log: not drawn, not a 1e-308.
    data[0]["grad/global_norm"] = Series(steps, np.array([0.0, 1.0, 1.0, 1.0]), steps * 1.0)
    (band,) = group_plot.group_bands([group], data, xaxes, [panel])
    assert np.isnan(band.mean[0]) and np.isfinite(band.mean[1:]).all()
