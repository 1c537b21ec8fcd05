"""LR sensitivity (`compare --sensitivity`): the final value of a metric against each
swept LR-valued binding, one line per strategy with its seeds as a band; the figure
behind a "tuning-free" claim.

- **LR-valued binding**: its parameter name is an LR by `is_lr_binding` (`lr`,
  `learning_rate`, a name ending in `_lr` or `_learning_rate` such as `base_lr`, `max_lr`,
  `min_lr`, `initial_lr`, and `eta`, `eta_min`, `eta_max`, `lr_min`, `lr_max`); it is
  swept when the runs bind it to more than one value. `--sensitivity=BINDING` names the
  binding(s) instead.
- **Strategy**: the runs' bindings without the seed and without the swept LR bindings.
  A strategy whose runs take two or more values of an LR binding is a line against it
  (mean ± sample std, ddof=1, over the runs at each value; markers at the values). A
  strategy whose runs take at most one value of each (Prodigy, DoG, a fixed multiplier)
  is a horizontal line with its band, mean ± std over all its runs, across the whole x
  range.
- **Table**: per strategy and LR value, n, mean, std; per strategy its best LR (the
  value with the best mean: lowest for a loss, highest where `higher_is_better`) and the
  width of the LR range within `within_pct`% of the best mean, in decades
  (log10(largest / smallest LR of the contiguous values around the best whose mean is
  within X% of it); 0 when only the best is). A wider range: less tuning needed.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np

from lrresearch.analysis.bindings import RunConfig, short_value, unscoped
from lrresearch.analysis.group_stats import Stat, higher_is_better
from lrresearch.analysis.groups import Group, group_runs

# A parameter whose value is a learning rate (the one rule; `--sensitivity=BINDING` overrides).
LR_PARAMETER = re.compile(r"^(?:\w+_)?(?:lr|learning_rate)$|^(?:eta|lr)(?:_(?:min|max))?$")
WITHIN_PCT = 10.0  # the default X of "within X% of the best"


def is_lr_binding(binding: str) -> bool:
    """`GradNormController.base_lr` -> True: the parameter name is an LR (`LR_PARAMETER`)."""
    return bool(LR_PARAMETER.match(unscoped(binding).rsplit(".", 1)[-1]))


@dataclasses.dataclass
class Curve:
    """One strategy's final `metric` against `binding` (None: a horizontal band).

    `values` are the LR values (floats, increasing), `stats` one `Stat` per value, and
    for a band, `stats` has the one `Stat` over all the strategy's runs."""

    strategy: str
    binding: str | None
    values: list[float]
    stats: list[Stat]
    runs: list[list[int]]

    def best(self, higher: bool) -> int:
        means = np.array([s.mean for s in self.stats])
        return int(np.nanargmax(means) if higher else np.nanargmin(means))

    def width_decades(self, higher: bool, within_pct: float) -> float:
        """log10 of the range of the contiguous LR values around the best whose mean is
        within `within_pct`% of the best mean."""
        best = self.best(higher)
        target = self.stats[best].mean
        ok = [abs(s.mean - target) <= abs(target) * within_pct / 100 for s in self.stats]
        low = high = best
        while low > 0 and ok[low - 1]:
            low -= 1
        while high < len(ok) - 1 and ok[high + 1]:
            high += 1
        return math.log10(self.values[high] / self.values[low])


def swept_lr_bindings(configs: Sequence[RunConfig], named: Sequence[str] = ()) -> list[str]:
    """The `named` bindings, or the LR-valued bindings bound to 2+ values."""
    if named:
        return list(named)
    seen: dict[str, set[str]] = {}
    for config in configs:
        for binding, value in (config.bindings or {}).items():
            if is_lr_binding(binding):
                seen.setdefault(binding, set()).add(value)
    return sorted(b for b, values in seen.items() if len(values) > 1)


def curves(
    configs: Sequence[RunConfig], finals: Sequence[float | None], swept: Sequence[str]
) -> list[Curve]:
    """The strategies' curves. `finals`: each run's final metric (None if it has none).
    Runs without a readable config.gin are left out."""
    stripped = [
        dataclasses.replace(c, bindings={b: v for b, v in c.bindings.items() if b not in swept})
        if c.bindings is not None
        else c
        for c in configs
    ]
    out = []
    for strategy in group_runs(stripped):
        if strategy.bindings is None:
            continue
        lines = _lines(strategy, configs, finals, swept)
        if not lines:
            members = strategy.members
            stat = Stat.of([finals[i] for i in members])
            lines = [Curve(strategy.label, None, [], [stat], [members])]
        out += lines
    return out


