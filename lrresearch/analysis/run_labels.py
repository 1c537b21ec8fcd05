"""How `compare` names and draws runs: each run's shortest unique path, and a colour
and line style per run that stay distinct past 10 runs and group a sweep's runs."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def labels(runs: Sequence[str]) -> list[str]:
    """Each run's shortest unique path suffix: its folder name where that is unique,
    else with as many parent folders as tell it apart (`sweepA/000-seed=0` and
    `sweepB/000-seed=0`)."""
    parts = [os.path.normpath(os.path.abspath(run)).split(os.sep) for run in runs]
    depth = [1] * len(runs)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        clashing = [i for i, n in enumerate(names) if names.count(n) > 1]
        deeper = [i for i in clashing if depth[i] < len(parts[i])]
        if not deeper:
            return names
        for i in deeper:
            depth[i] += 1


def line_styles(runs: Sequence[str]) -> list[tuple[tuple[float, ...], str]]:
    """A (colour, line style) per run: every colour distinct (tab10 up to 10 runs,
    tab20 up to 20, then evenly spaced hues of `turbo`), in run order so a group's
    runs (those of one parent folder, a sweep) sit together, and one line style per
    group."""
    import matplotlib

    count = len(runs)
    if count <= 10:
        colours = [matplotlib.colormaps["tab10"](i) for i in range(count)]
    elif count <= 20:
        colours = [matplotlib.colormaps["tab20"](i) for i in range(count)]
    else:
        colours = list(matplotlib.colormaps["turbo"](np.linspace(0.03, 0.97, count)))
    groups: dict[str, int] = {}
    styles = ("-", "--", ":", "-.")
    out = []
    for run, colour in zip(runs, colours, strict=True):
        parent = os.path.dirname(os.path.normpath(os.path.abspath(run)))
        group = groups.setdefault(parent, len(groups))
        out.append((tuple(float(c) for c in colour), styles[group % len(styles)]))
    return out
