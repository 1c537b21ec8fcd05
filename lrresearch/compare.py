"""Compare runs: a table of outcomes and plots of LR, smoothed loss and gradient norm,
read from the event files with TensorBoard's own loader."""

from __future__ import annotations

import csv
import dataclasses
import glob
import os
from collections.abc import Sequence

import numpy as np
from tensorboard.backend.event_processing import event_accumulator as ea


@dataclasses.dataclass
class Series:
    steps: np.ndarray
    values: np.ndarray
    wall_times: np.ndarray


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


def _has_scalar(run: str, tag: str) -> bool:
    acc = ea.EventAccumulator(run, size_guidance={ea.TENSORS: 1})
    acc.Reload()
    return tag in acc.Tags()["tensors"]


def load(run: str) -> dict[str, Series]:
    import tensorflow as tf

    acc = ea.EventAccumulator(run, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        events = acc.Tensors(tag)
        out[tag] = Series(
            np.array([e.step for e in events]),
            np.array([float(tf.make_ndarray(e.tensor_proto)) for e in events]),
            np.array([e.wall_time for e in events]),
        )
    return out


def smooth(values: np.ndarray, beta: float = 0.98) -> np.ndarray:
    """Bias-corrected EMA (TensorBoard-like smoothing), NaN-tolerant."""
    out, ema, n = np.empty(len(values)), 0.0, 0
    for i, v in enumerate(values):
        if np.isfinite(v):
            n += 1
            ema = beta * ema + (1 - beta) * v
        out[i] = ema / (1 - beta**n) if n else np.nan
    return out


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


def summarize(
    run: str,
    series: dict[str, Series],
    target_accuracy: float,
    target_loss: float,
    change_pct: float,
) -> RunSummary:
    lr = series["lr"]
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
        lines.append("| " + " | ".join(fmt(v) for v in dataclasses.astuple(r)) + " |")
    return "\n".join(lines)


def plot(runs: Sequence[str], data: Sequence[dict[str, Series]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    panels = [
        ("lr", "learning rate (log)", True, False),
        ("loss/batch", "batch loss, smoothed (EMA 0.98)", False, True),
        ("grad/global_norm", "global gradient norm (log)", True, False),
    ]
    for ax, (tag, label, log, smoothed) in zip(axes, panels, strict=True):
        for run, series in zip(runs, data, strict=True):
            if tag not in series:
                continue
            s = series[tag]
            ax.plot(
                s.steps,
                smooth(s.values) if smoothed else s.values,
                label=os.path.basename(os.path.normpath(run)),
                linewidth=1.2,
            )
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("batch (step)")
    axes[0].legend(fontsize=7, loc="best")
    axes[0].set_title("lrresearch runs compared")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(
    paths: Sequence[str],
    out_dir: str,
    target_accuracy: float = 0.95,
    target_loss: float = 0.2,
    change_pct: float = 10.0,
) -> tuple[str, list[RunSummary]]:
    """Writes `compare.md`, `compare.csv` and `compare.png` into `out_dir` (created if
    needed; existing files of those names are an error). Returns the markdown."""
    runs = find_runs(paths)
    os.makedirs(out_dir, exist_ok=True)
    names = [os.path.join(out_dir, f"compare.{ext}") for ext in ("md", "csv", "png")]
    for name in names:
        if os.path.exists(name):
            raise FileExistsError(
                f"compare: {name!r} exists and is never overwritten; pass another --out"
            )
    data = [load(run) for run in runs]
    rows = [
        summarize(r, d, target_accuracy, target_loss, change_pct)
        for r, d in zip(runs, data, strict=True)
    ]
    markdown = table(rows, target_accuracy, target_loss, change_pct)
    with open(names[0], "w") as f:
        f.write(markdown + "\n")
    with open(names[1], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[x.name for x in dataclasses.fields(RunSummary)])
        writer.writeheader()
        for r in rows:
            writer.writerow(dataclasses.asdict(r))
    plot(runs, data, names[2])
    return markdown, rows