def _lines(
    strategy: Group, configs: Sequence[RunConfig], finals: Sequence, swept: Sequence[str]
) -> list[Curve]:
    """A line per swept binding that takes 2+ numeric values in the strategy (and per
    value of the strategy's other swept bindings)."""
    lines = []
    for binding in swept:
        at: dict[tuple, dict[float, list[int]]] = {}
        for i in strategy.members:
            bound = configs[i].bindings
            value = _number(bound.get(binding))
            if value is None:
                continue
            rest = tuple((b, bound.get(b)) for b in swept if b != binding)
            at.setdefault(rest, {}).setdefault(value, []).append(i)
        # The label names only the other swept bindings that tell this strategy's lines
        # apart (a binding with one value here, e.g. the init_lr a method's file sets,
        # says nothing).
        differing = {b for b, _ in next(iter(at), ())} if len(at) > 1 else set()
        differing = {b for b in differing if len({dict(r).get(b) for r in at}) > 1}
        for rest, by_value in at.items():
            if len(by_value) < 2:
                continue
            values = sorted(by_value)
            shown = [f"{b}={short_value(v)}" for b, v in rest if v and b in differing]
            label = ", ".join([strategy.label, *shown])
            stats = [Stat.of([finals[i] for i in by_value[v]]) for v in values]
            lines.append(Curve(label, binding, values, stats, [by_value[v] for v in values]))
    return lines


def _number(source: str | None) -> float | None:
    try:
        value = float(source) if source is not None else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


def table(lines: Sequence[Curve], metric: str, within_pct: float) -> str:
    """Markdown: per strategy, n, mean and std at each LR value, then the best LR and
    the width of the range within `within_pct`% of the best."""
    higher = higher_is_better(metric)
    rows = [
        f"LR sensitivity of the final {metric} ({'higher' if higher else 'lower'} is better): "
        f"mean ± sample std (ddof=1) over seeds; 'within {within_pct:g}%': width in decades "
        f"of the contiguous LR range whose mean is within {within_pct:g}% of the best mean.",
        "",
        "| strategy | LR binding | LR | n | mean | std |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for line in lines:
        for value, stat in _points(line):
            std = "-" if np.isnan(stat.std) else f"{stat.std:.4g}"
            shown = "any (no LR swept)" if value is None else f"{value:.4g}"
            rows.append(
                f"| {line.strategy} | {line.binding or '-'} | {shown} | {stat.count} | "
                f"{stat.mean:.4g} | {std} |"
            )
    rows += ["", f"| strategy | best LR | best mean | within {within_pct:g}% (decades) |"]
    rows.append("|---|---:|---:|---:|")
    for line in lines:
        if line.binding is None:
            rows.append(f"| {line.strategy} | - (tuning-free) | {line.stats[0].mean:.4g} | - |")
            continue
        best = line.best(higher)
        width = line.width_decades(higher, within_pct)
        rows.append(
            f"| {line.strategy} | {line.values[best]:.4g} | {line.stats[best].mean:.4g} | "
            f"{width:.2f} |"
        )
    return "\n".join(rows)


def _points(line: Curve) -> list[tuple[float | None, Stat]]:
    if line.binding is None:
        return [(None, line.stats[0])]
    return list(zip(line.values, line.stats, strict=True))


def write_csv(path: str, lines: Sequence[Curve], metric: str, within_pct: float) -> None:
    """One row per (strategy, LR value): strategy, binding, lr (empty for a band), n,
    mean, std, and the strategy's best LR and width within `within_pct`% (decades)."""
    higher = higher_is_better(metric)
    with open(path, "x", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["strategy", "binding", "lr", "n", "mean", "std", "metric", "best_lr",
             f"decades_within_{within_pct:g}pct"]
        )  # fmt: skip
        for line in lines:
            best = "" if line.binding is None else repr(line.values[line.best(higher)])
            width = "" if line.binding is None else repr(line.width_decades(higher, within_pct))
            for value, stat in _points(line):
                std = "" if np.isnan(stat.std) else repr(stat.std)
                writer.writerow(
                    [line.strategy, line.binding or "", "" if value is None else repr(value),
                     stat.count, repr(stat.mean), std, metric, best, width]
                )  # fmt: skip


def plot(lines: Sequence[Curve], metric: str, path: str) -> dict[str, list]:
    """Writes the figure (log x); returns the drawn artists by kind: `lines` (a
    strategy's means against the LR), `bands` (their fill_between), `flat` (a
    parameter-free strategy's horizontal line) and `flat_bands` (its axhspan)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    drawn: dict[str, list] = {"lines": [], "bands": [], "flat": [], "flat_bands": []}
    colours = [matplotlib.colormaps["tab10"](i % 10) for i in range(len(lines))]
    for line, colour in zip(lines, colours, strict=True):
        mean = np.array([s.mean for s in line.stats])
        std = np.nan_to_num(np.array([s.std for s in line.stats]))
        if line.binding is None:
            label = f"{line.strategy} (no LR, n={line.stats[0].count})"
            drawn["flat"].append(ax.axhline(mean[0], color=colour, linestyle="--", label=label))
            if std[0] > 0:
                span = ax.axhspan(mean[0] - std[0], mean[0] + std[0], color=colour, alpha=0.15)
                drawn["flat_bands"].append(span)
            continue
        label = f"{line.strategy} vs {line.binding}"
        (artist,) = ax.plot(line.values, mean, marker="o", color=colour, label=label)
        drawn["lines"].append(artist)
        drawn["bands"].append(
            ax.fill_between(line.values, mean - std, mean + std, color=colour, alpha=0.2)
        )
    ax.set_xscale("log")
    ax.set_xlabel("LR value of the strategy's swept binding (log)")
    ax.set_ylabel(f"final {metric}")
    ax.set_title("LR sensitivity: mean ± sample std (ddof=1) over seeds")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn
