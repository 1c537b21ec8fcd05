"""Compare runs: a table of outcomes and plots of LR, smoothed loss and raw gradient norm,
read from the event files with TensorBoard's own loader.

TensorBoard's loader stops quietly at the first bad record of an event file, so a
truncated or bit-flipped file looks like a shorter run. Every event file's records are
checked first (`lrresearch.logs.event_files.read_records`: framing and both checksums); a
damaged file is an error naming it, the byte offset, the record, what was read and the
fix, unless `allow_damaged`, which compares what can be read and marks the run.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import os
import re
import sys
from collections.abc import Callable, Sequence

import numpy as np
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.compat.proto import event_pb2

from lrresearch.analysis import grouped as grouping
from lrresearch.analysis.axes import X_LABELS, XAxis
from lrresearch.analysis.curves import (  # noqa: F401  (compare.load, compare.smooth, ...)
    LR_TAGS,
    Series,
    applied_lr,
    duplicate_warning,
    load,
    smooth,
)
from lrresearch.analysis.panels import PANELS, figure, finish
from lrresearch.analysis.run_labels import labels, line_styles
from lrresearch.logs import event_files
from lrresearch.logs.run_layout import CONFIG_FILE


class DamagedRunError(ValueError):
    """Event files that TensorBoard's loader would read only in part."""


def find_runs(paths: Sequence[str]) -> list[str]:
    """Run directories (those holding event files) at or directly below `paths`."""
    runs: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"compare: no such directory {path!r}")
        candidates = [path, *sorted(glob.glob(os.path.join(path, "*")))]
        found = [
            c
            for c in candidates
            if os.path.isdir(c)
            and glob.glob(os.path.join(c, "events.out.tfevents.*"))
            and _has_scalar(c, "lr")
        ]
        if not found:
            raise FileNotFoundError(f"compare: no runs with an `lr` series under {path!r}")
        runs += [r for r in found if r not in runs]
    return runs


@dataclasses.dataclass(frozen=True)
class FileDamage:
    """An event file that stops being readable before its end.

    Attributes:
      damage: where (`event_files.Damage`: path, byte offset, file size, intact records,
        step of the last intact record, and whether the file ends inside that record).
      lr_steps: the `lr` steps in the intact records (what the loader reads).
      steps_wanted: `Trainer.steps` from the run's `config.gin`, if found.
    """

    damage: event_files.Damage
    lr_steps: tuple[int, ...]
    steps_wanted: int | None

    @property
    def run(self) -> str:
        return os.path.normpath(os.path.dirname(self.damage.path))

    def short(self) -> str:
        """`truncated at byte N of events.out...` (the csv's `damaged` column)."""
        kind = "truncated" if self.damage.truncated else "bad checksum"
        name = os.path.basename(self.damage.path)
        return f"{kind} at byte {self.damage.offset} of {name}"

    def describe(self) -> str:
        """What is wrong, where, what was read, and the fix (a few lines)."""
        d = self.damage
        where = f"{d.path}\n    "
        if self.damage.truncated:
            where += (
                f"truncated at byte {d.offset:,} of {d.file_size:,}: the file ends inside "
                f"record {d.records_read + 1:,} (the last one, cut short)"
            )
        else:
            where += (
                f"damaged at byte {d.offset:,} of {d.file_size:,}: record "
                f"{d.records_read + 1:,} fails its checksum (bytes changed on disk or in a "
                f"copy); the {d.file_size - d.offset:,} bytes from there are not read"
            )
        last = self.lr_steps[-1] if self.lr_steps else None
        read = (
            f"\n    read: {d.records_read:,} intact records; `lr` at "
            + (f"{len(self.lr_steps):,} steps, the last {last}" if self.lr_steps else "no step")
            + (
                f" (the run's config.gin asks for Trainer.steps = {self.steps_wanted})"
                if self.steps_wanted is not None
                else ""
            )
        )
        logdir, name = os.path.split(os.path.normpath(self.run))
        fix = (
            "\n    fix: the run was probably killed while writing: `lrresearch train "
            f"--resume --logdir={logdir or '.'} --run_name={name}` (with the run's gin "
            "flags) drops the cut record and continues; if the run had finished, the file "
            "was cut short afterwards (a copy, a full disk): restore it from a copy"
            if self.damage.truncated
            else "\n    fix: restore the file from a copy or train the run again"
        )
        return where + read + fix


