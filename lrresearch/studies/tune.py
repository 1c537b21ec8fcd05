"""`lrresearch tune`: a study on Optuna, every trial an ordinary run directory.

The study folder `<logdir>/<study_name>` holds `study.json` (the study's flags, so that
`--resume` and every worker run the same study), the Optuna storage (by default
`sqlite:///<study folder>/study.db`; `--storage` takes any SQLAlchemy URL, PostgreSQL for
workers on several machines), the HParams experiment, `tune.md` (the final table) and
one run directory per trial, `NNN-<param=value>-...` with NNN the trial number, trained
as `sweep` trains a point. TensorBoard, `compare` and `train --resume` read them as any
run.

A worker (`run_worker`) asks Optuna for trials until `Settings.trials` are finished
(COMPLETE or PRUNED; failed trials do not count) across every worker. Faults:
  * every running trial sends a heartbeat (`Settings.heartbeat` seconds); a worker that
    dies (SIGKILL) leaves its trial RUNNING until another worker, or `--resume`, finds
    it stale (`optuna.storages.fail_stale_trials`, before each trial): it becomes FAIL
    and a copy is queued (`RetryHeartbeatStaleTrialCallback`), which resumes the killed
    trial's run directory from its checkpoint (user attribute "run");
  * Ctrl-C or SIGTERM stops the current trial after its compiled call, with its
    checkpoint: the trial becomes FAIL, is queued in the same way, and `TuneInterrupted`
    says how to continue.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import time
import warnings
from collections.abc import Callable
from typing import Any

import gin
import numpy as np
import optuna
from optuna.trial import TrialState

from lrresearch.config import parse as config
from lrresearch.studies import sweep, tune_report, tune_storage
from lrresearch.studies.sampling import literal
from lrresearch.studies.tune_space import SearchSpace, parse_search
from lrresearch.training import distribute
from lrresearch.training.outer_loop import StopRun, TrainingInterrupted, TrainingStopped
from lrresearch.training.run_dir import write_atomically
from lrresearch.training.trainer import Trainer

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "hyperband", "successive_halving")
DIRECTIONS = ("minimize", "maximize")
HEARTBEAT_SECONDS = 10  # a dead worker's trial is found stale after 2x this
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """One Optuna study's own inputs: its name in the storage, the gin configuration
    every trial starts from, and the search space (`--search` flags)."""

    name: str
    gin_files: tuple[str, ...]
    gin_params: tuple[str, ...]
    search: tuple[str, ...]
    search_path: tuple[str, ...] = ()

    def space(self) -> SearchSpace:
        return parse_search(self.search)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a study runs (the same for every study of a `tune` command).

    Attributes:
      trials: finished trials (COMPLETE + PRUNED) the study stops at.
      metric: the eval tag whose final value is the objective (`eval/loss`).
      seed: seeds the sampler, not training (None: Optuna's random seed).
      storage: an SQLAlchemy URL; None is `sqlite:///<study folder>/study.db`.
      heartbeat: seconds between a running trial's heartbeats.
    """

    trials: int
    sampler: str = "tpe"
    metric: str = "eval/loss"
    direction: str = "minimize"
    pruner: str = "none"
    seed: int | None = None
    storage: str | None = None
    heartbeat: int = HEARTBEAT_SECONDS

    def storage_url(self, study_dir: str) -> str:
        return self.storage or f"sqlite:///{os.path.abspath(study_dir)}/study.db"


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the study; the message says how to continue."""

    def __str__(self) -> str:
        return str(self.args[0])


class _TrialError(Exception):
    """A trial whose run failed (recorded; the study goes on)."""


class _Pruned(StopRun):
    """The pruner stopped a trial's run at `step` with `value` of the metric."""

    def __init__(self, metric: str, value: float, step: int):
        super().__init__(f"{metric} {value:.4g} pruned at step {step}")
        self.value = value


class _SurplusError(Exception):
    """A trial asked for when the study already had its trials (workers asking at once)."""


def check(spec: StudySpec, settings: Settings) -> SearchSpace:
    """Every flag of the study checked before anything is written or trained: the
    search space (and the grid's), the settings, the gin files and each `--search`
    binding at its ends. Raises `config.ConfigError` naming the flag."""
    space = spec.space()
    if settings.trials < 1:
        raise config.ConfigError(f"--trials must be >= 1, got {settings.trials}")
    for flag, value, allowed in (
        ("--sampler", settings.sampler, SAMPLERS),
        ("--pruner", settings.pruner, PRUNERS),
        ("--direction", settings.direction, DIRECTIONS),
    ):
        if value not in allowed:
            raise config.ConfigError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
    if not settings.metric.startswith("eval/") or settings.metric == "eval/":
        raise config.ConfigError(
            f"--metric must be an eval tag, eval/loss or eval/<metric> (eval/accuracy), "
            f"got {settings.metric!r}"
        )
    if settings.sampler == "grid" and settings.trials > space.grid_size():
        raise config.ConfigError(
            f"--trials {settings.trials} is more than the {space.grid_size()} points of "
            f"the --sampler grid; give --trials {space.grid_size()} or fewer"
        )
    samples, values = list(space.samples), space.example_values()
    sweep.check_axes(spec.gin_files, spec.gin_params, (), samples, values, spec.search_path)
    if settings.pruner != "none" and _cadence(spec)[1] == 0:
        raise config.ConfigError(
            f"--pruner {settings.pruner} needs evaluations during each run; bind "
            "Trainer.eval_every (batches), e.g. --gin_param='Trainer.eval_every = 100'"
        )
    return space


