"""`lrresearch tune --method=NAME=SOURCE`: one Optuna study per method in one storage and
folder, each with its own search space and trials, runs that record their method (read
back with TensorBoard's loader and `compare`'s grouping); Ctrl-C and `--resume`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import threading
import time

import gin
import numpy as np
import optuna
import pytest

from lrresearch.analysis import bindings, groups
from lrresearch.cli import commands as cli
from lrresearch.studies import tune_methods, tune_storage, tune_study
from tests.support import Events

TINY = [
    "mlp.hidden = (8,)",
    "Trainer.steps = 20",
    "Trainer.eval_every = 10",
    "Trainer.steps_per_loop = 10",
    "Trainer.histogram_every = 0",
]
CONST = "const=Trainer.controller = @ConstantController()"
GRAD_NORM = "gn=strategies/grad_norm.gin; GradNormController.slope = 0.002"
FIXED = "fixed=Trainer.controller = @ConstantController(); ConstantController.lr = 0.05"
SEARCH = [
    "--search=const:ConstantController.lr=loguniform(1e-3, 1)",
    "--search=gn:GradNormController.base_lr=loguniform(1e-2, 1)",
]
TRIALS = {"const": 2, "gn": 2, "fixed": 1}  # --trials=2; nothing to search: one trial


def tune_args(logdir, *extra: str) -> list[str]:
    flags = [f"--gin_param={p}" for p in TINY]
    return ["tune", f"--logdir={logdir}", "--study_name=m", *flags, *extra]


def _interrupt_when(pattern: str, study_dir) -> threading.Thread:
    """A thread that sends this process SIGINT (Ctrl-C) once a run matching `pattern`
    appears in `study_dir` (the worker's handler is installed by then)."""

    def watch() -> None:
        end = time.monotonic() + 120
        while not list(study_dir.glob(pattern)) and time.monotonic() < end:
            time.sleep(0.01)
        # Only to the worker's own handler (a test outside the main thread has none).
        handler = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
        if type(handler).__name__ == "StopOnSignal":
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Three methods (two searched, one fixed), --trials=2: stopped by Ctrl-C during
    its second trial, then finished with `tune --resume`. Returns `(study folder,
    stdout of the first command, its exit code, stdout of the resume)`."""
    logdir = tmp_path_factory.mktemp("tune_methods")
    first, again = io.StringIO(), io.StringIO()
    methods = [f"--method={m}" for m in (CONST, GRAD_NORM, FIXED)]
    try:
        watcher = _interrupt_when("gn-000-*", logdir / "m")
        with contextlib.redirect_stdout(first), contextlib.redirect_stderr(first):
            code = cli.main(tune_args(logdir, *methods, *SEARCH, "--trials=2", "--seed=0"))
        watcher.join(timeout=10)
        with contextlib.redirect_stdout(again):
            resumed = cli.main(["tune", "--resume", "--study_name=m", f"--logdir={logdir}"])
        assert resumed == 0, again.getvalue()
    finally:
        gin.clear_config()
    return logdir / "m", first.getvalue(), code, again.getvalue()


def finished(study_dir) -> dict[str, list[optuna.trial.FrozenTrial]]:
    """Each method's complete trials, from its own study in the storage."""
    storage = f"sqlite:///{study_dir}/study.db"
    return {
        method: optuna.load_study(study_name=f"m/{method}", storage=storage).get_trials(
            states=(optuna.trial.TrialState.COMPLETE,)
        )
        for method in TRIALS
    }


@pytest.mark.slow
def test_each_method_is_its_own_optuna_study_with_its_own_trials(study):
    study_dir, first, code, _ = study
    storage = f"sqlite:///{study_dir}/study.db"
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == {"m/const", "m/gn", "m/fixed"}
    trials = finished(study_dir)
    assert {method: len(done) for method, done in trials.items()} == TRIALS
    assert set(trials["const"][0].params) == {"ConstantController.lr"}
    assert set(trials["gn"][0].params) == {"GradNormController.base_lr"}
    assert trials["fixed"][0].params == {}
    # Ctrl-C during gn's first trial: the methods were taken in turn, and the
    # message names the command that continues the study (its folder's name).
    assert code == 130
    started = re.findall(r"tune: trial \d+ of (\w+)", first)
    assert started == ["const", "gn"]
    assert f"lrresearch tune --resume --study_name m --logdir {study_dir.parent}" in first


@pytest.mark.slow
def test_each_run_has_its_methods_config_and_its_trials_value(study):
    study_dir, *_ = study
    for method, trials in finished(study_dir).items():
        for trial in trials:
            run = study_dir / trial.user_attrs["run"]
            number = trial.system_attrs.get("retry_history", [trial.number])[0]
            assert re.fullmatch(rf"{method}-{number:03d}(-.+)?", run.name)  # a re-run keeps it
            operative = (run / "config.gin").read_text()
            events = Events(run)
            # Every batch trained once (the interrupted run resumed from its checkpoint).
            lr = events.scalar("lr")
            assert len(lr) == 20
            assert trial.value == pytest.approx(float(events.values("eval/loss")[-1]), rel=1e-6)
            assert events.hparams()["method"] == method
            if method == "gn":
                base_lr = trial.params["GradNormController.base_lr"]
                assert f"GradNormController.base_lr = {base_lr!r}" in operative
                assert "GradNormController.slope = 0.002" in operative
                assert "ConstantController" not in operative
                norm = events.scalar("grad/global_norm")
                rule = np.maximum(0.01, base_lr - 0.002 * norm)
                np.testing.assert_allclose(lr, np.where(norm < 1e-3, 0.11, rule), rtol=1e-5)
            else:
                assert "GradNormController" not in operative
                expected = trial.params.get("ConstantController.lr", 0.05)
                np.testing.assert_allclose(lr, expected, rtol=1e-6)


@pytest.mark.slow
def test_study_json_and_compare_group_the_runs_by_method(study):
    study_dir, *_ = study
    manifest = json.loads((study_dir / "study.json").read_text())
    assert manifest["study"]["methods"] == [CONST, GRAD_NORM, FIXED]
    recorded = {entry["run"]: entry["method"] for entry in manifest["runs"]}
    runs = sorted(p for p in study_dir.iterdir() if (p / "config.gin").exists())
    assert {run.name: run.name.split("-")[0] for run in runs} == recorded
    found = groups.group_runs([bindings.read_config(str(run)) for run in runs])
    for group in found:
        methods = {recorded[runs[i].name] for i in group.members}
        assert methods == {group.method} and group.label.startswith(group.method)


@pytest.mark.slow
def test_tune_md_has_each_methods_best_trial_then_its_trials(study):
    study_dir, _, _, out = study
    text = (study_dir / "tune.md").read_text()
    for method, trials in finished(study_dir).items():
        best = min(trials, key=lambda t: t.value)
        section = text.split(f"## {method} (m/{method})")[1].split("## ")[0]
        assert f"best: trial {best.number}, {best.user_attrs['run']}, eval/loss" in section
        rows = [line for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
        assert rows[0].startswith(f"| {best.number} | {best.user_attrs['run']} |")
    assert "5/5 trials finished" in out


def test_pick_takes_the_method_with_fewest_trials_first_of_equals():
    assert tune_methods.pick([(0, 2), (0, 2), (0, 1)]) == 0
    assert tune_methods.pick([(1, 2), (0, 2), (0, 1)]) == 1
    assert tune_methods.pick([(2, 3), (1, 3), (1, 1)]) == 1  # the last one has its trial
    assert tune_methods.pick([(2, 2), (1, 1)]) is None


@pytest.mark.parametrize(
    "extra, names",
    [
        ([f"--method={CONST}", "--search=cnst:ConstantController.lr=uniform(0, 1)"],
         ["'cnst' names no --method", "const"]),
        ([f"--method={CONST}", f"--method={GRAD_NORM}",
          "--search=ConstantController.lrr=uniform(0, 1)"], ["lrr", "--method='const="]),
        ([f"--method={CONST}; Nope.x = 1", "--search=ConstantController.lr=uniform(0, 1)"],
         ["Nope", "--method="]),
        ([f"--method={FIXED}"], ["one or more --search", "sweep --method"]),
        ([f"--method={CONST}", "--sampler=grid",
          "--search=const:ConstantController.lr=choice([0.1])"], ["grid", "--method='const="]),
    ],
)  # fmt: skip
def test_bad_methods_exit_2_before_anything_is_written(tmp_path, capsys, extra, names):
    logdir = tmp_path / "runs"
    code = cli.main(tune_args(logdir, "--trials=2", *extra))
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) <= 12
    for name in names:
        assert name in err
    assert not logdir.exists() or not any(logdir.iterdir())


def test_a_shared_storage_knows_a_method_study_by_its_name(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/shared.db"
    spec = tune_study.StudySpec(
        "", (), tuple(TINY), (SEARCH[0].removeprefix("--search="),), (), (CONST, FIXED)
    )
    tune_study.create(str(tmp_path / "a"), "m", spec, tune_study.Settings(2, storage=url))
    storage = tune_storage.open_storage(url, 10)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == {"m/const", "m/fixed"}
    # Another machine joins by the study's name: the flags are on each method's study.
    assert tune_storage.study_flags(storage, "m", url)["study"]["methods"] == [CONST, FIXED]
    # A new study of that name in the same storage is refused before anything is written.
    code = cli.main(tune_args(tmp_path / "b", f"--method={CONST}", SEARCH[0], "--trials=1",
                              f"--storage={url}"))  # fmt: skip
    assert code == 2 and "already in --storage" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
