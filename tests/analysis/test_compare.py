"""`lrresearch compare` on real runs: the table's numbers come from the events."""

from __future__ import annotations

import csv
import os
import pathlib
import shutil

import gin
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.compat.proto import event_pb2

from lrresearch.analysis import compare, run_labels
from lrresearch.analysis.compare import smooth
from lrresearch.cli import commands as cli
from lrresearch.config import parse as config
from lrresearch.logs import event_files
from lrresearch.training.trainer import Trainer
from tests.support import Events


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("cmp")
    runs = []
    for name, controller in (("const", "@ConstantController()"), ("cyc", "@CyclicController()")):
        config.parse(
            [],
            [
                "Trainer.steps = 60",
                "Trainer.steps_per_loop = 20",
                "Trainer.eval_every = 20",
                "Trainer.histogram_every = 0",
                "mlp.hidden = (8,)",
                f"Trainer.controller = {controller}",
                "ConstantController.lr = 0.05",
                "CyclicController.step_size_up = 10",
                "CyclicController.base_lr = 0.01",
                "CyclicController.max_lr = 0.1",
            ],
        )
        try:
            runs.append(Trainer().fit(logdir=str(logdir), run_name=name, quiet=True).run_dir)
        finally:
            gin.clear_config()
    return logdir, runs