def _cadence(spec: StudySpec) -> tuple[int, int]:
    """`(Trainer.steps, Trainer.eval_every)` of the study's base configuration."""
    try:
        config.parse(list(spec.gin_files), list(spec.gin_params), spec.search_path)
        trainer = Trainer()
        return trainer.cadences.steps, trainer.cadences.eval_every
    finally:
        gin.clear_config()


def flags_json(spec: StudySpec, settings: Settings) -> dict[str, Any]:
    """What `study.json` holds (and the storage's study attribute "flags")."""
    return {"study": dataclasses.asdict(spec), "settings": dataclasses.asdict(settings)}


def from_flags(flags: dict[str, Any]) -> tuple[StudySpec, Settings]:
    study = {k: tuple(v) if isinstance(v, list) else v for k, v in flags["study"].items()}
    return StudySpec(**study), Settings(**flags["settings"])


def create(
    logdir: str, study_name: str | None, spec: StudySpec, settings: Settings
) -> tuple[str, StudySpec]:
    """Checks everything, then creates the study folder (never overwriting one), its
    `study.json` and the Optuna study. Returns the folder and the spec with its name."""
    from lrresearch.training.open_run import open_run

    check(spec, settings)
    if settings.storage:  # reachable, and the name free, before the folder is made
        storage = tune_storage.open_storage(settings.storage, settings.heartbeat)
        if study_name:
            tune_storage.check_new(storage, study_name, settings.storage)
    with open_run(logdir, study_name, "tune", name_flag="--study_name") as root:
        spec = dataclasses.replace(spec, name=os.path.basename(root.path))
        flags = flags_json(spec, settings)
        write_atomically(os.path.join(root.path, "study.json"), json.dumps(flags, indent=2))
        storage = tune_storage.open_storage(settings.storage_url(root.path), settings.heartbeat)
        study = optuna.create_study(
            study_name=spec.name, storage=storage, direction=settings.direction
        )
        study.set_user_attr("flags", flags)
    return root.path, spec


def join(logdir: str, study_name: str, storage_url: str | None) -> tuple[str, StudySpec, Settings]:
    """An existing study (`--resume`): its flags from `study.json`, or, where this
    machine has no folder for it, from the storage `--storage` names (the folder is
    then made here, for the trials this machine trains)."""
    from lrresearch.training.run_dir import run_path

    study_dir = run_path(logdir, study_name)
    path = os.path.join(study_dir, "study.json")
    if os.path.exists(path):
        with open(path) as f:
            spec, settings = from_flags(json.load(f))
        if storage_url and storage_url != settings.storage_url(study_dir):
            raise config.ConfigError(
                f"--storage {tune_storage.masked(storage_url)} is not the study's own "
                f"({tune_storage.masked(settings.storage_url(study_dir))}, in {path}); "
                "leave --storage out"
            )
        return study_dir, spec, settings
    if not storage_url:
        raise config.ConfigError(
            f"tune --resume: no study at {study_dir!r} (no study.json); pass the study's "
            "--study_name and --logdir, or its --storage to join it from another machine"
        )
    storage = tune_storage.open_storage(storage_url, HEARTBEAT_SECONDS)
    flags = tune_storage.study_flags(storage, study_name, storage_url)
    os.makedirs(study_dir, exist_ok=True)
    write_atomically(path, json.dumps(flags, indent=2))
    return study_dir, *from_flags(flags)


