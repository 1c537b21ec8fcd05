"""Sweeps: the cross product of gin bindings, run one after another into one folder.

`--sweep='Trainer.controller=[@GradNormController(), @LossTrendController()]'
--sweep='Trainer.seed=[0, 1, 2]'` runs 6 points. Each value is gin source, bound as
`name = value` after the `--gin_file`s and `--gin_param`s, so anything a gin file can
say, a sweep can vary (including scoped and `@reference()` values).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Sequence

import gin

from lrresearch import config, distribute, summaries
from lrresearch.trainer import Trainer, TrainResult, make_run_dir


def split_values(text: str) -> list[str]:
    """Splits a gin list literal `[a, b(c, d), 'e,f']` into its elements' source."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise ValueError(f"--sweep values must be a list in brackets, got {text!r}")
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
    if not items:
        raise ValueError(f"--sweep list is empty: {text!r}")
    return items


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """`'Trainer.seed=[0,1,2]'` -> (`'Trainer.seed'`, `['0', '1', '2']`)."""
    name, sep, values = spec.partition("=")
    if not sep or not re.fullmatch(r"[\w./]+", name.strip()):
        raise ValueError(f"--sweep must look like 'Configurable.param=[v1, v2]', got {spec!r}")
    return name.strip(), split_values(values)


def _short(value: str) -> str:
    value = re.sub(r"^@|\(\)$", "", value.strip())
    return re.sub(r"[^\w.+-]+", "_", value).strip("_")[:40]


@dataclasses.dataclass
class Point:
    index: int
    bindings: dict[str, str]
    run_name: str
    result: TrainResult | None = None
    error: str = ""


def run_sweep(
    gin_files: Sequence[str],
    gin_params: Sequence[str],
    sweeps: Sequence[str],
    logdir: str = "runs",
    sweep_name: str | None = None,
    progress: Callable[[str], None] = print,
) -> tuple[str, list[Point]]:
    """Runs every point of the cross product; a failed point is recorded and the sweep
    goes on. Returns the sweep directory and the points."""
    axes = [parse_sweep(spec) for spec in sweeps]
    if not axes:
        raise ValueError("give at least one --sweep")
    names = [name for name, _ in axes]
    if len(set(names)) != len(names):
        raise ValueError(f"a binding is swept twice: {names}")
    combos = list(itertools.product(*(values for _, values in axes)))
    # Fail fast on a binding gin cannot parse, before anything is written.
    for combo in combos:
        config.parse(
            list(gin_files),
            [*gin_params, *(f"{n} = {v}" for n, v in zip(names, combo, strict=True))],
        )
    gin.clear_config()
    sweep_dir = make_run_dir(logdir, sweep_name, "sweep")
    progress(f"sweep directory: {sweep_dir} ({len(combos)} runs)")
    points = [
        Point(
            i,
            dict(zip(names, combo, strict=True)),
            f"{i:03d}-"
            + "-".join(
                f"{n.rsplit('.', 1)[-1]}={_short(v)}" for n, v in zip(names, combo, strict=True)
            ),
        )
        for i, combo in enumerate(combos)
    ]
    with open(os.path.join(sweep_dir, "sweep.json"), "w") as f:
        json.dump(
            {
                "gin_files": list(gin_files),
                "gin_params": list(gin_params),
                "sweeps": list(sweeps),
                "points": [{"run": p.run_name, "bindings": p.bindings} for p in points],
            },
            f,
            indent=2,
        )
    hparam_values: dict[str, list] = {}
    start = time.perf_counter()
    for point in points:
        elapsed = time.perf_counter() - start
        eta = (
            f"  ETA {elapsed / point.index * (len(points) - point.index):.0f}s"
            if point.index
            else ""
        )
        progress(f"sweep: run {point.index + 1}/{len(points)} {point.run_name}{eta}")
        try:
            config.parse(
                list(gin_files), [*gin_params, *(f"{n} = {v}" for n, v in point.bindings.items())]
            )
            distribute.get_strategy()
            trainer = Trainer()
            point.result = trainer.fit(logdir=sweep_dir, run_name=point.run_name, quiet=True)
            for key, value in trainer.hparams().items():
                hparam_values.setdefault(key, []).append(value)
            progress(f"  {point.result.summary_line()}")
        except Exception as e:  # a failed point must not end the sweep
            point.error = f"{type(e).__name__}: {e}".strip().splitlines()[0]
            progress(f"  FAILED: {point.error}")
        finally:
            gin.clear_config()
    writer = summaries.create_writer(sweep_dir)
    with writer.as_default():
        summaries.write_experiment_config(hparam_values)
    writer.close()
    return sweep_dir, points


def report(points: Sequence[Point]) -> str:
    """A markdown table of the points, failures included."""
    lines = ["| run | eval/accuracy | eval/loss | steps/s | status |", "|---|---:|---:|---:|---|"]
    for p in points:
        if p.result:
            r = p.result
            lines.append(
                f"| {p.run_name} | {r.eval_accuracy:.4f} | {r.eval_loss:.4f} | "
                f"{r.steps_per_second:,.0f} | ok |"
            )
        else:
            lines.append(f"| {p.run_name} | | | | FAILED: {p.error} |")
    return "\n".join(lines)