@pytest.mark.slow
def test_compare_table_matches_the_events(two_runs, tmp_path, capsys):
    logdir, runs = two_runs
    assert (
        cli.main(
            ["compare", str(logdir), f"--out={tmp_path}", "--target_accuracy=0.5", "--change_pct=5"]
        )
        == 0
    )
    with open(tmp_path / "compare.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"const", "cyc"}
    for run in runs:
        events = Events(run)
        row = rows[run.rsplit("/", 1)[-1]]
        lr = events.scalar("lr")
        acc = events.values("eval/accuracy")
        assert float(row["mean_lr"]) == pytest.approx(lr.mean(), rel=1e-5)
        changes = np.abs(np.diff(lr)) / lr[:-1] > 0.05
        assert int(row["lr_changes_over_pct"]) == int(changes.sum())
        assert float(row["final_eval_accuracy"]) == pytest.approx(acc[-1], rel=1e-6)
        assert int(row["steps"]) == 60
    assert int(rows["const"]["lr_changes_over_pct"]) == 0
    assert int(rows["cyc"]["lr_changes_over_pct"]) > 10
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| const |" in (tmp_path / "compare.md").read_text()
    # Never overwrites its own outputs.
    assert cli.main(["compare", str(logdir), f"--out={tmp_path}"]) == 2
    assert "never overwritten" in capsys.readouterr().err


def damage(run: str, dest: pathlib.Path, kind: str) -> tuple[str, int, int, int]:
    """Copies `run` to `dest` and damages its event file: cut inside the middle record
    or the last one, or one byte flipped in the middle record's data or length field.
    Returns (event file, byte offset of the bad record, intact records before it, how
    many `lr` values those intact records hold)."""
    shutil.copytree(run, dest)
    (path,) = event_files.event_files(str(dest))
    records, _ = event_files.read_records(path)
    middle = len(records) // 2
    offset, data = records[-1] if kind == "last" else records[middle]
    if kind in ("middle", "last"):
        os.truncate(path, offset + 16 + len(data) // 2)
    else:
        content = bytearray(pathlib.Path(path).read_bytes())
        content[offset + (16 + len(data) // 2 if kind == "flip" else 2)] ^= 0x40
        pathlib.Path(path).write_bytes(bytes(content))
    intact = len(records) - 1 if kind == "last" else middle
    events = (event_pb2.Event.FromString(data) for _, data in records[:intact])
    lr_steps = sum(v.tag == "lr" for event in events for v in event.summary.value)
    return path, offset, intact, lr_steps


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("middle", ["truncated at byte", "killed while writing", "--resume", "restore it"]),
        ("last", ["truncated at byte", "killed while writing", "`lr` at {n} steps, the last {m}"]),
        ("flip", ["fails its checksum", "bytes changed", "`lr` at {n} steps, the last {m}"]),
        ("flip-length", ["fails its checksum", "`lr` at {n} steps, the last {m}"]),
    ],
)
def test_compare_refuses_a_damaged_event_file_and_says_where(
    two_runs, tmp_path, capsys, kind, says
):
    _, runs = two_runs
    path, offset, intact, lr_steps = damage(runs[0], tmp_path / "runs" / "damaged", kind)
    assert 0 < lr_steps < 60 or kind == "last"
    says = [s.format(n=lr_steps, m=lr_steps - 1) for s in says]
    shutil.copytree(runs[1], tmp_path / "runs" / "clean")
    assert cli.main(["compare", str(tmp_path / "runs"), f"--out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    for needle in [
        path,
        f"at byte {offset:,} of {os.path.getsize(path):,}",
        f"record {intact + 1:,}",
        f"read: {intact:,} intact records",
        "Trainer.steps = 60",
        "--allow_damaged",
        *says,
    ]:
        assert needle in err, (needle, err)
    assert "clean" not in err
    assert not (tmp_path / "out").exists()  # nothing written from a partial read

    # Compared up to the damage when asked, and marked.
    out = tmp_path / "allowed"
    assert cli.main(["compare", str(tmp_path / "runs"), f"--out={out}", "--allow_damaged"]) == 0
    with open(out / "compare.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert rows["clean"]["damaged"] == "" and int(rows["clean"]["steps"]) == 60
    assert str(offset) in rows["damaged"]["damaged"]
    assert int(rows["damaged"]["steps"]) == lr_steps
    markdown = (out / "compare.md").read_text()
    assert "| damaged (damaged) |" in markdown and path in markdown


def test_compare_rejects_a_folder_without_runs(tmp_path, capsys):
    assert cli.main(["compare", str(tmp_path)]) == 2
    assert "no runs" in capsys.readouterr().err


def test_smooth_is_a_bias_corrected_ema():
    values = np.array([1.0, np.nan, 3.0, 2.0])
    out = smooth(values, beta=0.5)
    assert out[0] == 1.0 and out[1] == 1.0
    assert out[2] == pytest.approx((0.25 * 1.0 + 0.5 * 3.0) / 0.75)


def write_lr_run(run_dir: pathlib.Path, points: list[tuple[int, float]]) -> None:
    """An event file of `lr` points (step, value), written in this order (a run
    restarted without trimming writes a step again, in a second file)."""
    writer = tf.summary.create_file_writer(str(run_dir))
    with writer.as_default():
        for step, value in points:
            tf.summary.scalar("lr", value, step=step)
    writer.close()


def test_runs_of_two_sweeps_get_unique_labels_and_distinct_colours(tmp_path):
    for sweep in ("sweepA", "sweepB"):
        for seed in range(6):
            write_lr_run(tmp_path / sweep / f"00{seed}-seed={seed}", [(0, 0.1), (1, 0.2)])
    runs = compare.find_runs([str(tmp_path / "sweepA"), str(tmp_path / "sweepB")])
    names = run_labels.labels(runs)
    assert names[0] == "sweepA/000-seed=0" and names[6] == "sweepB/000-seed=0"
    assert len(set(names)) == 12
    assert run_labels.labels(["x/a", "y/b"]) == ["a", "b"]  # unique folder names stay short
    drawn = compare.plot(runs, [compare.load(r) for r in runs], str(tmp_path / "p.png"))
    assert [label for label, _, _ in drawn] == names
    assert len({colour for _, colour, _ in drawn}) == 12  # no colour repeats after 10
    styles = [style for _, _, style in drawn]
    assert len(set(styles[:6])) == len(set(styles[6:])) == 1 and styles[0] != styles[6]
    markdown, rows = compare.compare(
        [str(tmp_path / "sweepA"), str(tmp_path / "sweepB")], str(tmp_path / "out")
    )
    assert [r.run for r in rows] == names and "| sweepB/005-seed=5 |" in markdown


def test_compare_warns_about_steps_logged_twice_and_uses_the_last_value(tmp_path, capsys):
    run = tmp_path / "runs" / "restarted"
    write_lr_run(run, [(s, 0.1) for s in range(8)])  # killed after step 7...
    write_lr_run(run, [(s, 0.2) for s in range(5, 10)])  # ...restarted at step 5
    assert cli.main(["compare", str(tmp_path / "runs"), f"--out={tmp_path / 'out'}"]) == 0
    captured = capsys.readouterr()
    (line,) = [w for w in captured.err.splitlines() if "warning" in w]
    assert str(run) in line and "`lr` has 3 steps logged more than once (steps 5..7)" in line
    assert "value logged last" in line
    with open(tmp_path / "out" / "compare.csv") as f:
        (row,) = csv.DictReader(f)
    assert int(row["steps"]) == 10
    assert float(row["mean_lr"]) == pytest.approx((5 * 0.1 + 5 * 0.2) / 10)
    assert line in (tmp_path / "out" / "compare.md").read_text()


@pytest.mark.slow
def test_a_run_whose_optimizer_sets_its_step_is_named_and_shown_by_that_step(tmp_path, capsys):
    """Prodigy's `lr` multiplies its own step: the run is named `Prodigy-WarmupCosine-
    <time>`, and the progress lines and compare's LR column show the step applied
    (`optimizer/effective_lr`), labelled `step`."""
    from tests.support import GIN_DIR

    bindings = ["Trainer.steps = 4", "Trainer.steps_per_loop = 4", "Trainer.log_every = 4"]
    bindings += ["Trainer.eval_every = 0", "Trainer.histogram_every = 0", "mlp.hidden = (8,)"]
    config.parse([str(GIN_DIR / "strategies" / "prodigy.gin")], bindings)
    try:
        result = Trainer().fit(logdir=str(tmp_path / "runs"))
    finally:
        gin.clear_config()
    name = os.path.basename(result.run_dir)
    assert name.startswith("Prodigy-WarmupCosine-"), name
    events = Events(result.run_dir)
    step = events.scalar("optimizer/effective_lr")
    out = capsys.readouterr().out
    assert f"step 4/4  loss {result.final_loss:.4f}  step size {step[-1]:.4g} (lr " in out
    summary = f"step size {step[-1]:.3g} (lr {events.scalar('lr')[-1]:.3g})"
    assert summary in result.summary_line()
    assert cli.main(["compare", str(tmp_path / "runs"), f"--out={tmp_path / 'out'}"]) == 0
    with open(tmp_path / "out" / "compare.csv") as f:
        (row,) = csv.DictReader(f)
    assert row["lr_tag"] == "optimizer/effective_lr"
    assert float(row["mean_lr"]) == pytest.approx(step.mean(), rel=1e-5)
    table = (tmp_path / "out" / "compare.md").read_text()
    assert f"| step {float(row['mean_lr']):.4g} |" in table and "`step`: the step size" in table
