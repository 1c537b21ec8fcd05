"""The tuned baseline of `tools/frozen_config.py`, tuned as a user tunes one: `lrresearch
tune` on each workload, Optuna's grid sampler over AdamW + warmup-cosine's peak
(`frozen_methods.BASELINE_GRID`, seed 0), its study folder `<logdir>/tune/<workload>`.

Each finished trial becomes the study's cache record of that peak at seed 0 (its final
`--metric` read back from the trial's event file with TensorBoard's loader, as
`frozen_config.train_one` reads a run's), so that the tuned peak, the calibrated frozen
peak and their seed-0 scores are the tune's own runs. A trial that diverged (the trainer
stopped on a non-finite loss) is a failed trial of the study and a diverged record here.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Sequence

import frozen_methods as fm

PEAK = "WarmupCosineController.base_lr"  # the binding the tune searches


def command(w: fm.Workload, grid: Sequence[float], logdir: str, name: str, jobs: int) -> list[str]:
    """The `lrresearch tune` command line of one workload's grid over the peak."""
    fixed = [b for b in fm.baseline(w.steps, grid[0]) if not b.startswith(PEAK)]
    direction = "maximize" if w.higher_is_better else "minimize"
    return [
        sys.executable, "-m", "lrresearch", "tune", f"--gin_file={w.gin_file}",
        *(f"--gin_param={p}" for p in (*w.params, *fixed, "Trainer.seed = 0")),
        f"--search={PEAK}=choice([{', '.join(repr(p) for p in grid)}])",
        "--sampler=grid", f"--trials={len(grid)}", f"--metric={w.tag}",
        f"--direction={direction}", "--seed=0", f"--workers={jobs}",
        f"--logdir={logdir}", f"--study_name={name}", "--quiet",
    ]  # fmt: skip


def shown(cmd: Sequence[str]) -> str:
    """The command as a user types it (`lrresearch tune ...`), an argument with spaces
    or quotes in double quotes (as the guides write gin bindings)."""
    import shlex

    def quote(a: str) -> str:
        if shlex.quote(a) == a or any(c in a for c in '"$`\\'):
            return shlex.quote(a)
        return f'"{a}"'

    return "lrresearch " + " ".join(quote(a) for a in cmd[3:])


def trials(study_dir: str, name: str) -> list:
    """The study's trials in its SQLite storage ([] before it exists)."""
    import optuna

    path = os.path.join(study_dir, "study.db")
    if not os.path.exists(path):
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{os.path.abspath(path)}"
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def finished(study_dir: str, name: str, grid: Sequence[float]) -> dict[float, object]:
    """`{peak: trial}` of the grid's points finished: completed, or failed by an error
    of the run (a divergence), not by a killed worker (`--resume` re-runs those)."""
    from optuna.trial import TrialState

    out = {}
    for t in trials(study_dir, name):
        done = t.state == TrialState.COMPLETE or (
            t.state == TrialState.FAIL and "error" in t.user_attrs
        )
        if done and PEAK in t.params:
            out[float(t.params[PEAK])] = t
    return {p: t for p, t in out.items() if p in grid}


def record(study_dir: str, trial, tag: str) -> dict:
    """A cache record (as `frozen_config.train_one` returns) of one finished trial."""
    import tensorflow as tf
    from measured_page import REPO
    from optuna.trial import TrialState
    from tensorboard.backend.event_processing import event_accumulator as ea

    run_dir = os.path.join(study_dir, trial.user_attrs.get("run", ""))
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    base = {"run_dir": os.path.relpath(run_dir, REPO), "seconds": seconds, "tuned_by": "tune"}
    if trial.state != TrialState.COMPLETE:
        return {**base, "step": -1, "value": math.nan, "diverged": trial.user_attrs["error"]}
    acc = ea.EventAccumulator(run_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    last = acc.Tensors(tag)[-1]
    value = float(tf.make_ndarray(last.tensor_proto))
    return {**base, "step": int(last.step), "value": value}


def tune_all(study, jobs: int, train: bool = True) -> None:
    """Runs (or, with `--resume`, finishes) each workload's tune, cheapest first, then
    saves its finished trials as the study's seed-0 records of the grid's peaks;
    `train=False` only reads the tunes that ran."""
    for key, w in study.ws.items():
        grid = study.baseline_peaks(key)
        name, root = key, os.path.join(study.logdir, "tune")
        study_dir = os.path.join(root, name)
        if train and len(finished(study_dir, name, grid)) < len(grid):
            cmd = command(w, grid, root, name, jobs)
            if os.path.isdir(study_dir):
                cmd = [*cmd[:4], "--resume", f"--logdir={root}", f"--study_name={name}", "--quiet"]
            print(f"tuning the baseline on {key}: {shown(cmd)}", flush=True)
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": _path()})
        for peak, trial in finished(study_dir, name, grid).items():
            job = study.job(key, fm.baseline(w.steps, peak), 0, 0)
            if study.results.get(study.key(job), {}).get("tuned_by") != "tune":
                study.save(job, record(study_dir, trial, w.tag))


def _path() -> str:
    """PYTHONPATH for the tune: this checkout's package first (a worktree's, when run
    from one), then the caller's."""
    from measured_page import REPO

    return os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
