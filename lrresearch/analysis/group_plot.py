"""`compare`'s curves of groups of runs: per panel, each group's mean with a shaded band
of ± its sample standard deviation (ddof=1), one colour per group.

Each run's curve is put on the group's common x points: the union of its runs' x values
where every run of the group has data (from the largest first x to the smallest last x;
a longer run's tail beyond the shortest is not drawn), each run linearly interpolated
there (`np.interp`). So every point of a group's curve is over all its n runs. The batch
loss is smoothed per run first (EMA 0.98, as in TensorBoard), then averaged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from lrresearch.analysis.axes import XAxis
from lrresearch.analysis.curves import Series, applied_lr, smooth
from lrresearch.analysis.groups import Group
from lrresearch.analysis.panels import PANELS, figure, finish


@dataclasses.dataclass(frozen=True)
class Band:
    """One group's curve in one panel over `n` runs: x, mean and std (NaN for n = 1).

    On a log panel (LR, gradient norm) `mean` is the geometric mean and `std` the std
    of the natural log, so the band `low..high` is mean / exp(std) .. mean * exp(std) and stays
    positive; elsewhere mean ± std."""

    panel: str
    label: str
    group: int  # index into the groups drawn (its colour)
    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: int
    log: bool = False

    @property
    def low(self) -> np.ndarray:
        return self.mean / np.exp(self.std) if self.log else self.mean - self.std

    @property
    def high(self) -> np.ndarray:
        return self.mean * np.exp(self.std) if self.log else self.mean + self.std


def mean_band(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """(x, mean, std) of curves `ys` over `xs` (each increasing) on their common x:
    the union of the x values within every curve's range; std is ddof=1 (NaN for one
    curve). Empty arrays if the ranges do not overlap."""
    low, high = max(x[0] for x in xs), min(x[-1] for x in xs)
    grid = np.unique(np.concatenate(xs))
    grid = grid[(grid >= low) & (grid <= high)]
    stacked = np.stack([np.interp(grid, x, y) for x, y in zip(xs, ys, strict=True)])
    std = np.std(stacked, axis=0, ddof=1) if len(xs) > 1 else np.full(len(grid), np.nan)
    return grid, stacked.mean(axis=0), std


def group_bands(
    groups: Sequence[Group],
    data: Sequence[dict[str, Series]],
    xaxes: Sequence[XAxis],
    panels: Sequence[tuple[str, str, bool, bool]],
) -> list[Band]:
    """Every group's `Band` in every panel whose tag all its runs have."""
    bands = []
    for tag, _, log, smoothed in panels:
        for index, group in enumerate(groups):
            series = [_series(data[i], tag) for i in group.members]
            if any(s is None or not len(s.steps) for s in series):
                continue
            xs = [xaxes[i].of(s) for i, s in zip(group.members, series, strict=True)]
            ys = [smooth(s.values) if smoothed else s.values for s in series]
            if log:  # a log axis: the mean and std of the log, where every run is > 0
                tiny = np.finfo(np.float64).tiny
                x, mean, std = mean_band(xs, [np.log(np.maximum(y, tiny)) for y in ys])
                _, positive, _ = mean_band(xs, [(y > 0).astype(np.float64) for y in ys])
                mean = np.where(positive == 1.0, np.exp(mean), np.nan)  # NaN: not drawn
                std = np.where(positive == 1.0, std, np.nan)
            else:
                x, mean, std = mean_band(xs, ys)
            bands.append(Band(tag, group.label, index, x, mean, std, len(series), log))
    return bands


def _series(series: dict[str, Series], tag: str) -> Series | None:
    return applied_lr(series)[1] if tag == "lr" else series.get(tag)


def plot_groups(
    groups: Sequence[Group],
    data: Sequence[dict[str, Series]],
    xaxes: Sequence[XAxis],
    path: str,
    x_label: str,
    metric: str = "eval/loss",
) -> list[Band]:
    """Writes the panels (LR, smoothed batch loss, gradient norm, and `metric` if the
    runs have it) to `path`; returns the bands drawn (tests read the plotted data)."""
    panels = [*PANELS]
    if any(metric in d for d in data):
        panels.append((metric, metric, False, False))
    bands = group_bands(groups, data, xaxes, panels)
    colours = _colours(len(groups))
    fig, axes = figure(panels)
    for ax, (tag, _, _, _) in zip(axes, panels, strict=True):
        for band in (b for b in bands if b.panel == tag):
            colour = colours[band.group]
            legend = f"{band.label} (n={band.n})"
            ax.plot(band.x, band.mean, color=colour, linewidth=1.2, label=legend)
            if band.n > 1:
                ax.fill_between(band.x, band.low, band.high, color=colour, alpha=0.2)
    title = "groups: mean ± sample std (ddof=1) over seeds; log panels: geometric mean"
    finish(fig, axes, panels, x_label, title, path)
    return bands


def _colours(count: int) -> list[tuple[float, ...]]:
    import matplotlib

    if count <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(count)]
    return list(matplotlib.colormaps["turbo"](np.linspace(0.03, 0.97, count)))
