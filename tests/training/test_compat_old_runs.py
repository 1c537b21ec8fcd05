"""Run directories written by an older version (`12dd54a`, before issue 22) still
`--resume` and are still read by `compare` (DESIGN.md, "Run layout").

The runs are committed under `tests/fixtures/runs_12dd54a/` (its README gives the
commands that wrote them). Everything here goes through the command line in a
subprocess and TensorBoard's loader, never through lrresearch's modules, so the test
holds while those move.
"""

from __future__ import annotations

import csv
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from tests.support import REPO, Finished, finish, read_events, start_cli

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

FIXTURE = REPO / "tests" / "fixtures" / "runs_12dd54a"
# run name: (the step its last checkpoint holds, Trainer.steps for the resume)
RUNS = {"default": (60, 90), "loss_trend_dropout": (40, 60)}
# What today's code prints when a checkpoint has no `random_state` entry.
RANDOM_WARNING = "was written before lrresearch saved random streams"


def lrresearch(*args: str, cwd: pathlib.Path) -> subprocess.Popen:
    """`python -m lrresearch ARGS` with this checkout first on the path, from `cwd`."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="2")
    return start_cli(*args, cwd=cwd, env=env, stderr=subprocess.PIPE)


def output(done: Finished) -> str:
    """stdout and stderr of a run that must have exited 0."""
    assert done.returncode == 0, done.describe()
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict[str, Finished]]:
    """Copies of both runs, each resumed to its new `Trainer.steps` (both processes at
    once); returns their logdir and each resume's exit code and output."""
    logdir = tmp_path_factory.mktemp("resumed")
    procs = {}
    for name, (_, steps) in RUNS.items():
        shutil.copytree(FIXTURE / name, logdir / name)
        # 12dd54a left its lock file behind (not committed): users' runs hold one.
        (logdir / name / ".lock").write_text("pid 14120 (since 2026-12-07T09:44:31)\n")
        procs[name] = lrresearch(
            *("train", "--resume", f"--logdir={logdir}", f"--run_name={name}"),
            f"--gin_param=Trainer.steps = {steps}",
            cwd=logdir,
        )
    return logdir, {name: finish(proc) for name, proc in procs.items()}


@pytest.mark.parametrize("name", RUNS)
def test_an_old_run_resumes_from_its_checkpoint(resumed, name):
    logdir, done = resumed
    at, steps = RUNS[name]
    out = output(done[name])
    assert f"(resumed at step {at})" in out
    old, new = read_events(FIXTURE / name), read_events(logdir / name)
    # One loss per batch 0..steps-1: the resume continued at the checkpoint's step
    # (no gap, no restart from 0), and the old run's batches are kept as they were.
    loss = new.scalar("loss/batch")
    assert len(loss) == steps
    np.testing.assert_array_equal(loss[:at], old.scalar("loss/batch"))
    assert len(new.scalar("lr")) == steps
    assert new.steps("eval/loss")[-1] == steps - 1
    # The weights came back: after more training the held-out loss is below the one at
    # the checkpoint (a model trained again from scratch would not be, in so few steps).
    assert new.values("eval/loss")[-1] < old.values("eval/loss")[-1]
    # The only binding that differs is the one given; the optimizer's arguments, which
    # this version lists in config.gin and 12dd54a did not, are not a difference.
    assert f"Trainer.steps: {at} -> {steps}" in out
    assert "SGD.*" not in out
    history = (logdir / name / "config.gin").read_text().split("\n\n")[0]
    assert history.splitlines()[1:] == [f"#   Trainer.steps: {at} -> {steps}"]


def test_the_loss_trend_controller_continues_its_lr(resumed):
    """The controller's state came back: the LR after the resume is the previous LR
    times `increase` or `decrease`, not `initial_lr` again (its window restarting)."""
    logdir, _ = resumed
    at, _ = RUNS["loss_trend_dropout"]
    lr = read_events(logdir / "loss_trend_dropout").scalar("lr").astype(np.float64)
    assert lr[at] != pytest.approx(0.01)  # LossTrendController.initial_lr in config.gin
    ratio = lr[at] / lr[at - 1]  # decrease = 0.95, increase = 1.05 in config.gin
    assert min(abs(ratio - 0.95), abs(ratio - 1.05)) < 1e-5, ratio


def test_a_checkpoint_without_random_state_restores_with_a_warning(resumed):
    _, done = resumed
    at, _ = RUNS["loss_trend_dropout"]
    lines = output(done["loss_trend_dropout"]).splitlines()
    warnings = [line for line in lines if RANDOM_WARNING in line]
    assert len(warnings) == 1
    assert f"ckpt-{at} " in warnings[0] and "3 random generator(s)" in warnings[0]
    # A model without random layers has no random stream to lose: no warning.
    assert RANDOM_WARNING not in output(done["default"])


def test_compare_reads_old_and_resumed_runs(resumed, tmp_path):
    logdir, _ = resumed
    untouched = tmp_path / "untouched"
    for name in RUNS:
        shutil.copytree(FIXTURE / name, untouched / name)
    runs = [logdir / name for name in RUNS] + [untouched / name for name in RUNS]
    out_dir = tmp_path / "comparison"
    done = finish(lrresearch("compare", *map(str, runs), f"--out={out_dir}", cwd=tmp_path))
    out = output(done)
    with open(out_dir / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    for run, row in zip(runs, rows, strict=True):
        label = f"{run.parent.name}/{run.name}"  # each run's shortest unique name
        assert row["run"] == label and f"| {label} |" in out
        events = read_events(run)
        assert int(row["steps"]) == len(events.scalar("loss/batch"))
        assert float(row["final_eval_loss"]) == pytest.approx(events.values("eval/loss")[-1])
        assert float(row["mean_lr"]) == pytest.approx(np.mean(events.scalar("lr")), rel=1e-6)
        assert row["damaged"] == ""
    # compare only reads: the untouched copies are the fixture byte for byte.
    for name in RUNS:
        for path in (FIXTURE / name).rglob("*"):
            if path.is_file():
                assert (untouched / name / path.relative_to(FIXTURE / name)).read_bytes() == (
                    path.read_bytes()
                )