def find_damage(paths: Sequence[str]) -> list[FileDamage]:
    """Every damaged event file of the runs at or directly below `paths`."""
    found = []
    for path in paths:
        for run in [path, *sorted(glob.glob(os.path.join(path, "*")))]:
            if not os.path.isdir(run):
                continue
            for file in event_files.event_files(run):
                records, damage = event_files.read_records(file)
                if damage is not None:
                    lr_steps = tuple(
                        event.step
                        for event in (event_pb2.Event.FromString(data) for _, data in records)
                        if any(v.tag == "lr" for v in event.summary.value)
                    )
                    found.append(FileDamage(damage, lr_steps, _steps_wanted(run)))
    return found


def _steps_wanted(run: str) -> int | None:
    try:
        with open(os.path.join(run, CONFIG_FILE)) as f:
            match = re.search(r"^Trainer\.steps\s*=\s*(\d+)\s*$", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def damage_report(damaged: Sequence[FileDamage]) -> str:
    """The error `compare` gives for damaged event files (one screen for a few)."""
    return (
        f"compare: {len(damaged)} damaged event file(s). TensorBoard's loader stops quietly "
        "at the first bad record, so these runs would look shorter than they are:\n  "
        + "\n  ".join(d.describe() for d in damaged)
        + "\nPass --allow_damaged to compare what can be read (the runs are marked "
        "'damaged' in compare.md and compare.csv)."
    )


def _has_scalar(run: str, tag: str) -> bool:
    acc = ea.EventAccumulator(run, size_guidance={ea.TENSORS: 1})
    acc.Reload()
    return tag in acc.Tags()["tensors"]


@dataclasses.dataclass
class RunSummary:
    run: str
    steps: int
    final_eval_accuracy: float
    best_eval_accuracy: float
    final_eval_loss: float
    best_eval_loss: float
    steps_to_target_accuracy: int | None
    steps_to_target_loss: int | None
    mean_lr: float
    lr_changes_over_pct: int
    ms_per_step: float
    # Empty, or where the run's event files stop being readable (`FileDamage.short`).
    damaged: str = ""
    # The tag of the LR columns: `lr`, or `optimizer/effective_lr` (`LR_TAGS`).
    lr_tag: str = "lr"
    # The label of the run's group (`groups.group_runs`): compare_groups.csv's `group`.
    group: str = ""


def summarize(
    run: str,
    series: dict[str, Series],
    target_accuracy: float,
    target_loss: float,
    change_pct: float,
) -> RunSummary:
    lr_tag, lr = applied_lr(series)
    acc = series.get("eval/accuracy")
    loss = series.get("eval/loss")

    def first(s: Series | None, ok) -> int | None:
        if s is None:
            return None
        hit = np.flatnonzero(ok(s.values))
        return int(s.steps[hit[0]]) + 1 if hit.size else None

    relative = np.abs(np.diff(lr.values)) / np.maximum(np.abs(lr.values[:-1]), 1e-30)
    duration = lr.wall_times[-1] - lr.wall_times[0] if len(lr.steps) > 1 else np.nan
    nan = float("nan")
    return RunSummary(
        run=os.path.basename(os.path.normpath(run)),
        steps=int(lr.steps[-1]) + 1,
        final_eval_accuracy=float(acc.values[-1]) if acc else nan,
        best_eval_accuracy=float(acc.values.max()) if acc else nan,
        final_eval_loss=float(loss.values[-1]) if loss else nan,
        best_eval_loss=float(loss.values.min()) if loss else nan,
        steps_to_target_accuracy=first(acc, lambda v: v >= target_accuracy),
        steps_to_target_loss=first(loss, lambda v: v <= target_loss),
        mean_lr=float(np.mean(lr.values)),
        lr_changes_over_pct=int(np.sum(relative > change_pct / 100.0)),
        # Wall time between the first and last `lr` events: includes eval and
        # checkpoints, so an upper bound of the step time.
        ms_per_step=float(1000 * duration / max(len(lr.steps) - 1, 1)),
        lr_tag=lr_tag,
    )


def table(
    rows: Sequence[RunSummary], target_accuracy: float, target_loss: float, change_pct: float
) -> str:
    def fmt(v) -> str:
        return (
            "-"
            if v is None or (isinstance(v, float) and np.isnan(v))
            else (f"{v:.4g}" if isinstance(v, float) else str(v))
        )

    head = (
        f"| run | steps | final eval acc | best eval acc | final eval loss | best eval loss "
        f"| steps to acc >= {target_accuracy:g} | steps to loss <= {target_loss:g} "
        f"| mean LR | LR changes > {change_pct:g}% | ms/step |"
    )
    lines = [head, "|---|" + "---:|" * 10]
    for r in rows:
        run, *values = dataclasses.astuple(r)[:11]
        cells = [f"{run} (damaged)" if r.damaged else run, *map(fmt, values)]
        if r.lr_tag != "lr":
            cells[8] = f"step {cells[8]}"
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.lr_tag != "lr" for r in rows):
        lines.append(
            "\n`step`: the step size the optimizer applied (`optimizer/effective_lr`); "
            "its `lr` only multiplies it"
        )
    return "\n".join(lines)


