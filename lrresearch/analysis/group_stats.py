"""Statistics of each group of runs for `compare`: n, and the mean and sample standard
deviation (ddof=1) over the group's runs of the final and best value of every eval tag
the runs have and of the steps to the accuracy and loss targets (with how many of the n
runs reached them).

"Best" is the largest value for a tag where higher is better (`higher_is_better`) and
the smallest otherwise. A run that lacks a tag, or never reaches a target, is left out
of that column's mean; the cell then says over how many runs it is.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from lrresearch.analysis.groups import Group

# The eval tags whose larger values are better (matched against the tag's last part);
# every other eval tag (loss, mae, bits_per_byte, perplexity, ...) is better smaller.
HIGHER_IS_BETTER = re.compile(r"accuracy|auc|precision|recall|f1|r2")


def higher_is_better(tag: str) -> bool:
    return bool(HIGHER_IS_BETTER.search(tag.rsplit("/", 1)[-1]))


@dataclasses.dataclass(frozen=True)
class Stat:
    """Mean and sample std (ddof=1; NaN for one value) of the `count` values present
    out of the group's n."""

    mean: float
    std: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        values = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
        if not len(values):
            return cls(float("nan"), float("nan"), 0)
        std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        return cls(float(np.mean(values)), std, len(values))

    def cell(self, n: int, reached: bool = False) -> str:
        """`0.1234 ± 0.0056`, with `(k/n)` when not every run has a value (always, for a
        target: how many reached it)."""
        if not self.count:
            return f"- (0/{n})" if reached else "-"
        std = "-" if np.isnan(self.std) else f"{self.std:.4g}"
        text = f"{self.mean:.4g} ± {std}"
        return text + (f" ({self.count}/{n})" if reached or self.count < n else "")


@dataclasses.dataclass
class GroupSummary:
    """One group's row: its label, n, the run names, and a `Stat` per column."""

    label: str
    n: int
    runs: list[str]
    stats: dict[str, Stat]


def eval_tags(data: Sequence[dict]) -> list[str]:
    """Every `eval/...` scalar tag of any run, `eval/loss` first."""
    tags = sorted({t for series in data for t in series if t.startswith("eval/")})
    return sorted(tags, key=lambda t: t != "eval/loss")


def run_values(series: dict, steps_to: dict[str, int | None], tags: Sequence[str]) -> dict:
    """A run's value per column: `final <tag>`, `best <tag>`, and the `steps_to`
    targets (None where the run has no value)."""
    out: dict[str, float | None] = {}
    for tag in tags:
        s = series.get(tag)
        best = (np.nanmax if higher_is_better(tag) else np.nanmin) if s is not None else None
        out[f"final {tag}"] = float(s.values[-1]) if s is not None and len(s.values) else None
        ok = s is not None and np.isfinite(s.values).any()
        out[f"best {tag}"] = float(best(s.values)) if ok else None
    out.update(steps_to)
    return out


def summarize_groups(
    groups: Sequence[Group], names: Sequence[str], values: Sequence[dict]
) -> list[GroupSummary]:
    """Per group, a `Stat` of each column over its runs' `values` (`run_values`)."""
    columns = list(dict.fromkeys(c for v in values for c in v))
    return [
        GroupSummary(
            g.label,
            len(g.members),
            [names[i] for i in g.members],
            {c: Stat.of([values[i].get(c) for i in g.members]) for c in columns},
        )
        for g in groups
    ]


def group_table(rows: Sequence[GroupSummary], targets: Sequence[str]) -> str:
    """Markdown: one row per group; `targets` are the steps-to-target columns."""
    columns = list(rows[0].stats) if rows else []
    lines = [
        "Groups: mean ± sample std (ddof=1) over the group's runs (std `-` for n = 1); "
        "`(k/n)`: k of the n runs have a value (for steps to a target: reached it).",
        "",
        "| group | n | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for row in rows:
        cells = [row.stats[c].cell(row.n, reached=c in targets) for c in columns]
        lines.append(f"| {row.label} | {row.n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_group_csv(path: str, rows: Sequence[GroupSummary]) -> None:
    """One row per group: group, n, runs (`;`-separated), and per column its mean, std
    (ddof=1, empty for n = 1) and count."""
    columns = list(rows[0].stats) if rows else []
    header = ["group", "n", "runs"]
    for c in columns:
        name = c.replace(" >= ", "_ge_").replace(" <= ", "_le_").replace(" ", "_")
        header += [f"{name}_mean", f"{name}_std", f"{name}_count"]
    with open(path, "x", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            cells: list[object] = [row.label, row.n, ";".join(row.runs)]
            for c in columns:
                s = row.stats[c]
                cells += [_num(s.mean), _num(s.std), s.count]
            writer.writerow(cells)


def _num(value: float) -> str:
    return "" if np.isnan(value) else repr(value)
