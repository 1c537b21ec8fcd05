"""`lrresearch tune` on a real PostgreSQL server, as on two machines: two separate
commands share one study through `--storage`, each with its own `--logdir` (its own
disk); one is SIGKILLed mid-trial and the other finishes the study. Everything is read
back from the database with Optuna and from the event files with TensorBoard's loader."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import time

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from tests.postgres import postgres_server
from tests.support import Events, Finished, finish, start_cli

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.database]

# Batches per trial, checkpointed every 100. On a quiet machine 400 batches of this MLP
# took ~0.2 s after the first checkpoint, and a trial finished between being seen
# RUNNING and the SIGKILL (CI, 2026-12-07): 3,000 leave seconds to kill it mid-trial.
STEPS = 3000
PARAMS = [
    "mlp.hidden = (8,)",
    f"Trainer.steps = {STEPS}",
    "Trainer.checkpoint_every = 100",
    "Trainer.eval_every = 200",
    "Trainer.steps_per_loop = 10",
    "Trainer.histogram_every = 0",
    "Trainer.controller = @ConstantController()",
]
SEARCH = "ConstantController.lr=loguniform(1e-3, 1)"
TRIALS, STUDY = 2, "shared"


def wait_for(condition, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def checkpointed_running_run(storage, logdirs: dict) -> tuple[str, str] | None:
    """`(machine, run)` of a RUNNING trial whose run on that machine has a checkpoint."""
    study = optuna.load_study(study_name=STUDY, storage=storage)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run = trial.user_attrs.get("run")
        for machine, logdir in logdirs.items():
            if run and list((logdir / STUDY / run / "checkpoints").glob("ckpt-*.index")):
                return machine, run
    return None


@dataclasses.dataclass
class Shared:
    """The study after one machine was killed: its trials (from the database), each
    machine's logdir, the killed machine and run, the survivor's finished process."""

    trials: list
    logdirs: dict
    killed_machine: str
    killed_run: str
    survivor: Finished

    @property
    def survivor_logdir(self):
        (other,) = set(self.logdirs) - {self.killed_machine}
        return self.logdirs[other]


@pytest.fixture(scope="module")
def shared_study(tmp_path_factory) -> Shared:
    """Machine "a" creates the study; machine "b" joins it as soon as it is in the
    storage (`--resume --storage`, another `--logdir`), and while b starts, a is
    SIGKILLed in its first trial, past that run's first checkpoint; b finishes the study.
    (b starts TensorFlow for seconds: waiting for both to train before the kill let a
    finish every trial first on a loaded machine.)"""
    logdirs = {m: tmp_path_factory.mktemp(f"machine_{m}") for m in "ab"}
    flags = [f"--gin_param={p}" for p in PARAMS]
    processes = {}
    with postgres_server() as url:
        # One storage, one connection pool, for all the polling: a URL per call opened
        # an engine each time, and their idle connections filled max_connections.
        storage = optuna.storages.RDBStorage(url)
        try:
            processes["a"] = start_cli(
                "tune", f"--logdir={logdirs['a']}", f"--study_name={STUDY}",
                f"--storage={url}", *flags, f"--search={SEARCH}", f"--trials={TRIALS}",
                "--sampler=random", "--seed=0", "--heartbeat=1", stderr=subprocess.PIPE,
            )  # fmt: skip
            wait_for(lambda: STUDY in optuna.get_all_study_names(storage=storage))
            processes["b"] = start_cli(
                "tune", "--resume", f"--logdir={logdirs['b']}", f"--study_name={STUDY}",
                f"--storage={url}", stderr=subprocess.PIPE,
            )  # fmt: skip
            found = []  # a's first trial, past its first checkpoint, not finished
            wait_for(lambda: found.append(checkpointed_running_run(storage, logdirs)) or found[-1])
            machine, run = found[-1]
            processes[machine].send_signal(signal.SIGKILL)
            processes[machine].wait(timeout=60)
            (other,) = set(processes) - {machine}
            survivor = finish(processes[other])
        finally:
            for process in processes.values():
                process.kill()
                process.wait(timeout=60)
        trials = optuna.load_study(study_name=STUDY, storage=storage).trials
        storage.engine.dispose()
    return Shared(trials, logdirs, machine, run, survivor)


def runs(logdir) -> set[str]:
    return {p.parent.name for p in (logdir / STUDY).glob("*/config.gin")}


def test_the_other_machine_finishes_the_study_and_the_killed_trial_is_failed(shared_study):
    study = shared_study
    done, killed = study.survivor, study.killed_run
    assert done.returncode == 0, done.stderr
    assert f"{TRIALS}/{TRIALS} trials finished" in done.stdout
    assert TrialState.RUNNING not in [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == TRIALS
    (failed,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed.user_attrs["run"] == killed
    # Re-queued: a later trial with its parameters completed on the other machine,
    # where the killed run's directory is not: from step 0, under its own number's name.
    (again,) = [t for t in complete if t.system_attrs.get("retry_history") == [failed.number]]
    assert again.params == failed.params
    assert again.user_attrs["run"].startswith(f"{again.number:03d}-")
    assert f"re-run of {killed}, whose run directory is not on this machine" in done.stdout
    assert killed in runs(study.logdirs[study.killed_machine])
    assert again.user_attrs["run"] in runs(study.survivor_logdir)


def test_no_trial_is_trained_twice_and_each_run_logs_every_step_once(shared_study):
    study = shared_study
    on = {machine: runs(logdir) for machine, logdir in study.logdirs.items()}
    assert on["a"] and on["b"] and not on["a"] & on["b"]  # copied together, never merged
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    names = [t.user_attrs["run"] for t in complete]
    assert len(set(names)) == TRIALS and set(names) | {study.killed_run} == on["a"] | on["b"]
    for trial in complete:
        name = trial.user_attrs["run"]
        machine = "a" if name in on["a"] else "b"
        events = Events(study.logdirs[machine] / STUDY / name)
        np.testing.assert_array_equal(events.steps("lr"), np.arange(STEPS))
        lr = trial.params["ConstantController.lr"]
        np.testing.assert_allclose(events.scalar("lr"), lr, rtol=1e-6)
        assert trial.value == pytest.approx(float(events.values("eval/loss")[-1]), rel=1e-6)
    # The killed run stopped part-way, each of its steps logged once.
    killed = study.logdirs[study.killed_machine] / STUDY / study.killed_run
    steps = Events(killed).steps("lr")
    assert 0 < len(steps) < STEPS
    np.testing.assert_array_equal(steps, np.arange(len(steps)))
