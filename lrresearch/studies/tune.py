"""`lrresearch tune`: a study on Optuna, every trial an ordinary run directory.

The study folder `<logdir>/<study_name>` holds `study.json` (the study's flags, so that
`--resume` and every worker run the same study), the Optuna storage (by default
`sqlite:///<study folder>/study.db`; `--storage` takes any SQLAlchemy URL, PostgreSQL for
workers on several machines), the HParams experiment, `tune.md` (the final table) and
one run directory per trial, `NNN-<param=value>-...` with NNN the trial number, trained
as `sweep` trains a point. TensorBoard, `compare` and `train --resume` read them as any
run.

With `--method`s (`tune_methods`), each method is its own Optuna study
`<study_name>/<method>` with its own search space and `Settings.trials`, its runs named
`<method>-NNN-...` in the same folder; a worker takes the method with the fewest
finished + running trials next.

A worker (`run_worker`) asks Optuna for trials until `Settings.trials` are finished
(COMPLETE or PRUNED; failed trials do not count) across every worker. Faults:
  * every running trial sends a heartbeat (`Settings.heartbeat` seconds); a worker that
    dies (SIGKILL) leaves its trial RUNNING until another worker, or `--resume`, finds
    it stale (`optuna.storages.fail_stale_trials`, before each trial): it becomes FAIL
    and a copy is queued (`RetryHeartbeatStaleTrialCallback`), which resumes the killed
    trial's run directory from its checkpoint (user attribute "run") if it is on this
    machine's disk, else trains again from step 0 under its own trial number's name;
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

import gin
import numpy as np
import optuna
from optuna.trial import TrialState

from lrresearch.config import parse as config
from lrresearch.studies import tune_methods, tune_report, tune_storage
from lrresearch.studies.sampling import literal
from lrresearch.studies.tune_methods import Arm
from lrresearch.studies.tune_space import SearchSpace
from lrresearch.studies.tune_study import Settings, StudySpec, cadence
from lrresearch.training import distribute
from lrresearch.training.outer_loop import StopRun, TrainingInterrupted, TrainingStopped
from lrresearch.training.run_dir import write_atomically
from lrresearch.training.trainer import Trainer

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts toward --trials


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


def _sampler(
    settings: Settings, space: SearchSpace, started: int, worker: int, index: int = 0
) -> optuna.samplers.BaseSampler:
    """The `--sampler`. A study's first process draws from `--seed` itself; a worker
    or a resumed study from a seed made of it, the trials so far (`started`), the
    worker's index and the method's (`index`), so that two workers (or a resumed
    study, or two methods) never repeat its draws. The grid's order is the same in
    every process (`--seed` itself): the grid sampler gives trial N the N-th point of
    its seeded shuffle, so two orders would repeat points and skip others."""
    if settings.sampler == "grid" and space.samples:
        return optuna.samplers.GridSampler(space.grid(), seed=settings.seed)
    seed = settings.seed
    if seed is not None and (started, worker, index) != (0, 0, 0):
        key = [seed, started, worker, *([index] if index else [])]
        seed = int(np.random.SeedSequence(key).generate_state(1)[0])
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(settings: Settings, spec: StudySpec, arm: Arm) -> optuna.pruners.BasePruner:
    """The `--pruner`, its resource counted in batches trained: Hyperband from one
    evaluation to the whole run (`Trainer.steps` of the arm's base configuration)."""
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    steps, eval_every = cadence(spec, arm)
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


def load_studies(
    study_dir: str, spec: StudySpec, settings: Settings, worker: int = 0
) -> list[tuple[Arm, optuna.Study]]:
    """Each arm's study in the storage (one per `--method`, one without), with the
    sampler and pruner of the settings."""
    url = settings.storage_url(study_dir)
    storage = tune_storage.open_storage(url, settings.heartbeat)
    loaded = []
    for index, arm in enumerate(spec.arms()):
        name = arm.study_name(spec.name)
        try:
            started = len(optuna.load_study(study_name=name, storage=storage).trials)
        except KeyError:
            raise config.ConfigError(
                f"tune: no study {name!r} in the storage {tune_storage.masked(url)} (named "
                f"by {study_dir}/study.json); was it deleted? Start a new study"
            ) from None
        sampler = _sampler(settings, arm.space, started, worker, index)
        pruner = _pruner(settings, spec, arm)
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        loaded.append((arm, study))
    return loaded


@dataclasses.dataclass
class _Worker:
    """One process's share of a study: its trials, asked one at a time, each of the
    method (`arm`) with the fewest finished + running trials."""

    studies: list[tuple[Arm, optuna.Study]]
    study_dir: str
    spec: StudySpec
    settings: Settings
    progress: Callable[[str], None]
    stop: distribute.StopOnSignal
    current: int | None = None  # the number of the trial in hand
    stopped_at: int | None = None  # the step Ctrl-C stopped its run at
    arm: Arm | None = None  # the method of the trial in hand (asked or last asked)
    study: optuna.Study | None = None  # its study

    def tally(self, study: optuna.Study) -> dict[str, int]:
        trials = study.get_trials(deepcopy=False)
        return {
            "finished": sum(t.state in FINISHED for t in trials),
            "running": sum(t.state == TrialState.RUNNING for t in trials),
            "failed": sum(t.state == TrialState.FAIL and "error" in t.user_attrs for t in trials),
        }

    def run(self) -> None:
        """Trials until every arm has its trials finished (or as many failed)."""
        while not self.stop.requested:
            counts, given_up = [], []
            for arm, study in self.studies:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                n, target = self.tally(study), arm.target(self.settings.trials)
                if self.settings.sampler == "grid" and arm.space.samples:
                    # A grid point that failed would fail again (the same config): done.
                    n["finished"] += n["failed"]
                elif n["failed"] >= target and n["finished"] < target:
                    given_up.append(f"{arm.name or 'the study'}: {n['failed']} trials failed")
                    target = 0  # no more trials of it
                counts.append((n["finished"] + n["running"], target, n["finished"] >= target))
            if all(done for *_, done in counts):
                if given_up:
                    self.progress(f"tune: {'; '.join(given_up)}; stopping (see tune.md)")
                return
            index = tune_methods.pick([(started, target) for started, target, _ in counts])
            if index is None:
                self._wait()  # others' trials may still fail (or die) and be re-queued
                continue
            self.arm, self.study = self.studies[index]
            self.study.optimize(self.objective, n_trials=1, catch=(_TrialError, _SurplusError))
            self.current = None

    def _wait(self) -> None:
        """A pause before the next look at the study (a cheap query), short enough to
        see the last trial finish soon after it does."""
        end = time.monotonic() + min(1.0, self.settings.heartbeat)
        while time.monotonic() < end and not self.stop.requested:
            time.sleep(0.1)

    def objective(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        arm, target = self.arm, self.arm.target(self.settings.trials)
        ahead = self.study.get_trials(
            deepcopy=False, states=(*FINISHED, TrialState.RUNNING)
        )  # one more than needed when workers asked at once: not trained
        if sum(t.number < trial.number for t in ahead) >= target:
            trial.set_user_attr("surplus", True)
            raise _SurplusError
        bindings, values = arm.space.suggest(trial)
        previous, again = self._previous_run(trial)
        run_name = previous or arm.run_name(trial.number, bindings, values)
        trial.set_user_attr("run", run_name)
        if arm.method:
            trial.set_user_attr("method", arm.name)
            tune_methods.record_run(self.study_dir, run_name, arm.name, trial.number)
        n = self.tally(self.study)
        of = f" of {arm.name}" if arm.method else ""
        self.progress(
            f"tune: trial {trial.number}{of} ({n['finished']}/{target} finished) {run_name}{again}"
        )
        try:
            return self._train(trial, bindings, run_name, previous is not None)
        finally:
            gin.clear_config()

    def _previous_run(self, trial: optuna.Trial) -> tuple[str | None, str]:
        """A re-queued trial's run (None: a new run) and the note that says so. The
        killed worker may have been on another machine, its run directory on that
        machine's disk: the trial then trains again from step 0 under its own number's
        name, so that the two folders, copied together, never merge into one run."""
        previous = trial.user_attrs.get("run")
        if previous is None:
            return None, ""
        if os.path.isdir(os.path.join(self.study_dir, previous)):
            return previous, f" (resuming {previous})"
        return None, (
            f" (re-run of {previous}, whose run directory is not on this machine: from step 0)"
        )

    def _train(
        self, trial: optuna.Trial, bindings: dict[str, str], run: str, resume: bool
    ) -> float:
        """Trains (or, with `resume`, continues) the trial's run; its final metric."""
        metric = self.settings.metric.removeprefix("eval/")
        try:
            spec = self.spec
            layers = self.arm.layers(bindings)  # the method's files and bindings, then these
            config.parse(list(spec.gin_files), list(spec.gin_params), spec.search_path, layers)
            trainer = Trainer(strategy=distribute.get_strategy())
            method = {"method": self.arm.name} if self.arm.method else {}
            drawn = {name: literal(source) for name, source in bindings.items()}
            trainer.extra_hparams = {**method, **drawn}
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
    studies = load_studies(study_dir, spec, settings, worker)
    with distribute.StopOnSignal() as stop:
        worker = _Worker(studies, study_dir, spec, settings, progress, stop)
        try:
            worker.run()
        except KeyboardInterrupt:
            stop.requested = True
        if stop.requested:
            requeued = None
            if worker.study is not None:  # the study of the trial in hand
                requeued = tune_storage.requeue(worker.study, worker.current)
            if requeued and worker.stopped_at is not None:
                requeued += f" stopped at step {worker.stopped_at}"
            raise TuneInterrupted(interrupted_message(study_dir, spec, settings, requeued))


def resume_command(study_dir: str, spec: StudySpec, settings: Settings) -> str:
    """The command that continues (or joins) the study."""
    command = ["lrresearch", "tune", "--resume", "--study_name", spec.name]
    command += ["--logdir", os.path.dirname(study_dir) or "."]
    if settings.storage:
        command += ["--storage", tune_storage.masked(settings.storage)]
    return shlex.join(command)


def interrupted_message(
    study_dir: str, spec: StudySpec, settings: Settings, requeued: str | None
) -> str:
    """What an interrupted study did, and the command that continues it."""
    lines = [f"tune interrupted: the study is in {study_dir}"]
    if requeued:
        lines.append(f"  {requeued}, checkpoint saved: queued to resume from it")
    per = " per method" if spec.methods else ""
    lines.append(f"continue the study (to {settings.trials} trials{per}) with:")
    lines.append(f"    {resume_command(study_dir, spec, settings)}")
    return "\n".join(lines)


def finished_count(study_dir: str, spec: StudySpec, settings: Settings) -> tuple[int, int]:
    """The study's finished trials (COMPLETE + PRUNED, each method's up to its target;
    with `--sampler grid` also the grid points that failed with an error, which would
    fail again) and the number it stops at (`--trials` per method; 1 for a method with
    nothing to search)."""
    done = total = 0
    for arm, study in load_studies(study_dir, spec, settings):
        target = arm.target(settings.trials)
        trials = study.get_trials(deepcopy=False)
        n = sum(t.state in FINISHED for t in trials)
        if settings.sampler == "grid" and arm.space.samples:
            n += sum(t.state == TrialState.FAIL and "error" in t.user_attrs for t in trials)
        done += min(target, n)
        total += target
    return done, total


def finish(study_dir: str, spec: StudySpec, settings: Settings) -> str:
    """Writes `tune.md` and the HParams experiment in the study folder; returns the
    tables (per method: its best trial, then every trial, best first)."""
    studies = load_studies(study_dir, spec, settings)
    return tune_report.finish(studies, study_dir, settings.metric, settings.direction)