def plot(
    runs: Sequence[str],
    data: Sequence[dict[str, Series]],
    path: str,
    xaxes: Sequence[XAxis] | None = None,
    x_label: str = X_LABELS["steps"],
) -> list[tuple[str, tuple[float, ...], str]]:
    """Writes the three panels to `path`, against `xaxes` (default: steps); returns
    each run's (label, colour, line style) as drawn in the LR panel."""
    names, styles = labels(runs), line_styles(runs)

    panels = PANELS
    fig, axes = figure(panels, height=10 / 3)
    for ax, (tag, _, _, smoothed) in zip(axes, panels, strict=True):
        xs = xaxes or [XAxis("steps")] * len(runs)
        for name, (colour, style), series, x in zip(names, styles, data, xs, strict=True):
            if tag not in series:
                continue
            own = tag == "lr" and applied_lr(series)[0] != "lr"
            s = applied_lr(series)[1] if tag == "lr" else series[tag]
            ax.plot(
                x.of(s),
                smooth(s.values) if smoothed else s.values,
                label=name + (" (step size)" if own else ""),
                color=colour,
                linestyle=style,
                linewidth=1.2,
            )
    finish(fig, axes, panels, x_label, "lrresearch runs compared", path)
    drawn = [(line.get_label(), line.get_color(), line.get_linestyle()) for line in axes[0].lines]
    return drawn


