"""`lrresearch tune`: Optuna studies whose trials are run directories, read back with
TensorBoard's loader; pruning, errors before training, a SIGKILLed worker and
`--resume`, and two worker processes on one SQLite study."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import time

import numpy as np
import optuna
import pytest

from lrresearch.cli import commands as cli
from tests.support import Events, free_port, start_cli

# A tiny run: 40 batches of the 8-unit MLP, evaluated every 10.
TINY = [
    "mlp.hidden = (8,)",
    "Trainer.steps = 40",
    "Trainer.eval_every = 10",
    "Trainer.steps_per_loop = 10",
    "Trainer.histogram_every = 0",
    "Trainer.controller = @ConstantController()",
]
SEARCH = "ConstantController.lr=loguniform(1e-3, 1)"
TRIALS = 3


def tune_args(logdir, name: str, *extra: str, params=TINY) -> list[str]:
    flags = [f"--gin_param={p}" for p in params]
    return ["tune", f"--logdir={logdir}", f"--study_name={name}", *flags, *extra]


def load(study_dir) -> optuna.Study:
    name = os.path.basename(study_dir)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir}/study.db")


def last_step(run_dir) -> int:
    return int(Events(run_dir).steps("lr")[-1])


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The same 3-trial study (seeded TPE) without pruning and with the median pruner,
    each run in this process through the CLI; `(logdir, stdout of the unpruned one)`."""
    logdir = tmp_path_factory.mktemp("tune")
    out = io.StringIO()
    common = [f"--search={SEARCH}", f"--trials={TRIALS}", "--seed=0"]
    with contextlib.redirect_stdout(out):
        assert cli.main(tune_args(logdir, "plain", *common)) == 0
    assert cli.main(tune_args(logdir, "pruned", *common, "--pruner=median")) == 0
    return logdir, out.getvalue()


@pytest.mark.slow
def test_every_trial_is_a_run_whose_final_eval_is_the_trials_value(studies):
    logdir, stdout = studies
    study_dir = logdir / "plain"
    trials = load(study_dir).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * TRIALS
    for trial in trials:
        run = study_dir / trial.user_attrs["run"]
        assert run.name.startswith(f"{trial.number:03d}-lr=")
        assert "ConstantController.lr = " in (run / "config.gin").read_text()
        events = Events(run)
        np.testing.assert_array_equal(events.steps("eval/loss"), [9, 19, 29, 39])
        # The value in the storage is the run's last eval/loss, as TensorBoard reads it.
        assert trial.value == pytest.approx(float(events.values("eval/loss")[-1]), rel=1e-6)
        assert len(events.scalar("lr")) == 40
        lr = trial.params["ConstantController.lr"]
        np.testing.assert_allclose(events.scalar("lr"), lr, rtol=1e-6)
    # Best trial first, in the printed table and tune.md; the HParams experiment in the root.
    best = min(trials, key=lambda t: t.value)
    table = (study_dir / "tune.md").read_text()
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    assert rows[0].startswith(f"| {best.number} | {best.user_attrs['run']} |")
    assert [int(r.split("|")[1]) for r in rows] == [
        t.number for t in sorted(trials, key=lambda t: t.value)
    ]
    assert rows[0] in stdout and f"{TRIALS}/{TRIALS} trials finished" in stdout
    root = Events(study_dir)
    assert "_hparams_/experiment" in root.tags
    assert json.loads((study_dir / "study.json").read_text())["settings"]["trials"] == TRIALS


@pytest.mark.slow
def test_median_pruner_trains_fewer_batches_and_marks_pruned_runs(studies):
    logdir, _ = studies
    plain, pruned = load(logdir / "plain").trials, load(logdir / "pruned").trials
    # The same sampler seed: the same trials, so only pruning differs.
    assert [t.params for t in plain] == [t.params for t in pruned]
    batches = {
        name: sum(last_step(logdir / name / t.user_attrs["run"]) + 1 for t in trials)
        for name, trials in (("plain", plain), ("pruned", pruned))
    }
    assert batches["plain"] == TRIALS * 40
    assert batches["pruned"] < batches["plain"]
    stopped = [t for t in pruned if t.state == optuna.trial.TrialState.PRUNED]
    assert stopped
    for trial in pruned:
        run = logdir / "pruned" / trial.user_attrs["run"]
        if trial in stopped:
            record = json.loads((run / "pruned.json").read_text())
            assert record["pruner"] == "median" and record["metric"] == "eval/loss"
            assert record["step"] == last_step(run) + 1 == max(trial.intermediate_values)
            # The value the pruner saw is the run's last eval/loss.
            assert record["value"] == pytest.approx(float(Events(run).values("eval/loss")[-1]))
        else:
            assert not (run / "pruned.json").exists()


@pytest.mark.slow
def test_a_grid_point_that_diverges_is_reported_once_and_the_grid_still_finishes(tmp_path, capsys):
    """A failed grid point would fail again: it is not re-run (no duplicate of another
    point either), the study exits 0 with every point done, and --resume trains nothing."""
    grid = ["--search=ConstantController.lr=choice([0.1, 1e30])", "--sampler=grid"]
    args = tune_args(tmp_path, "g", *grid, "--trials=2", "--seed=0")
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "2/2 trials finished" in out
    trials = load(tmp_path / "g").trials
    states = {t.params["ConstantController.lr"]: t.state for t in trials}
    assert len(trials) == 2, [(t.params, t.state) for t in trials]
    assert states == {"0.1": optuna.trial.TrialState.COMPLETE, "1e30": optuna.trial.TrialState.FAIL}
    (failed,) = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert "NonFiniteLossError" in failed.user_attrs["error"]
    assert "NonFiniteLossError" in (tmp_path / "g" / "tune.md").read_text()
    assert cli.main(["tune", "--resume", f"--logdir={tmp_path}", "--study_name=g"]) == 0
    assert len(load(tmp_path / "g").trials) == 2