def _sampler(
    settings: Settings, space: SearchSpace, started: int, worker: int
) -> optuna.samplers.BaseSampler:
    """The `--sampler`. A study's first process draws from `--seed` itself; a worker
    or a resumed study from a seed made of it, the trials so far (`started`) and the
    worker's index, so that two workers (or a resumed study) never repeat its draws."""
    seed = settings.seed
    if seed is not None and (started, worker) != (0, 0):
        seed = int(np.random.SeedSequence([seed, started, worker]).generate_state(1)[0])
    if settings.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(settings: Settings, spec: StudySpec) -> optuna.pruners.BasePruner:
    """The `--pruner`, its resource counted in batches trained: Hyperband from one
    evaluation to the whole run (`Trainer.steps` of the base configuration)."""
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    steps, eval_every = _cadence(spec)
    if settings.pruner == "median":
        # The median needs a few finished trials; a trial's first eval is noisy.
        startup = min(5, max(1, settings.trials // 4))
        warmup = max(eval_every, steps // 10)
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if settings.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=eval_every, reduction_factor=3)
    return optuna.pruners.HyperbandPruner(
        min_resource=eval_every, max_resource=steps, reduction_factor=3
    )


def load_study(
    study_dir: str, spec: StudySpec, settings: Settings, worker: int = 0
) -> optuna.Study:
    """The study in its storage, with the sampler and pruner of its settings."""
    storage = tune_storage.open_storage(settings.storage_url(study_dir), settings.heartbeat)
    started = len(optuna.load_study(study_name=spec.name, storage=storage).trials)
    return optuna.load_study(
        study_name=spec.name,
        storage=storage,
        sampler=_sampler(settings, spec.space(), started, worker),
        pruner=_pruner(settings, spec),
    )


@dataclasses.dataclass
class _Worker:
    """One process's share of a study: its trials, asked one at a time."""

    study: optuna.Study
    study_dir: str
    spec: StudySpec
    settings: Settings
    progress: Callable[[str], None]
    stop: distribute.StopOnSignal
    current: int | None = None  # the number of the trial in hand
    stopped_at: int | None = None  # the step Ctrl-C stopped its run at

    def tally(self) -> dict[str, int]:
        trials = self.study.get_trials(deepcopy=False)
        return {
            "finished": sum(t.state in FINISHED for t in trials),
            "running": sum(t.state == TrialState.RUNNING for t in trials),
            "failed": sum(t.state == TrialState.FAIL and "error" in t.user_attrs for t in trials),
        }

    def run(self) -> None:
        """Trials until the study has its `trials` finished (or as many failed)."""
        while not self.stop.requested:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            n = self.tally()
            if n["finished"] >= self.settings.trials:
                return
            if n["failed"] >= self.settings.trials:
                self.progress(f"tune: {n['failed']} trials failed; stopping (see tune.md)")
                return
            if n["finished"] + n["running"] >= self.settings.trials:
                self._wait()  # others' trials may still fail (or die) and be re-queued
                continue
            self.study.optimize(self.objective, n_trials=1, catch=(_TrialError, _SurplusError))
            self.current = None

    def _wait(self) -> None:
        end = time.monotonic() + self.settings.heartbeat
        while time.monotonic() < end and not self.stop.requested:
            time.sleep(0.2)

    def objective(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        ahead = self.study.get_trials(
            deepcopy=False, states=(*FINISHED, TrialState.RUNNING)
        )  # one more than needed when workers asked at once: not trained
        if sum(t.number < trial.number for t in ahead) >= self.settings.trials:
            trial.set_user_attr("surplus", True)
            raise _SurplusError
        bindings, values = self.spec.space().suggest(trial)
        previous = trial.user_attrs.get("run")  # a re-queued trial: its run resumes
        run_name = previous or self.spec.space().run_name(trial.number, bindings, values)
        trial.set_user_attr("run", run_name)
        n = self.tally()
        again = f" (resuming {previous})" if previous else ""
        self.progress(
            f"tune: trial {trial.number} ({n['finished']}/{self.settings.trials} "
            f"finished) {run_name}{again}"
        )
        try:
            return self._train(trial, bindings, run_name, previous is not None)
        finally:
            gin.clear_config()

    def _train(self, trial: optuna.Trial, bindings: dict[str, str], run: str, resume: bool):
        metric = self.settings.metric.removeprefix("eval/")
        try:
            config.parse(
                list(self.spec.gin_files),
                [*self.spec.gin_params, *(f"{k} = {v}" for k, v in bindings.items())],
                self.spec.search_path,
            )
            trainer = Trainer(strategy=distribute.get_strategy())
            trainer.extra_hparams = {name: literal(source) for name, source in bindings.items()}
            trainer.build()
        except (ValueError, RuntimeError) as e:
            raise self._failed(trial, e) from None
        _check_metric(trainer, self.settings.metric)
        trial.set_user_attr("hparams", trainer.hparams())
        if self.stop.requested:
            raise KeyboardInterrupt  # Ctrl-C while it was being set up
        on_eval = None if self.settings.pruner == "none" else _reporter(trial, metric, trainer)
        try:
            result = trainer.fit(
                logdir=self.study_dir, run_name=run, quiet=True, resume=resume, on_eval=on_eval
            )
        except TrainingInterrupted:
            self.stopped_at = int(trainer.step.numpy())
            raise
        except TrainingStopped as e:
            _write_pruned(os.path.join(self.study_dir, run), e, self.settings)
            self.progress(f"  pruned: {e.reason}")
            raise optuna.TrialPruned(str(e.reason)) from None
        except Exception as e:  # a failed trial must not end the study
            raise self._failed(trial, e) from None
        if metric not in result.evals:
            raise self._failed(trial, ValueError(f"the run ended with no eval/{metric}"))
        if result.began:
            self.progress(f"  resumed {run} from its checkpoint at step {result.began}")
        self.progress(f"  {result.summary_line()}")
        return result.evals[metric]

    def _failed(self, trial: optuna.Trial, error: Exception) -> _TrialError:
        message = f"{type(error).__name__}: {error}".strip().splitlines()[0]
        message = (config.explain_missing_binding(error) or message).splitlines()[0]
        trial.set_user_attr("error", message)
        self.progress(f"  FAILED: {message}")
        return _TrialError(message)


def _check_metric(trainer: Trainer, metric: str) -> None:
    """`--metric` must be among the evaluations the runs log (before anything trains)."""
    names = [] if trainer.eval_dataset is None else ["loss", *(m.name for m in trainer.metrics)]
    if metric.removeprefix("eval/") not in names:
        has = ", ".join(f"eval/{n}" for n in names) or "no eval tags (no held-out data)"
        raise config.ConfigError(
            f"--metric {metric}: the runs log {has}; pick one of those with --metric, or "
            "add the metric with Trainer.metrics"
        )


def _reporter(
    trial: optuna.Trial, metric: str, trainer: Trainer
) -> Callable[[int, dict[str, float]], None]:
    """The `on_eval` callback of a pruned study: reports the metric at each evaluation
    (step = batches trained) and stops the run when the pruner says so (never at the
    run's end, where the trial is complete anyway)."""

    def report(step: int, evals: dict[str, float]) -> None:
        if metric not in evals:
            return
        trial.report(evals[metric], step)
        if step < trainer.cadences.steps and trial.should_prune():
            raise _Pruned(f"eval/{metric}", evals[metric], step)

    return report


def _write_pruned(run_dir: str, stopped: TrainingStopped, settings: Settings) -> None:
    """`pruned.json` in a pruned trial's run directory: where and why it stopped."""
    value = getattr(stopped.reason, "value", None)
    text = json.dumps(
        {"step": stopped.step, "metric": settings.metric, "value": value, "pruner": settings.pruner}
    )
    write_atomically(os.path.join(run_dir, "pruned.json"), text + "\n")


def run_worker(
    study_dir: str,
    spec: StudySpec,
    settings: Settings,
    progress: Callable[[str], None] = print,
    worker: int = 0,
) -> None:
    """Runs trials of the study until it has `settings.trials` finished (`worker`: the
    index of a `--workers` process, which seeds its sampler apart).

    Raises:
      TuneInterrupted: Ctrl-C or SIGTERM; the trial in hand is re-queued to resume.
      config.ConfigError: `--metric` is not among the runs' evaluations.
    """
    study = load_study(study_dir, spec, settings, worker)
    with distribute.StopOnSignal() as stop:
        worker = _Worker(study, study_dir, spec, settings, progress, stop)
        try:
            worker.run()
        except KeyboardInterrupt:
            stop.requested = True
        if stop.requested:
            requeued = tune_storage.requeue(study, worker.current)
            if requeued and worker.stopped_at is not None:
                requeued += f" stopped at step {worker.stopped_at}"
            raise TuneInterrupted(interrupted_message(study_dir, spec, settings, requeued))


def interrupted_message(
    study_dir: str, spec: StudySpec, settings: Settings, requeued: str | None
) -> str:
    """What an interrupted study did, and the command that continues it."""
    lines = [f"tune interrupted: the study is in {study_dir}"]
    if requeued:
        lines.append(f"  {requeued}, checkpoint saved: queued to resume from it")
    command = ["lrresearch", "tune", "--resume", "--study_name", spec.name]
    command += ["--logdir", os.path.dirname(study_dir) or "."]
    if settings.storage:
        command += ["--storage", tune_storage.masked(settings.storage)]
    lines.append(f"continue the study (to {settings.trials} trials) with:")
    lines.append(f"    {shlex.join(command)}")
    return "\n".join(lines)


def finished_count(study_dir: str, spec: StudySpec, settings: Settings) -> int:
    """The study's finished trials (COMPLETE + PRUNED)."""
    study = load_study(study_dir, spec, settings)
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def finish(study_dir: str, spec: StudySpec, settings: Settings) -> str:
    """Writes `tune.md` and the HParams experiment in the study folder; returns the
    table (best trial first)."""
    study = load_study(study_dir, spec, settings)
    return tune_report.finish(study, study_dir, spec.space(), settings.metric, settings.direction)
