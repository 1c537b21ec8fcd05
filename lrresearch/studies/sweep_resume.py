"""`lrresearch sweep --resume --sweep_name NAME`: an interrupted sweep, continued.

A sweep resumes as a run does. Its flags come from its own `sweep.json`: the points
already finished ("ok" or "failed") are skipped, the one Ctrl-C stopped continues from
its checkpoint (as `lrresearch train --resume`), and the points not run are run; every
status in `sweep.json` is brought up to date ("ok" once a resumed point finishes).
`--gin_param`s given with `--resume` apply on top, to the points still to train (to
shorten or extend them), and join the sweep's flags in `sweep.json`. Other sweep flags
may be repeated as they were, never changed: the points are the sweep's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from lrresearch.config import parse as config
from lrresearch.studies.sweep import Point, plan_sweep, run_points
from lrresearch.training.open_run import open_run
from lrresearch.training.run_dir import run_path

# The flags a sweep records in sweep.json, with their command-line spelling and the
# value they have when not given.
FLAGS = {
    "gin_files": ("--gin_file", []),
    "sweeps": ("--sweep", []),
    "samples": ("--sample", []),
    "sweep_random": ("--sweep_random", 0),
    "seed": ("--seed", 0),
    "methods": ("--method", []),
}


def resume_sweep(
    logdir: str,
    sweep_name: str,
    given: dict[str, Any],
    gin_params: Sequence[str],
    progress: Callable[[str], None] = print,
    search_path: Sequence[str] = (),
) -> tuple[str, list[Point]]:
    """Continues the sweep `<logdir>/<sweep_name>` (see the module docstring).

    Args:
      given: the other sweep flags of the command, by their `sweep.json` names
        (`FLAGS`); each must be left out or equal the sweep's own.
      gin_params: `--gin_param`s; those beyond the sweep's own apply on top.
      search_path: `--gin_search_path` folders, in place of the sweep's own if given
        (where its gin files are found, not what they are: it may change).

    Raises:
      config.ConfigError: no sweep there, an unreadable `sweep.json`, a flag that
        differs from the sweep's, or a binding that no longer parses.
      SweepInterrupted: Ctrl-C or SIGTERM again; the statuses are recorded.
    """
    sweep_dir = run_path(logdir, sweep_name)
    manifest = _load(sweep_dir)
    flags = {name: manifest.get(name, default) for name, (_, default) in FLAGS.items()}
    _check_given(flags, given, sweep_dir)
    own = list(manifest.get("gin_params", []))
    extra = list(gin_params[len(own) :] if list(gin_params[: len(own)]) == own else gin_params)
    flags["gin_params"] = own + extra
    if search_path := list(search_path or manifest.get("gin_search_paths", [])):
        flags["gin_search_paths"] = search_path
    _, parsed = plan_sweep(flags, search_path)  # the sweep's own points are kept
    if not parsed:  # as a new sweep records them
        for name in ("samples", "sweep_random", "seed"):
            del flags[name]
    if not flags["methods"]:
        del flags["methods"]
    points = [_point(i, entry) for i, entry in enumerate(manifest["points"])]
    counts = {s: sum(p.status == s for p in points) for s in ("ok", "failed")}
    # One process continues a sweep: it holds the sweep's lock, as a new sweep does.
    with open_run(logdir, sweep_name, "sweep", name_flag="--sweep_name", resume=True) as sweep:
        progress(
            f"sweep directory: {sweep_dir} (resumed: {len(points)} runs, {counts['ok']} ok and "
            f"{counts['failed']} failed skipped"
            + "".join(f", --gin_param={p!r} on top" for p in extra)
            + ")"
        )
        run_points(sweep, flags, points, parsed, progress, resume=True)
    return sweep_dir, points


def _point(index: int, entry: dict[str, Any]) -> Point:
    """A point as `sweep.json` records it (`sweep._write_manifest`)."""
    return Point(
        index,
        entry["bindings"],
        entry["run"],
        entry.get("sampled", {}),
        error=entry.get("error", ""),
        status=entry.get("status", "not run"),
        run_hparams=entry.get("hparams", {}),
        method=entry.get("method", ""),
    )


def _load(sweep_dir: str) -> dict[str, Any]:
    """The sweep's `sweep.json`, or a ConfigError saying what is missing."""
    path = os.path.join(sweep_dir, "sweep.json")
    if not os.path.isdir(sweep_dir):
        raise config.ConfigError(
            f"sweep --resume: no sweep at {sweep_dir!r}; pass the sweep's --sweep_name "
            "and --logdir (the folder that holds it)"
        )
    try:
        with open(path) as f:
            manifest = json.load(f)
        points = manifest["points"]
        if not all("run" in p and "bindings" in p for p in points):
            raise KeyError("run")
    except FileNotFoundError:
        raise config.ConfigError(
            f"sweep --resume: {sweep_dir!r} has no sweep.json, so it is not a sweep "
            "directory; pass the sweep's --sweep_name and --logdir"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise config.ConfigError(
            f"sweep --resume: cannot read {path} ({type(e).__name__}: {e}); its runs are "
            "intact: continue one with lrresearch train --resume"
        ) from None
    return manifest


def _check_given(flags: dict[str, Any], given: dict[str, Any], sweep_dir: str) -> None:
    """A sweep flag given with --resume must be the sweep's own: the points are fixed."""
    for name, value in given.items():
        flag, default = FLAGS[name]
        if value != default and value != flags[name]:
            raise config.ConfigError(
                f"sweep --resume: {flag} is {value!r}, but the sweep's own (in "
                f"{sweep_dir}/sweep.json) is {flags[name]!r}; its points are fixed: leave "
                f"{flag} out, or start a new sweep with another --sweep_name"
            )
