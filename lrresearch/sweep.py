"""Sweeps: the cross product of gin bindings, run one after another into one folder.

`--sweep='Trainer.controller=[@GradNormController(), @LossTrendController()]'
--sweep='Trainer.seed=[0, 1, 2]'` runs 6 points. Each value is gin source, bound as
`name = value` after the `--gin_file`s and `--gin_param`s, so anything a gin file can
say, a sweep can vary (including scoped and `@reference()` values).

Ctrl-C (or SIGTERM) stops a sweep after the run it lands in: that run stops after its
current compiled call and saves its checkpoint, as `lrresearch train` does; the sweep
directory still gets `sweep.json` (every point, with its status) and the HParams
experiment of the runs started, and `SweepInterrupted` says how to continue.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shlex
import time
from collections.abc import Callable, Sequence
from typing import Any

import gin

from lrresearch import config, distribute, summaries
from lrresearch.trainer import Trainer, TrainingInterrupted, TrainResult, make_run_dir


def split_values(text: str, flag: str = "--sweep") -> list[str]:
    """Splits a gin list literal `[a, b(c, d), 'e,f']` into its elements' source.

    `flag` names the argument in errors (the whole `--sweep='name=[...]'`)."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise config.ConfigError(
            f"{flag}: the values must be a list in brackets, got {text!r}; "
            "e.g. --sweep='Trainer.seed=[0, 1, 2]'"
        )
    items, depth, quote, current = [], 0, "", ""
    for char in text[1:-1]:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(current.strip())
            current = ""
            continue
        current += char
    if current.strip():
        items.append(current.strip())
    if not all(items):
        raise config.ConfigError(f"{flag}: the list {text!r} has an empty value")
    if not items:
        raise config.ConfigError(
            f"{flag}: the list of values is empty; give one or more, "
            "e.g. --sweep='Trainer.seed=[0, 1, 2]'"
        )
    return items


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """`'Trainer.seed=[0,1,2]'` -> (`'Trainer.seed'`, `['0', '1', '2']`)."""
    name, sep, values = spec.partition("=")
    if not sep or not re.fullmatch(r"[\w./]+", name.strip()):
        raise config.ConfigError(
            f"--sweep={spec!r}: must look like 'Configurable.param=[v1, v2]', "
            "e.g. --sweep='Trainer.seed=[0, 1, 2]'"
        )
    return name.strip(), split_values(values, f"--sweep={spec!r}")


def _short(value: str) -> str:
    value = re.sub(r"^@|\(\)$", "", value.strip())
    return re.sub(r"[^\w.+-]+", "_", value).strip("_")[:40]