@pytest.mark.parametrize(
    "extra, names",
    [
        (["--search=ConstantController.lr=logunif(1e-3, 1)"], ["--search=", "logunif"]),
        (["--search=ConstantController.lr=loguniform(0, 1)"], ["--search=", "0 < low"]),
        (["--search=ConstantController.lr=loguniform(1e-3, 1)", "--sampler=grid"],
         ["--search=", "grid", "choice("]),
        (["--search=ConstantController.lrr=choice([0.1, 0.2])"], ["lrr"]),
        (["--search=ConstantController.lr=choice([0.1])", "--metric=eval/acc"], []),
    ],
)  # fmt: skip
def test_bad_input_exits_2_before_anything_is_written(tmp_path, capsys, extra, names):
    logdir = tmp_path / "runs"
    code = cli.main(tune_args(logdir, "s", "--trials=2", *extra))
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) <= 12
    for name in names:
        assert name in err
    if "--metric=eval/acc" in extra:  # found when the first trial is set up, not trained
        assert "eval/accuracy" in err and not list(logdir.glob("s/000-*/events.*"))
    else:
        assert not logdir.exists() or not any(logdir.iterdir())


def test_unreachable_storage_names_the_flag_and_writes_nothing(tmp_path, capsys):
    port = free_port()
    url = f"postgresql://me:secret@127.0.0.1:{port}/studies"
    code = cli.main(
        tune_args(tmp_path, "s", f"--search={SEARCH}", "--trials=2", f"--storage={url}")
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"--storage postgresql://me:***@127.0.0.1:{port}/studies" in err
    assert "secret" not in err and "start the server" in err
    assert list(tmp_path.iterdir()) == []


def wait_for(condition, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


LONG = [*TINY[:-4], "Trainer.steps = 200", "Trainer.checkpoint_every = 50", *TINY[-3:]]


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkilled_worker_trial_fails_and_resume_continues_its_run(tmp_path, capsys):
    args = tune_args(tmp_path, "k", f"--search={SEARCH}", "--trials=2", "--seed=0", params=LONG)
    worker = start_cli(*args, "--heartbeat=1")
    try:
        wait_for(lambda: list(tmp_path.glob("k/000-*/checkpoints/ckpt-*.index")))
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=60)
    finally:
        worker.kill()
    (killed,) = load(tmp_path / "k").trials
    assert killed.state == optuna.trial.TrialState.RUNNING  # until someone looks
    # At once: while the killed trial is within its grace period (2 heartbeats) the
    # resumed study trains a new trial, then finds the killed one stale and re-runs it.
    assert cli.main(["tune", "--resume", "--study_name=k", f"--logdir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    trials = load(tmp_path / "k").trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and len(trials) == 3
    # The re-queued copy trained the killed trial's run, from its checkpoint.
    (again,) = [t for t in done if t.user_attrs["run"] == killed.user_attrs["run"]]
    assert again.params == killed.params
    began = int(re.search(r"from its checkpoint at step (\d+)", out).group(1))
    assert began >= 50 and began % 50 == 0
    run = tmp_path / "k" / killed.user_attrs["run"]
    np.testing.assert_array_equal(Events(run).steps("lr"), np.arange(200))
    assert again.value == pytest.approx(float(Events(run).values("eval/loss")[-1]))


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_workers_finish_the_trials_and_never_share_a_run(tmp_path, capsys):
    flags = [f"--search={SEARCH}", "--trials=3", "--seed=0"]
    assert cli.main(tune_args(tmp_path, "w", *flags, "--workers=2")) == 0
    out = capsys.readouterr().out
    assert "[w0] tune: trial" in out and "[w1] tune: trial" in out
    trials = load(tmp_path / "w").trials
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 3
    runs = [t.user_attrs["run"] for t in finished]
    assert len(set(runs)) == 3
    assert len({t.params["ConstantController.lr"] for t in finished}) == 3  # seeded apart
    assert len(trials) == 3
    for run in runs:  # each trained once: one start, every batch once
        events = Events(tmp_path / "w" / run)
        np.testing.assert_array_equal(events.steps("lr"), np.arange(40))


@pytest.mark.parametrize("seed", [0, None])
def test_workers_grid_samplers_give_every_point_once(seed):
    """Two workers' samplers (`tune._sampler`, worker 0 and 1, as `--workers 2` makes
    them) asking trials of one study in turn: every grid point once, none twice (they
    once shuffled the grid in two orders, so trial N was another point in each)."""
    from lrresearch.studies import tune
    from lrresearch.studies.tune_space import parse_search
    from lrresearch.studies.tune_study import Settings

    space = parse_search(["ConstantController.lr=choice([0.01, 0.03, 0.1, 0.3, 1.0])"])
    settings = Settings(trials=5, sampler="grid", seed=seed)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="g", storage=storage)
    workers = [tune._sampler(settings, space, started=0, worker=w) for w in (0, 1)]
    asked = []
    for number in range(5):
        sampler = workers[number % 2]
        trial = optuna.load_study(study_name="g", storage=storage, sampler=sampler).ask()
        asked.append(space.suggest(trial)[1]["ConstantController.lr"])
        study.tell(trial, 0.0)
    assert sorted(asked, key=float) == ["0.01", "0.03", "0.1", "0.3", "1.0"]
