"""The parts of `compare` over groups of runs: the options (`--group_by`, `--x`,
`--metric`, `--sensitivity`, `--within_pct`, `--export`), checked before any run is
read; the groups, their table and CSV, the x axis and the sensitivity curves, computed
before anything is written; and the files written from them.

Outputs next to `compare.md/.csv/.png` (never overwriting any): `compare_groups.csv` (one
row per group; `compare.csv`'s `group` column joins the runs to it) and, with
`--sensitivity`, `sensitivity.md`, `sensitivity.csv` and `sensitivity.png`.
`compare.png` draws each group's mean with a ± std band when a group has 2+ runs, and
each run as its own line otherwise.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Sequence

from lrresearch.analysis import axes, export, group_plot, group_stats, sensitivity
from lrresearch.analysis.bindings import RunConfig, read_config
from lrresearch.analysis.curves import Series
from lrresearch.analysis.groups import Group, group_runs
from lrresearch.analysis.sensitivity import WITHIN_PCT


@dataclasses.dataclass(frozen=True)
class CompareOptions:
    """What `compare` does beyond its per-run table.

    Attributes:
      group_by: bindings whose values group the runs (all other differences ignored);
        empty: runs equal in everything but `Trainer.seed` are a group.
      x: the curves' x axis, one of `axes.X_KINDS`.
      metric: the eval tag of the sensitivity figure and the extra curve panel.
      sensitivity: None (off), () (every swept LR-valued binding) or the bindings named.
      within_pct: X of the sensitivity's "LR range within X% of the best".
      export: a .csv or .parquet file for every scalar point of every run, or None.
    """

    group_by: tuple[str, ...] = ()
    x: str = "steps"
    metric: str = "eval/loss"
    sensitivity: tuple[str, ...] | None = None
    within_pct: float = WITHIN_PCT
    export: str | None = None

    def check(self) -> None:
        """ValueError naming the flag at fault, before any run is read."""
        if self.x not in axes.X_KINDS:
            raise ValueError(f"compare --x={self.x!r}: must be one of {', '.join(axes.X_KINDS)}")
        if not self.within_pct > 0:
            raise ValueError(f"compare --within_pct must be > 0, got {self.within_pct}")
        for name in self.sensitivity or ():
            if os.path.exists(name) or not re.fullmatch(r"[\w./]*\w\.\w+", name):
                raise ValueError(
                    f"compare --sensitivity={name!r}: not a gin binding (Configurable.param); "
                    "give a binding with `=`, or put --sensitivity after the run folders "
                    "(a bare --sensitivity takes the next word as its binding)"
                )
        if self.export:
            export.check_export(self.export)

    def outputs(self, out_dir: str) -> list[str]:
        """The files written besides compare.md/.csv/.png and the export."""
        names = ["compare_groups.csv"]
        if self.sensitivity is not None:
            names += ["sensitivity.md", "sensitivity.csv", "sensitivity.png"]
        return [os.path.join(out_dir, name) for name in names]

    def check_export_target(self, written: Sequence[str]) -> None:
        """ValueError if `--export` names one of the files `compare` writes."""
        if self.export and os.path.abspath(self.export) in map(os.path.abspath, written):
            raise ValueError(
                f"compare --export={self.export!r} is one of compare's own outputs; "
                "name another file"
            )


@dataclasses.dataclass
class Grouped:
    """Everything `write` needs, computed before any file is written."""

    configs: list[RunConfig]
    groups: list[Group]
    group_of: list[str]  # each run's group label
    xaxes: list[axes.XAxis]
    summaries: list[group_stats.GroupSummary]
    targets: list[str]
    curves: list[sensitivity.Curve] | None


def prepare(
    runs: Sequence[str],
    names: Sequence[str],
    data: Sequence[dict[str, Series]],
    steps_to: Sequence[dict[str, int | None]],
    opts: CompareOptions,
) -> Grouped:
    """The groups and what is drawn of them; ValueError naming the flag and run at
    fault. `steps_to`: per run, `{column: steps to that target or None}`."""
    configs = [read_config(run) for run in runs]
    _check_group_by(configs, opts.group_by)
    groups = group_runs(configs, opts.group_by, names)
    group_of = [""] * len(runs)
    for group in groups:
        for i in group.members:
            group_of[i] = group.label
    xaxes = axes.x_axes(opts.x, runs, configs, data)
    tags = group_stats.eval_tags(data)
    values = [group_stats.run_values(d, s, tags) for d, s in zip(data, steps_to, strict=True)]
    summaries = group_stats.summarize_groups(groups, names, values)
    curves = None
    if opts.sensitivity is not None:
        curves = _curves(configs, data, opts, tags)
    targets = list(steps_to[0]) if steps_to else []
    return Grouped(configs, groups, group_of, xaxes, summaries, targets, curves)


def _check_group_by(configs: Sequence[RunConfig], group_by: Sequence[str]) -> None:
    """ValueError for a `--group_by` binding no run binds, with the closest that some do."""
    bound = {b for c in configs for b in (c.bindings or {})}
    bound |= {b.rsplit("/", 1)[-1] for b in bound}
    for name in group_by:
        if name not in bound:
            close = difflib.get_close_matches(name, sorted(bound), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ValueError(f"compare --group_by={name!r}: no run's config.gin binds it{hint}")


def _curves(
    configs: Sequence[RunConfig], data: Sequence[dict], opts: CompareOptions, tags: list[str]
) -> list[sensitivity.Curve]:
    if opts.metric not in tags:
        raise ValueError(
            f"compare --metric={opts.metric!r}: no run has it; the runs' eval tags: "
            f"{', '.join(tags) or 'none'}"
        )
    swept = sensitivity.swept_lr_bindings(configs, opts.sensitivity or ())
    if not swept:
        raise ValueError(
            "compare --sensitivity: no LR-valued binding (parameter named like lr, "
            "learning_rate, *_lr, eta) takes two or more values among the runs; name the "
            "binding: --sensitivity=Configurable.param"
        )
    finals = [float(d[opts.metric].values[-1]) if opts.metric in d else None for d in data]
    curves = sensitivity.curves(configs, finals, swept)
    if not any(c.binding for c in curves):
        raise ValueError(
            f"compare --sensitivity: no strategy takes two or more values of "
            f"{', '.join(swept)}; nothing to draw against the LR"
        )
    return curves


def markdown(grouped: Grouped) -> str:
    """The group table (a run without a readable config.gin says so in its label)."""
    return group_stats.group_table(grouped.summaries, grouped.targets)


def write(
    grouped: Grouped,
    runs: Sequence[str],
    names: Sequence[str],
    data: Sequence[dict[str, Series]],
    out_dir: str,
    opts: CompareOptions,
) -> str:
    """Writes `compare_groups.csv`, the sensitivity files and the export. Returns the
    sensitivity markdown if asked for, else ""."""
    files = opts.outputs(out_dir)
    group_stats.write_group_csv(files[0], grouped.summaries)
    if opts.export:
        export.export(opts.export, names, grouped.group_of, data)
    text = ""
    if grouped.curves is not None:
        text = sensitivity.table(grouped.curves, opts.metric, opts.within_pct)
        with open(files[1], "x") as f:
            f.write(text + "\n")
        sensitivity.write_csv(files[2], grouped.curves, opts.metric, opts.within_pct)
        sensitivity.plot(grouped.curves, opts.metric, files[3])
    return text


def draws_groups(grouped: Grouped) -> bool:
    """Whether compare.png shows groups (some group has 2+ runs) rather than runs."""
    return any(len(g.members) > 1 for g in grouped.groups)


def plot(grouped: Grouped, data: Sequence[dict[str, Series]], path: str, opts: CompareOptions):
    return group_plot.plot_groups(
        grouped.groups, data, grouped.xaxes, path, axes.X_LABELS[opts.x], opts.metric
    )