@dataclasses.dataclass
class Point:
    """One run of a sweep: its bindings, run name and outcome.

    `status` is "not run", "ok", "failed" or "interrupted"."""

    index: int
    bindings: dict[str, str]
    run_name: str
    result: TrainResult | None = None
    error: str = ""
    status: str = "not run"
    stopped_at: int | None = None  # the interrupted run's checkpoint step


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the sweep; the message says what finished, where,
    and how to continue."""

    def __init__(self, message: str, sweep_dir: str, points: list[Point]):
        super().__init__(message)
        self.sweep_dir = sweep_dir
        self.points = points

    def __str__(self) -> str:
        return str(self.args[0])


def _check(gin_files: Sequence[str], gin_params: Sequence[str], sweeps: Sequence[str]) -> list:
    """The sweep's axes, each `(name, values)`, checked before anything is written:
    the files and params parse, and so does every value (named by its `--sweep`)."""
    axes = [parse_sweep(spec) for spec in sweeps]
    if not axes:
        raise config.ConfigError("give at least one --sweep, e.g. --sweep='Trainer.seed=[0, 1]'")
    names = [name for name, _ in axes]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise config.ConfigError(f"--sweep: {', '.join(twice)} is swept twice; sweep it once")
    try:
        config.parse(list(gin_files), list(gin_params))
        for spec, (name, values) in zip(sweeps, axes, strict=True):
            for value in values:
                config.parse_binding(f"{name} = {value}", f"--sweep={spec!r}, value {value!r}")
    finally:
        gin.clear_config()
    return axes


def _write_manifest(sweep_dir: str, gin_files, gin_params, sweeps, points: list[Point]) -> None:
    """`sweep.json`: the flags and every point with its status (rewritten atomically)."""
    manifest = {
        "gin_files": list(gin_files),
        "gin_params": list(gin_params),
        "sweeps": list(sweeps),
        "points": [{"run": p.run_name, "bindings": p.bindings, "status": p.status} for p in points],
    }
    path = os.path.join(sweep_dir, "sweep.json")
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(path + ".tmp", path)


def _run_point(
    point: Point, gin_files, gin_params, sweep_dir: str, stop
) -> tuple[Trainer | None, bool]:
    """Trains one point and records its status. Returns its trainer (None if it was
    not built) and whether Ctrl-C or SIGTERM asked the sweep to stop."""
    trainer = None
    try:
        config.parse(
            list(gin_files), [*gin_params, *(f"{n} = {v}" for n, v in point.bindings.items())]
        )
        trainer = Trainer(strategy=distribute.get_strategy())
        trainer.build()
        if stop.requested:  # Ctrl-C while this point was being set up: do not start it
            return trainer, True
        point.result = trainer.fit(logdir=sweep_dir, run_name=point.run_name, quiet=True)
        point.status = "ok"
    except TrainingInterrupted:  # stopped between compiled calls, checkpoint saved
        point.status, point.stopped_at = "interrupted", int(trainer.step.numpy())
        return trainer, True
    except KeyboardInterrupt:  # a second Ctrl-C, anywhere
        if os.path.isdir(os.path.join(sweep_dir, point.run_name)):
            point.status = "interrupted"
        return trainer, True
    except Exception as e:  # a failed point must not end the sweep
        point.status = "failed"
        point.error = f"{type(e).__name__}: {e}".strip().splitlines()[0]
        if message := config.explain_missing_binding(e):
            point.error = message.splitlines()[0]
    finally:
        gin.clear_config()
    return trainer, stop.requested


def _point(index: int, names: Sequence[str], combo: Sequence[Any]) -> Point:
    """Point `index` of the cross product, named `NNN-<param=value>-...`."""
    label = "-".join(
        f"{n.rsplit('.', 1)[-1]}={_short(v)}" for n, v in zip(names, combo, strict=True)
    )
    return Point(index, dict(zip(names, combo, strict=True)), f"{index:03d}-{label}")


def run_sweep(
    gin_files: Sequence[str],
    gin_params: Sequence[str],
    sweeps: Sequence[str],
    logdir: str = "runs",
    sweep_name: str | None = None,
    progress: Callable[[str], None] = print,
) -> tuple[str, list[Point]]:
    """Runs every point of the cross product; a failed point is recorded and the sweep
    goes on. Returns the sweep directory and the points.

    Raises:
      config.ConfigError: a file, param or `--sweep` value does not parse (nothing is
        written).
      SweepInterrupted: Ctrl-C or SIGTERM; the runs so far are recorded.
    """
    axes = _check(gin_files, gin_params, sweeps)
    names = [name for name, _ in axes]
    combos = list(itertools.product(*(values for _, values in axes)))
    sweep_dir = make_run_dir(logdir, sweep_name, "sweep")
    progress(f"sweep directory: {sweep_dir} ({len(combos)} runs)")
    points = [_point(i, names, combo) for i, combo in enumerate(combos)]
    _write_manifest(sweep_dir, gin_files, gin_params, sweeps, points)
    hparam_values: dict[str, list] = {}
    start = time.perf_counter()
    interrupted = False
    # Between runs Ctrl-C only sets `stop.requested`; during a run the trainer's own
    # handler stops it after the current compiled call, with its checkpoint saved.
    with distribute.StopOnSignal() as stop:
        for point in points:
            elapsed = time.perf_counter() - start
            left = len(points) - point.index
            eta = f"  ETA {elapsed / point.index * left:.0f}s" if point.index else ""
            progress(f"sweep: run {point.index + 1}/{len(points)} {point.run_name}{eta}")
            trainer, interrupted = _run_point(point, gin_files, gin_params, sweep_dir, stop)
            if trainer is not None and point.status in ("ok", "interrupted"):
                for key, value in trainer.hparams().items():
                    hparam_values.setdefault(key, []).append(value)
            if point.status == "ok":
                progress(f"  {point.result.summary_line()}")
            elif point.status == "failed":
                progress(f"  FAILED: {point.error}")
            if interrupted:
                break
    _finish(sweep_dir, hparam_values)
    _write_manifest(sweep_dir, gin_files, gin_params, sweeps, points)
    if interrupted:
        raise SweepInterrupted(
            interrupted_message(sweep_dir, points, gin_files, gin_params), sweep_dir, points
        )
    return sweep_dir, points


def _finish(sweep_dir: str, hparam_values: dict[str, list]) -> None:
    """The HParams experiment of the runs started, in the sweep root."""
    writer = summaries.create_writer(sweep_dir)
    with writer.as_default():
        summaries.write_experiment_config(hparam_values)
    writer.close()


def interrupted_message(
    sweep_dir: str, points: Sequence[Point], gin_files: Sequence[str], gin_params: Sequence[str]
) -> str:
    """What an interrupted sweep finished, where it is, and how to continue."""
    done = [p for p in points if p.status in ("ok", "failed")]
    stopped = [p for p in points if p.status == "interrupted"]
    not_run = [p for p in points if p.status == "not run"]
    lines = [
        f"sweep interrupted: {len(done)} of {len(points)} runs finished "
        f"({sum(p.status == 'ok' for p in done)} ok) in {sweep_dir}; sweep.json and the "
        "HParams experiment there list the runs started"
    ]
    for p in stopped:
        at = f" at step {p.stopped_at}, checkpoint saved" if p.stopped_at is not None else ""
        command = ["lrresearch", "train", "--resume", "--logdir", sweep_dir]
        command += ["--run_name", p.run_name, *(f"--gin_file={f}" for f in gin_files)]
        command += [f"--gin_param={b}" for b in gin_params]
        command += [f"--gin_param={n} = {v}" for n, v in p.bindings.items()]
        lines.append(f"  {p.run_name} stopped{at}; continue it with:")
        lines.append(f"    {shlex.join(command)}")
    if not_run:
        lines.append(f"  not run: {', '.join(p.run_name for p in not_run)}")
    return "\n".join(lines)


def report(points: Sequence[Point]) -> str:
    """A markdown table of the points, failures and interrupted or skipped ones included."""
    lines = ["| run | eval/accuracy | eval/loss | steps/s | status |", "|---|---:|---:|---:|---|"]
    for p in points:
        if p.result:
            r = p.result
            lines.append(
                f"| {p.run_name} | {r.eval_accuracy:.4f} | {r.eval_loss:.4f} | "
                f"{r.steps_per_second:,.0f} | ok |"
            )
        elif p.status == "failed":
            lines.append(f"| {p.run_name} | | | | FAILED: {p.error} |")
        else:
            lines.append(f"| {p.run_name} | | | | {p.status} |")
    return "\n".join(lines)