def compare(
    paths: Sequence[str],
    out_dir: str,
    target_accuracy: float = 0.95,
    target_loss: float = 0.2,
    change_pct: float = 10.0,
    allow_damaged: bool = False,
    warn: Callable[[str], None] | None = None,
    options: grouping.CompareOptions | None = None,
) -> tuple[str, list[RunSummary]]:
    """Writes `compare.md`, `compare.csv`, `compare.png` and `compare_groups.csv` into
    `out_dir` (created if needed; existing files of those names are an error), and what
    `options` asks for (`grouped.CompareOptions`: groups, x axis, sensitivity, export).
    Returns the markdown: the groups' table (mean ± std over seeds), then the runs'.

    Raises `DamagedRunError` if an event file is truncated or fails a checksum, unless
    `allow_damaged`: then the runs are compared up to the damage, marked in the table
    and the csv's `damaged` column, and the damage is listed below the table. Raises
    ValueError for options that do not fit the runs, before anything is written.

    Rows and legend entries are named by each run's shortest unique path
    (`run_labels.labels`). A
    run with steps logged more than once is compared with the last value of each step
    and `warn`ed about (one line; default: stderr), also below the table."""
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    opts = options or grouping.CompareOptions()
    opts.check()
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"compare: no such directory {path!r}")
    damaged = find_damage(paths)
    if damaged and not allow_damaged:
        raise DamagedRunError(damage_report(damaged))
    runs = find_runs(paths)
    names = _outputs(out_dir, opts)
    repeated: list[dict[str, np.ndarray]] = [{} for _ in runs]
    data = [load(run, seen) for run, seen in zip(runs, repeated, strict=True)]
    rows = [
        summarize(r, d, target_accuracy, target_loss, change_pct)
        for r, d in zip(runs, data, strict=True)
    ]
    run_names = labels(runs)
    targets = (f"steps to acc >= {target_accuracy:g}", f"steps to loss <= {target_loss:g}")
    steps_to = [dict(zip(targets, _steps_to(r), strict=True)) for r in rows]
    grouped = grouping.prepare(runs, run_names, data, steps_to, opts)
    for row, run, name, group in zip(rows, runs, run_names, grouped.group_of, strict=True):
        row.run, row.group = name, group
        row.damaged = "; ".join(d.short() for d in damaged if d.run == os.path.normpath(run))
    markdown = table(rows, target_accuracy, target_loss, change_pct)
    markdown = grouping.markdown(grouped) + "\n\nRuns:\n\n" + markdown
    warnings = [duplicate_warning(r, seen) for r, seen in zip(runs, repeated, strict=True) if seen]
    for line in warnings:
        warn(line)
    if warnings:
        markdown += "\n\n" + "\n".join(f"- {line}" for line in warnings)
    if damaged:
        markdown += "\n\nDamaged event files (compared up to the damage):\n\n" + "\n".join(
            f"- {d.describe()}" for d in damaged
        )
    os.makedirs(out_dir, exist_ok=True)
    _write(names, markdown, rows)
    sensitivity_md = grouping.write(grouped, runs, run_names, data, out_dir, opts)
    if grouping.draws_groups(grouped):
        grouping.plot(grouped, data, names[2], opts)
    else:
        plot(runs, data, names[2], grouped.xaxes, X_LABELS[opts.x])
    return markdown + (f"\n\n{sensitivity_md}" if sensitivity_md else ""), rows


def _outputs(out_dir: str, opts: grouping.CompareOptions) -> list[str]:
    """compare.md, .csv and .png in `out_dir`; FileExistsError if any of those or of the
    options' files exists, ValueError if `--export` names one of them."""
    names = [os.path.join(out_dir, f"compare.{ext}") for ext in ("md", "csv", "png")]
    opts.check_export_target([*names, *opts.outputs(out_dir)])
    for name in [*names, *opts.outputs(out_dir)]:
        if os.path.exists(name):
            raise FileExistsError(
                f"compare: {name!r} exists and is never overwritten; pass another --out"
            )
    return names


def _steps_to(row: RunSummary) -> tuple[int | None, int | None]:
    return row.steps_to_target_accuracy, row.steps_to_target_loss


def _write(names: Sequence[str], markdown: str, rows: Sequence[RunSummary]) -> None:
    """compare.md and compare.csv (one row per run)."""
    with open(names[0], "w") as f:
        f.write(markdown + "\n")
    with open(names[1], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[x.name for x in dataclasses.fields(RunSummary)])
        writer.writeheader()
        for r in rows:
            writer.writerow(dataclasses.asdict(r))
