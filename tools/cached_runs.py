"""A results script's training runs, each one kept: named run directories under a
logdir that stays (not a temporary one), and a JSON per finished run holding what was
read back from its event files, so a second invocation (after a crash, a Ctrl-C, or to
add runs) trains only what is missing (tools/lr_insensitivity.py, tools/warmup_free.py).

A run killed half-way is continued from its last checkpoint, as `lrresearch train
--resume` does (from step 0 if it saved none); a finished run is never trained again.
The JSON of a run records its gin file, bindings and seed; a later invocation whose
run of the same name differs stops with the file to remove, never mixing results.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from train_in_pool import init_worker, read_tags, train

RESULTS = "results"  # <logdir>/results/<run name>.json


class Spec(NamedTuple):
    """One run: its directory name under the logdir, experiment file, bindings, seed."""

    name: str
    gin_file: str
    params: tuple[str, ...]
    seed: int


class Result(NamedTuple):
    """What a finished run logged: `series[tag] = (steps, values)` for each tag read
    (int64 steps, float64 values), its run directory and the seconds it took."""

    spec: Spec
    run_dir: str
    series: dict[str, tuple[np.ndarray, np.ndarray]]
    seconds: float

    def last(self, tag: str) -> tuple[int, float]:
        """`(step, value)` of the last point of `tag` (KeyError if never logged)."""
        steps, values = self.series[tag]
        return int(steps[-1]), float(values[-1])

    def total(self, tag: str) -> float:
        """The last value of a counter such as `guard/skipped`, 0 if never logged."""
        return self.last(tag)[1] if tag in self.series else 0.0


def _record(spec: Spec) -> dict[str, Any]:
    return {"name": spec.name, "gin_file": spec.gin_file, "params": list(spec.params),
            "seed": spec.seed}  # fmt: skip


def _path(logdir: str, name: str) -> str:
    return os.path.join(logdir, RESULTS, name + ".json")


def _read(run_dir: str, tags: Sequence[str], whole: Sequence[str]) -> dict:
    return {
        tag: (steps, values) if tag in whole else (steps[-1:], values[-1:])
        for tag, (steps, values) in read_tags(run_dir, tags).items()
    }


def _write(spec: Spec, logdir: str, run_dir: str, seconds: float, series: dict, read) -> None:
    """The run's JSON, atomically (a JSON exists only for a run that finished); `read`:
    the tags asked for and those kept whole, so a later ask for more reads them again."""
    data = {
        **_record(spec),
        "run_dir": os.path.relpath(run_dir, logdir),
        "seconds": seconds,
        "read": {"tags": sorted(read[0]), "whole": sorted(read[1])},
        "series": {t: {"steps": s.tolist(), "values": v.tolist()} for t, (s, v) in series.items()},
    }
    path = _path(logdir, spec.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


def run_one(spec: Spec, logdir: str, tags: tuple[str, ...], whole: tuple[str, ...]) -> Result:
    """Trains `spec` as `<logdir>/<spec.name>` (resumed if a killed process left it),
    reads `tags` back from its event files (every point of the tags in `whole`, the
    last point of the others) and writes its JSON."""
    start = time.perf_counter()
    run_dir = train(spec.gin_file, spec.params, spec.seed, logdir, spec.name, resume=True)
    series = _read(run_dir, tags, whole)
    seconds = time.perf_counter() - start
    _write(spec, logdir, run_dir, seconds, series, (tags, whole))
    return Result(spec, run_dir, series, seconds)


def has_configurable(name: str | None) -> bool:
    """Whether this lrresearch registers `name` with gin (None: nothing needed), as a
    run's gin file would find it: after importing the trainer, which imports every
    optimizer and controller."""
    if name is None:
        return True
    import gin

    import lrresearch.training.trainer  # noqa: F401 - registers the configurables

    try:
        return gin.get_configurable(name) is not None
    except ValueError:
        return False


class StaleResultError(Exception):
    """A kept result whose run was configured differently from the run asked for."""


def load(
    spec: Spec, logdir: str, tags: Sequence[str] = (), whole: Sequence[str] = ()
) -> Result | None:
    """The kept result of `spec`, None if it has not finished; `StaleResultError` if a run
    of that name was trained with other bindings. Tags not kept (or kept as their last
    point only, and now wanted `whole`) are read again from the run's event files."""
    path = _path(logdir, spec.name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    if {k: data[k] for k in _record(spec)} != _record(spec):
        raise StaleResultError(
            f"{path} holds run {spec.name!r} trained with other bindings than this "
            f"script asks for now; remove it and {os.path.join(logdir, spec.name)} "
            "(or pass another --logdir) to train it again"
        )
    run_dir = os.path.join(logdir, data["run_dir"])
    read = data.get("read", {"tags": list(data["series"]), "whole": []})
    if not (set(tags) <= set(read["tags"]) and set(whole) <= set(read["whole"])):
        # Asked for more than was kept: read the finished run's event files again.
        tags, whole = set(tags) | set(read["tags"]), set(whole) | set(read["whole"])
        series = _read(run_dir, sorted(tags), whole)
        _write(spec, logdir, run_dir, data["seconds"], series, (tags, whole))
        return Result(spec, run_dir, series, data["seconds"])
    series = {
        t: (np.array(s["steps"], np.int64), np.array(s["values"], np.float64))
        for t, s in data["series"].items()
    }
    return Result(spec, run_dir, series, data["seconds"])


def run_all(
    specs: Sequence[Spec],
    logdir: str,
    tags: Sequence[str],
    jobs: int,
    whole: Sequence[str] = (),
    minutes: float | None = None,
) -> tuple[dict[str, Result], dict[str, str]]:
    """Every spec's result (`tags` read back, every point of those in `whole`, the last
    of the others), training the missing ones in `specs` order on `jobs` worker
    processes (one TensorFlow thread each); returns `(results by name, errors by name)`:
    a run that raised is reported, not retried, and the others go on. With `minutes`,
    no run starts after that many minutes (the started ones finish): the caller says
    which runs are missing."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"two runs share a name: {sorted(n for n in names if names.count(n) > 1)}")
    results = {s.name: r for s in specs if (r := load(s, logdir, tags, whole)) is not None}
    queue = [s for s in specs if s.name not in results]
    print(f"{len(results)} of {len(specs)} runs kept in {logdir}; training {len(queue)}",
          flush=True)  # fmt: skip
    errors: dict[str, str] = {}
    if not queue:
        return results, errors
    stop = None if minutes is None else time.monotonic() + 60 * minutes
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(jobs, context, initializer=init_worker) as pool:
        running: dict[futures.Future, Spec] = {}
        total, done = len(queue), 0
        while queue or running:
            while queue and len(running) < jobs and (stop is None or time.monotonic() < stop):
                spec = queue.pop(0)
                running[pool.submit(run_one, spec, logdir, tuple(tags), tuple(whole))] = spec
            if not running:
                print(f"{len(queue)} runs not started: the {minutes:g} minutes are up",
                      flush=True)  # fmt: skip
                break
            finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in finished:
                spec, done = running.pop(future), done + 1
                try:
                    results[spec.name] = future.result()
                except Exception as error:  # reported on the page; the others go on
                    errors[spec.name] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                state = errors.get(spec.name) or f"{results[spec.name].seconds:.0f} s"
                print(f"[{done}/{total}] {spec.name}: {state}", file=sys.stderr, flush=True)
    return results, errors


def cost_line(
    results: dict[str, Result], specs: Sequence[Spec], errors: dict[str, str], minutes: float | None
) -> str:
    """What ran, for the page: the runs' own time (a page written from kept runs took
    less than they did) and the runs asked for that did not run."""
    seconds = sum(r.seconds for r in results.values())
    line = (f"{len(results)} of {len(specs)} runs finished, {seconds / 60:.1f} min of training "
            "and reading back in all (summed over runs, each on one TensorFlow thread, "
            "several at a time).")  # fmt: skip
    not_run = [s.name for s in specs if s.name not in results and s.name not in errors]
    if not_run:
        why = f"`--minutes {minutes:g}` ran out" if minutes is not None else "interrupted"
        more = f" and {len(not_run) - 10} more" if len(not_run) > 10 else ""
        names = ", ".join(f"`{n}`" for n in not_run[:10])
        line += f" **Not run** ({why}): {len(not_run)} runs: {names}{more}."
    return line


def arguments(description: str, name: str) -> argparse.ArgumentParser:
    """The flags of a results script on kept runs: `--quick`, `--page`, `--jobs`,
    `--logdir` (`logdir` gives its default, `runs/<name>[_quick]`) and `--minutes`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="short runs, one seed; prints")
    parser.add_argument(
        "--page",
        action="store_true",
        help="with --quick, write the page anyway (marked as a quick run)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--logdir", default=None, help=f"where the runs stay (default runs/{name}[_quick])"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="start no run after this many minutes; the page says what ran",
    )
    return parser


def logdir(args: argparse.Namespace, name: str) -> str:
    """`--logdir`, or `runs/<name>` (`runs/<name>_quick` with `--quick`)."""
    return args.logdir or f"runs/{name}" + ("_quick" if args.quick else "")
