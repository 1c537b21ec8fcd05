"""The end of a `lrresearch tune` study: its tables (`tune.md`, one per `--method`,
each its best trial then every trial) and HParams experiment."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrresearch.studies import sampling
from lrresearch.studies.experiment import write_experiment
from lrresearch.studies.tune_methods import Arm
from lrresearch.studies.tune_space import SearchSpace
from lrresearch.training.run_dir import RunInUseError, write_atomically

ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2}


def shown_trials(study: optuna.Study, direction: str) -> list[FrozenTrial]:
    """The trials to report, best first: complete ones by value, then pruned ones (by
    their last reported value), running, failed; surplus trials (never trained) left out."""
    sign = 1.0 if direction == "minimize" else -1.0

    def key(t: FrozenTrial) -> tuple[int, float, int]:
        value = t.value if t.state == TrialState.COMPLETE else None
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        return ORDER.get(t.state, 3), sign * (value if value is not None else 0.0), t.number

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    return sorted(trials, key=key)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(study: optuna.Study, space: SearchSpace, metric: str, direction: str) -> str:
    """Markdown: trial number, run, each searched binding, the metric, the state."""
    names = [s.name for s in space.samples]
    lines = [
        f"| trial | run | {''.join(f'{n} | ' for n in names)}{metric} | state |",
        "|---:|---|" + "---:|" * len(names) + "---:|---|",
    ]
    for t in shown_trials(study, direction):
        params = "".join(f"{_cell(t.params.get(n, ''))} | " for n in names)
        value = _cell(t.value) if t.value is not None else ""
        state = t.state.name
        if t.state == TrialState.PRUNED and t.intermediate_values:
            state += f" at step {max(t.intermediate_values)}"
        if error := t.user_attrs.get("error"):
            state += f": {error}"
        elif t.state == TrialState.FAIL:
            state += ": stopped (Ctrl-C, or its worker died)"
        if "retry_history" in t.system_attrs:
            state += f" (re-run of trial {t.system_attrs['retry_history'][-1]})"
        run = t.user_attrs.get("run", "")
        lines.append(f"| {t.number} | {run} | {params}{value} | {state} |")
    return "\n".join(lines)


def best_line(study: optuna.Study, space: SearchSpace, metric: str, direction: str) -> str:
    """`best: trial N, <run>, <metric> <value>, <binding>=<value>, ...`, or why none."""
    complete = [t for t in shown_trials(study, direction) if t.state == TrialState.COMPLETE]
    if not complete:
        return "best: none yet (no trial complete)"
    best = complete[0]
    params = ", ".join(f"{s.name}={_cell(best.params[s.name])}" for s in space.samples)
    return f"best: trial {best.number}, {best.user_attrs.get('run', '')}, {metric} " + ", ".join(
        filter(None, [_cell(best.value), params])
    )


def report(studies: list[tuple[Arm, optuna.Study]], metric: str, direction: str) -> str:
    """The study's text: its table, or per method a section with its best trial and
    its table."""
    if len(studies) == 1 and studies[0][0].method is None:
        return table(studies[0][1], studies[0][0].space, metric, direction)
    sections = []
    for arm, study in studies:
        best = best_line(study, arm.space, metric, direction)
        sections.append(
            f"## {arm.name} ({study.study_name})\n\n{best}\n\n"
            f"{table(study, arm.space, metric, direction)}"
        )
    return "\n\n".join(sections)


def finish(
    studies: list[tuple[Arm, optuna.Study]], study_dir: str, metric: str, direction: str
) -> str:
    """Writes `<study_dir>/tune.md` and the HParams experiment of every trial that was
    set up; returns the text (`report`)."""
    from lrresearch.training.open_run import open_run

    title = os.path.basename(os.path.abspath(study_dir))
    text = report(studies, metric, direction)
    write_atomically(os.path.join(study_dir, "tune.md"), f"# {title}\n\n{text}\n")
    # Every method's name, trained or not: the HParams filter lists them all.
    hparam_values: dict[str, list] = {}
    if studies[0][0].method:
        hparam_values["method"] = [arm.name for arm, _ in studies]
    for _, study in studies:
        for trial in study.get_trials(deepcopy=False):
            for key, value in trial.user_attrs.get("hparams", {}).items():
                hparam_values.setdefault(key, []).append(value)
    samples = [sample for arm, _ in studies for sample in arm.space.samples]
    # Workers that end together take turns at the root's event file (the lock).
    logdir, name = os.path.split(os.path.abspath(study_dir))
    for attempt in range(50):
        with contextlib.suppress(RunInUseError):
            with open_run(logdir, name, "tune", name_flag="--study_name", resume=True) as root:
                write_experiment(root, hparam_values, sampling.domains(samples), [metric])
            break
        time.sleep(0.1 * (attempt + 1) ** 0.5)
    return text
