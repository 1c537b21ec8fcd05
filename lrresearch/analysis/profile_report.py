"""The report of `lrresearch profile`: one `OverheadRow` per timed variant, written as
`overhead.csv`, `overhead.md` (`format_table`) and `overhead.png` (`plot`)."""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np


@dataclasses.dataclass
class OverheadRow:
    """One row of the overhead table; times in microseconds per batch."""

    controller: str
    summaries: bool
    step_us: float
    baseline_step_us: float
    ratio: float
    ratio_low: float
    ratio_high: float
    controller_us: float
    summaries_us: float
    steps_per_loop: int
    device: str
    xla: bool = False
    extra_state_bytes: int = 0  # optimizer and controller state beyond the baseline's
    weight_bytes: int = 0  # the model's trainable weights

    @property
    def weight_copies(self) -> float:
        """The extra state in copies of the model's trainable weights (`weight_copies`)."""
        return weight_copies(self.extra_state_bytes, self.weight_bytes)


def weight_copies(extra_state_bytes: int, weight_bytes: int) -> float:
    """Memory in copies of the model's trainable weights: `extra_state_bytes /
    weight_bytes` (Adam's two moments: 2.0, plus its few scalars); NaN when the weights'
    size is unknown (0)."""
    return extra_state_bytes / weight_bytes if weight_bytes else float("nan")


def write_reports(rows: list[OverheadRow], out_dir: str) -> str:
    """Writes `overhead.csv`, `overhead.md` and `overhead.png`; returns the markdown."""
    fields = [f.name for f in dataclasses.fields(OverheadRow)] + ["weight_copies"]
    with open(os.path.join(out_dir, "overhead.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({**dataclasses.asdict(row), "weight_copies": row.weight_copies})
    markdown = format_table(rows)
    with open(os.path.join(out_dir, "overhead.md"), "w") as f:
        f.write(markdown + "\n")
    plot(rows, os.path.join(out_dir, "overhead.png"))
    return markdown


def format_table(rows: list[OverheadRow]) -> str:
    """The overhead table as markdown (one row per controller)."""
    head = (
        "| controller | summaries | XLA | us/batch | baseline us/batch | ratio "
        "| 95% CI of ratio | controller ops us/batch | summary ops us/batch "
        "| extra state, KiB | extra state, weight copies |\n"
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r.controller} | {'yes' if r.summaries else 'no'} | "
            f"{'yes' if r.xla else 'no'} | {r.step_us:.1f} | "
            f"{r.baseline_step_us:.1f} | {r.ratio:.3f} | [{r.ratio_low:.3f}, "
            f"{r.ratio_high:.3f}] | {r.controller_us:.1f} | {r.summaries_us:.1f} | "
            f"{r.extra_state_bytes / 1024:.1f} | {r.weight_copies:.1f}x |"
        )
    if rows:
        lines.append(
            f"\nDevice: {rows[0].device}; {rows[0].steps_per_loop} batches per compiled call; "
            "baseline: ConstantController without summaries, without XLA, with the gin config's "
            "optimizer. extra state: bytes of optimizer and controller variables beyond the "
            "baseline's (slots, DoG's x_0 copy, ...); in weight copies: divided by the bytes "
            "of the model's trainable weights (Adam: 2.0x). ratio = median over "
            "rounds of (block time / mean of the two baseline blocks around it). Summaries "
            "are the buffered per-batch log (`lrresearch.logs.rows`): a block's time includes "
            "waiting for its last block to be written."
        )
    return "\n".join(lines)


def plot(rows: list[OverheadRow], path: str) -> None:
    """Dot plot of the ratios with their 95% intervals (a dot plot, not bars from zero,
    so differences of a few percent stay visible)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        r.controller + (" (XLA)" if r.xla else "") + ("" if r.summaries else " (no summaries)")
        for r in rows
    ]
    ratios = np.array([r.ratio for r in rows])
    lows, highs = np.array([r.ratio_low for r in rows]), np.array([r.ratio_high for r in rows])
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.6))
    y = np.arange(len(rows))
    ax.errorbar(
        ratios, y, xerr=[ratios - lows, highs - ratios], fmt="o", color="#4c72b0", capsize=4
    )
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    span = max(highs.max(), 1.0) - min(lows.min(), 1.0)
    ax.set_xlim(min(lows.min(), 1.0) - 0.05 * span, max(highs.max(), 1.0) + 0.25 * span)
    for yi, ratio, high in zip(y, ratios, highs, strict=True):
        ax.text(high + 0.02 * span, yi, f"{ratio:.3f}", va="center", fontsize=8)
    ax.set_xlabel("time per batch / constant LR without summaries (1.0 = no overhead)")
    if rows:
        ax.set_title(
            f"Per-batch overhead, with per-batch summaries, "
            f"{rows[0].steps_per_loop} batches per call\n{rows[0].device}",
            fontsize=9,
        )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
