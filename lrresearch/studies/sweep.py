"""Sweeps: the cross product of gin bindings, run one after another into one folder.

`--sweep='Trainer.controller=[@GradNormController(), @LossTrendController()]'
--sweep='Trainer.seed=[0, 1, 2]'` runs 6 points. Each value is gin source, bound as
`name = value` after the `--gin_file`s and `--gin_param`s, so anything a gin file can
say, a sweep can vary (including scoped and `@reference()` values).

`--sweep_random=N --seed=S --sample='LossTrendController.max_lr=loguniform(1e-3, 1)'`
draws N points from distributions (`sampling`). With `--sweep`s as well, every grid
combination runs at the same N drawn points (a paired comparison: the grid's values
differ only in what the grid varies); draw `i` of every combination runs before draw
`i + 1`. Each drawn value is bound as gin source, recorded in `sweep.json` (`sampled`)
and in the HParams experiment under its binding name, as an interval for the numeric
distributions and the values drawn for `choice`.

`--method=NAME=SOURCE` (`methods`) makes whole methods one axis: each method runs the
cross product of the unprefixed axes and its own (`--sweep='NAME:binding=[...]'`),
its runs named `NNN-NAME-...`, its name recorded in `sweep.json` and as the `method`
hparam.

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

from lrresearch.config import parse as config
from lrresearch.studies import methods as study_methods
from lrresearch.studies import sampling
from lrresearch.studies.experiment import write_experiment
from lrresearch.studies.sampling import split_values
from lrresearch.training import distribute
from lrresearch.training.open_run import OpenRun, open_run
from lrresearch.training.outer_loop import TrainingInterrupted, TrainResult
from lrresearch.training.run_dir import write_atomically
from lrresearch.training.trainer import Trainer


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
    """One run of a sweep: its bindings (gin source), run name and outcome.

    `sampled` holds the values drawn for `--sample`s (numbers, or the gin source of a
    `choice`). `status` is "not run", "ok", "failed" or "interrupted". `method` is its
    `--method`'s name ("" without one)."""

    index: int
    bindings: dict[str, str]
    run_name: str
    sampled: dict[str, Any] = dataclasses.field(default_factory=dict)
    result: TrainResult | None = None
    error: str = ""
    status: str = "not run"
    stopped_at: int | None = None  # the interrupted run's checkpoint step
    run_hparams: dict[str, Any] = dataclasses.field(default_factory=dict)  # the run's own
    method: str = ""

    def hparams(self) -> dict[str, bool | int | float | str]:
        """Every swept binding under its gin name, and `method`, for HParams."""
        found = {name: sampling.literal(source) for name, source in self.bindings.items()}
        return {"method": self.method, **found} if self.method else found


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the sweep; the message says what finished, where,
    and how to continue."""

    def __init__(self, message: str, sweep_dir: str, points: list[Point]):
        super().__init__(message)
        self.sweep_dir = sweep_dir
        self.points = points

    def __str__(self) -> str:
        return str(self.args[0])


def check_axes(
    gin_files: Sequence[str],
    gin_params: Sequence[str],
    sweeps: Sequence[str],
    samples: Sequence[sampling.Sample] = (),
    drawn: Sequence[list] = (),
    search_path: Sequence[str] = (),
    then: Sequence[config.Layer] = (),
) -> list:
    """The sweep's axes, each `(name, values)`, checked before anything is written:
    the files (found in `search_path` too, `--gin_search_path`) and params parse, then
    `then` (a `--method`'s), and so does every grid value and every drawn value under
    them (named by its `--sweep` or `--sample`)."""
    axes = [parse_sweep(spec) for spec in sweeps]
    if not axes and not samples and not then:
        raise config.ConfigError(
            "give at least one --sweep, e.g. --sweep='Trainer.seed=[0, 1]', or "
            "--sweep_random=N with a --sample"
        )
    names = [name for name, _ in axes] + [sample.name for sample in samples]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise config.ConfigError(
            f"--sweep/--sample: {', '.join(twice)} is swept twice; sweep it once"
        )
    try:
        config.parse(list(gin_files), list(gin_params), search_path, then)
        for spec, (name, values) in zip(sweeps, axes, strict=True):
            for value in values:
                config.parse_binding(f"{name} = {value}", f"--sweep={spec!r}, value {value!r}")
        for sample, values in zip(samples, drawn, strict=True):
            for value in dict.fromkeys(map(sample.distribution.gin, values)):
                config.parse_binding(f"{sample.name} = {value}", f"{sample.flag}, value {value}")
    finally:
        gin.clear_config()
    return axes


def parse_samples(
    samples: Sequence[str], random_points: int, seed: int
) -> tuple[list[sampling.Sample], list[list]]:
    """The `--sample`s and their `random_points` draws each; a ConfigError names the
    flag when they do not fit together."""
    if random_points < 0:
        raise config.ConfigError(f"--sweep_random must be >= 0, got {random_points}")
    if seed < 0:
        raise config.ConfigError(f"--seed must be >= 0, got {seed}")
    if samples and not random_points:
        raise config.ConfigError(
            f"--sample={samples[0]!r} needs --sweep_random=N, the number of points to draw"
        )
    if random_points and not samples:
        raise config.ConfigError(
            f"--sweep_random={random_points} needs one or more --sample, {sampling.EXAMPLE}"
        )
    parsed = [sampling.parse_sample(spec) for spec in samples]
    return parsed, [sampling.sample_values(s, seed, random_points) for s in parsed]


def _label(name: str, source: str, value: Any = None) -> str:
    shown = f"{value:.3g}" if isinstance(value, float) else _short(source)
    return f"{name.rsplit('.', 1)[-1]}={shown}"


def plan(
    axes: Sequence[tuple[str, list[str]]],
    samples: Sequence[sampling.Sample] = (),
    drawn: Sequence[list] = (),
    method: str = "",
    start: int = 0,
) -> list[Point]:
    """The points: every grid combination, at each of the drawn points (draw-major),
    named `NNN-<param=value>-...` (floats drawn with 3 significant digits), or
    `NNN-<method>-<param=value>-...`, numbered from `start`."""
    grid = list(itertools.product(*(values for _, values in axes)))
    draws = range(len(drawn[0])) if samples else [None]
    points = []
    for draw in draws:
        for combo in grid:
            bindings = {name: value for (name, _), value in zip(axes, combo, strict=True)}
            labels = [_label(name, value) for name, value in bindings.items()]
            sampled = {}
            for sample, values in zip(samples, drawn, strict=True):
                value = values[draw]
                bindings[sample.name] = sample.distribution.gin(value)
                sampled[sample.name] = value
                labels.append(_label(sample.name, bindings[sample.name], value))
            index = start + len(points)
            name = "-".join([f"{index:03d}", *([method] if method else []), *labels])
            points.append(Point(index, bindings, name, sampled, method=method))
    return points


def plan_sweep(
    flags: dict[str, Any], search_path: Sequence[str] = ()
) -> tuple[list[Point], list[sampling.Sample]]:
    """Every point of the sweep that `flags` (as `sweep.json` records them) describe,
    method by method in flag order, and the `--sample`s; each method's config and
    axes are checked (`check_axes`) before anything is written."""
    methods = study_methods.parse_methods(flags.get("methods", []), search_path)
    axes = {"--sweep": flags.get("sweeps", []), "--sample": flags.get("samples", [])}
    random_points, seed = flags.get("sweep_random", 0), flags.get("seed", 0)
    spaces = study_methods.spaces(methods, axes)
    points, samples = [], []
    for space in spaces:
        with space.named_in_errors():
            own = space.axes["--sample"]
            parsed, drawn = parse_samples(own, random_points if own else 0, seed)
            checked = check_axes(
                flags["gin_files"], flags["gin_params"], space.axes["--sweep"], parsed, drawn,
                search_path, space.layers(),
            )  # fmt: skip
        points += plan(checked, parsed, drawn, space.name, start=len(points))
        samples += parsed
    every = [spec for space in spaces for spec in space.axes["--sample"]]
    parse_samples(every, random_points, seed)  # the flags fit together (the draws are cheap)
    return points, samples


def _write_manifest(sweep_dir: str, flags: dict[str, Any], points: list[Point]) -> None:
    """`sweep.json`: the flags and every point with its bindings, drawn values and
    status (rewritten atomically)."""
    manifest = {
        **flags,
        "points": [
            {
                "run": p.run_name,
                **({"method": p.method} if p.method else {}),
                "bindings": p.bindings,
                "sampled": p.sampled,
                "status": p.status,
                **({"error": p.error} if p.error else {}),
                **({"hparams": p.run_hparams} if p.run_hparams else {}),
            }
            for p in points
        ],
    }
    write_atomically(os.path.join(sweep_dir, "sweep.json"), json.dumps(manifest, indent=2))


def _run_point(
    point: Point, flags: dict[str, Any], sweep_dir: str, stop, resume: bool = False
) -> tuple[Trainer | None, bool]:
    """Trains one point (with `resume`, continues its run if it has one) and records
    its status. Returns its trainer (None if it was not built) and whether Ctrl-C or
    SIGTERM asked the sweep to stop."""
    trainer = None
    search_path = flags.get("gin_search_paths", [])
    bindings = config.Layer((), tuple(f"{n} = {v}" for n, v in point.bindings.items()), "--sweep")
    try:  # its method's files and bindings (if any) on top of the base, then its own
        methods = study_methods.parse_methods(flags.get("methods", []), search_path)
        layers = [*(m.layer() for m in methods if m.name == point.method), bindings]
        config.parse(flags["gin_files"], flags["gin_params"], search_path, layers)
        trainer = Trainer(strategy=distribute.get_strategy())
        # The run's HParams also name what the sweep varied (mlp.hidden, say, is not
        # among the trainer's own): one dict for the run's header and the experiment.
        trainer.extra_hparams = point.hparams()
        trainer.build()
        if stop.requested:  # Ctrl-C while this point was being set up: do not start it
            return trainer, True
        point.result = trainer.fit(
            logdir=sweep_dir, run_name=point.run_name, quiet=True, resume=resume
        )
        point.status, point.stopped_at = "ok", None
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


def run_sweep(
    gin_files: Sequence[str],
    gin_params: Sequence[str],
    sweeps: Sequence[str],
    logdir: str = "runs",
    sweep_name: str | None = None,
    progress: Callable[[str], None] = print,
    samples: Sequence[str] = (),
    random_points: int = 0,
    seed: int = 0,
    search_path: Sequence[str] = (),
    methods: Sequence[str] = (),
) -> tuple[str, list[Point]]:
    """Runs every point of the cross product of the `sweeps` and, with `samples`, at
    each of `random_points` draws (seeded by `seed`), per `--method` in `methods` if
    any (`plan_sweep`); a failed point is recorded and the sweep goes on. Returns the
    sweep directory and the points.

    Raises:
      config.ConfigError: a file, param, `--method`, `--sweep` value or `--sample`
        does not parse (nothing is written).
      SweepInterrupted: Ctrl-C or SIGTERM; the runs so far are recorded.
    """
    flags = {"gin_files": list(gin_files), "gin_params": list(gin_params), "sweeps": list(sweeps)}
    flags.update(samples=list(samples), sweep_random=random_points, seed=seed)
    if methods:
        flags["methods"] = list(methods)
    points, parsed = plan_sweep(flags, search_path)
    if search_path:
        flags["gin_search_paths"] = [os.path.abspath(p) for p in search_path]
    if not parsed:  # recorded only when drawn from
        for name in ("samples", "sweep_random", "seed"):
            del flags[name]
    # The sweep's root: no config.gin of its own (each point's run has one), sweep.json.
    with open_run(logdir, sweep_name, "sweep", name_flag="--sweep_name") as sweep:
        progress(f"sweep directory: {sweep.path} ({len(points)} runs)")
        run_points(sweep, flags, points, parsed, progress)
    return sweep.path, points


def run_points(
    sweep: OpenRun,
    flags: dict[str, Any],
    points: list[Point],
    samples: Sequence[sampling.Sample],
    progress: Callable[[str], None],
    resume: bool = False,
) -> None:
    """Trains the points in order, `sweep.json` rewritten after each; with `resume`,
    points already "ok" or "failed" are skipped and the others continue their runs
    (`lrresearch sweep --resume`, `sweep_resume`). Raises `SweepInterrupted`."""
    sweep_dir = sweep.path
    _write_manifest(sweep_dir, flags, points)
    start = time.perf_counter()
    interrupted, ran = False, 0
    todo = [p for p in points if not (resume and p.status in ("ok", "failed"))]
    # Between runs Ctrl-C only sets `stop.requested`; during a run the trainer's own
    # handler stops it after the current compiled call, with its checkpoint saved.
    with distribute.StopOnSignal() as stop:
        for point in todo:
            elapsed = time.perf_counter() - start
            eta = f"  ETA {elapsed / ran * (len(todo) - ran):.0f}s" if ran else ""
            progress(f"sweep: run {point.index + 1}/{len(points)} {point.run_name}{eta}")
            trainer, interrupted = _run_point(point, flags, sweep_dir, stop, resume)
            ran += 1
            if trainer is not None and point.status in ("ok", "interrupted"):
                point.run_hparams = trainer.hparams()
            if point.status == "ok":
                progress(f"  {point.result.summary_line()}")
            elif point.status == "failed":
                progress(f"  FAILED: {point.error}")
            _write_manifest(sweep_dir, flags, points)  # a killed sweep knows what ran
            if interrupted:
                break
    # Every method's name, run or not: the HParams filter lists them all.
    hparam_values = {"method": [p.method for p in points]} if flags.get("methods") else {}
    for point in points:
        for key, value in point.run_hparams.items():
            hparam_values.setdefault(key, []).append(value)
    write_experiment(sweep, hparam_values, sampling.domains(list(samples)))
    if interrupted:
        raise SweepInterrupted(interrupted_message(sweep_dir, points), sweep_dir, points)


def interrupted_message(sweep_dir: str, points: Sequence[Point]) -> str:
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
        lines.append(f"  {p.run_name} stopped{at}")
    if not_run:
        lines.append(f"  not run: {', '.join(p.run_name for p in not_run)}")
    command = ["lrresearch", "sweep", "--resume", "--sweep_name", os.path.basename(sweep_dir)]
    command += ["--logdir", os.path.dirname(sweep_dir) or "."]
    lines.append(
        f"continue the sweep (finished runs skipped, the stopped one resumed from its "
        f"checkpoint) with:\n    {shlex.join(command)}"
    )
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
        elif p.status == "ok":  # finished before `sweep --resume`
            lines.append(f"| {p.run_name} | | | | ok (earlier) |")
        else:
            lines.append(f"| {p.run_name} | | | | {p.status} |")
    return "\n".join(lines)
