"""The result page of tools/worked_study.py: the machine, versions and commands, then
the tables and plots that `lrresearch compare` and `lrresearch tune` wrote into the
study folder (copied, never recomputed), and a short answer read off them."""

from __future__ import annotations

import csv
import importlib.metadata
import math
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent
METRIC_COLUMN = "final_eval/accuracy"  # compare_groups.csv: _mean, _std, _count
GUIDE = "guide/worked-study.md"
# Two-sided 5% points of Student's t by whole degrees of freedom (more than 10: 10's).
T_5PCT = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


class Step(NamedTuple):
    """One command of the study and its wall time in seconds."""

    command: str
    seconds: float


def machine() -> str:
    """CPU model, logical cores and memory, from /proc (Linux) or `platform`."""
    model, memory = platform.processor() or platform.machine(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        )
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 2**20:.0f} GB"
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return (
        f"{model}, {os.cpu_count()} logical cores{memory}; {platform.system()} {platform.release()}"
    )


def versions() -> str:
    names = ("tensorflow", "keras", "tensorboard", "optuna")
    found = [f"{n} {importlib.metadata.version(n)}" for n in names]
    return f"Python {platform.python_version()}, " + ", ".join(found)


def commit() -> str:
    """The lrresearch commit, with `+ uncommitted changes` when the tree is dirty."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + (" + uncommitted changes" if dirty else "")


def first_table(text: str, after: str = "") -> str:
    """The first markdown table of `text` after the line starting with `after`."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(after)), 0) if after else 0
    rows: list[str] = []
    for line in lines[start:]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return "\n".join(rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def stats(row: dict[str, str]) -> tuple[float, float, int]:
    """`(mean, sample std, n)` of the final eval accuracy of a compare_groups.csv row."""
    std = row[f"{METRIC_COLUMN}_std"]
    return float(row[f"{METRIC_COLUMN}_mean"]), float(std) if std else math.nan, int(row["n"])


def difference(a: dict[str, str], b: dict[str, str]) -> str:
    """`a - b` of the group means in Welch's standard errors, and what that says at the
    two-sided 5% level of Student's t with Welch-Satterthwaite degrees of freedom
    (rounded down: conservative)."""
    (ma, sa, na), (mb, sb, nb) = stats(a), stats(b)
    va, vb = sa**2 / na, sb**2 / nb
    gap, se = ma - mb, math.sqrt(va + vb)
    df = max(1, int((va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))))
    critical = T_5PCT[min(df, len(T_5PCT)) - 1]
    if abs(gap) >= critical * se:
        verdict = f"beyond the 5% point of Welch's t, {df} df: {critical}"
    elif abs(gap) >= se:
        verdict = f"suggestive, inside the 5% point of Welch's t, {df} df: {critical}"
    else:
        verdict = "within the noise of these seeds"
    return f"{a['group']} - {b['group']} = {gap:+.3f} ({gap / se:+.1f} standard errors: {verdict})"


def answer(
    groups: list[dict[str, str]], sensitivity: list[dict[str, str]], n_seeds: int, mine: str
) -> str:
    """What the final table and the sensitivity table say, and no more: the ranking of
    the seed means with their std; the differences of `mine` (a group name) from each
    other method in standard errors; each strategy's best grid LR and the width of the
    LR range within 10% of its best."""
    ranked = sorted(groups, key=lambda r: -stats(r)[0])
    cells = [f"{r['group']} {stats(r)[0]:.3f} ± {stats(r)[1]:.3f}" for r in ranked]
    own = next(r for r in groups if r["group"] == mine)
    gaps = [difference(own, r) for r in ranked if r is not own]
    text = (
        f"At the tuned LRs, over {n_seeds} seeds not used for tuning, the final eval "
        f"accuracy (mean ± sample std, n = {ranked[0]['n']}) ranks {'; '.join(cells)}. "
        f"My rule against the others: {'; '.join(gaps)}. With n = {n_seeds} each std is "
        f"itself uncertain by about {1 / math.sqrt(2 * (n_seeds - 1)):.0%}, and one "
        "workload at one short budget says nothing about others."
    )
    grids: dict[str, list[float]] = {}
    for row in sensitivity:
        if row["lr"]:
            grids.setdefault(row["strategy"], []).append(float(row["lr"]))
    parts = []
    for row in {r["strategy"]: r for r in sensitivity}.values():
        name, lr = row["strategy"], row["best_lr"]
        if not lr:
            parts.append(f"{name}: tuning-free (no LR swept), {float(row['mean']):.3f}")
            continue
        edge = float(lr) in (min(grids[name]), max(grids[name]))
        parts.append(
            f"{name}: best grid LR {lr}"
            + (" (at the grid's edge: the best may lie beyond it)" if edge else "")
            + f", within 10% of its best over {float(row['decades_within_10pct']):.2f} decades"
        )
    if parts:
        text += " LR sensitivity (seed means on the grid): " + "; ".join(parts) + "."
    return text


def arithmetic(budget: Any, steps: list[Step]) -> str:
    """The budget: runs and batches per step, and the measured seconds per run."""
    grid, seeds = len(budget.grid), len(budget.sensitivity_seeds)
    sens = 2 * grid * seeds + seeds
    final = 3 * len(budget.final_seeds)
    runs = sens + 2 * budget.trials + final
    train_s = sum(s.seconds for s in steps if s.command.split()[1] in ("sweep", "tune"))
    return (
        f"{sens} sensitivity runs (2 methods x {grid} LRs x {seeds} seeds + Prodigy x "
        f"{seeds} seeds), 2 x {budget.trials} tune trials, {final} final runs (3 methods x "
        f"{len(budget.final_seeds)} seeds): {runs} runs of {budget.steps:,} batches "
        f"(batches of 100, eval every {budget.eval_every}), {runs * budget.steps:,} "
        f"batches in all; the training commands took {train_s:.0f} s, "
        f"{train_s / runs:.1f} s per run with start-up, tracing and evaluation."
    )


def copy_plots(folder: Path, images: Path) -> dict[str, str]:
    """Copies compare's PNGs next to the page; `{name: path relative to the page}`."""
    images.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, source in (
        ("compare", "final-compare/compare.png"),
        ("sensitivity", "sensitivity-compare/sensitivity.png"),
    ):
        shutil.copyfile(folder / source, images / f"{name}.png")
        out[name] = f"{images.name}/{name}.png"
    return out


def write_page(
    page: Path,
    folder: Path,
    budget: Any,
    steps: list[Step],
    best: dict[str, float],
    command: str,
    load: tuple[tuple[float, ...], tuple[float, ...]],
    total: float,
    note: str = "",
    sizing: str = "",
    code: str = "",
) -> None:
    """Writes the result page from the study folder's compare and tune outputs; `code`:
    the lrresearch commit the study started at (default: now, `commit()`)."""
    code = code or commit()  # before the plots overwrite committed copies
    plots = copy_plots(folder, page.parent / "worked-study")
    groups = read_csv(folder / "final-compare/compare_groups.csv")
    sens = read_csv(folder / "sensitivity-compare/sensitivity.csv")
    tune = {m: (folder / f"runs/tune-{m}/tune.md").read_text() for m in best}
    rows = "\n".join(f"| `{s.command}` | {s.seconds:.0f} |" for s in steps)
    loads = " / ".join(f"{a:.2f}, {b:.2f}" for a, b in zip(load[0], load[1], strict=True))
    lines = [
        "# Worked study: my rule against tuned warmup-cosine and Prodigy on MNIST-1D",
        "",
        "<!-- Written by `python tools/worked_study.py`; re-run it to refresh this page. -->",
        "",
        *([f"**{note}**", ""] if note else []),
        f"Written by `{command}` ([the guide]({GUIDE}) explains every step). "
        "Every table and plot below is copied from what `lrresearch compare` and "
        "`lrresearch tune` wrote into the study folder.",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {machine()}",
        f"- Versions: {versions()}; lrresearch {code}",
        f"- Study folder: `{folder}`",
        f"- Budget: {arithmetic(budget, steps)}",
        *([f"- Sizing: {sizing}."] if sizing else []),
        f"- Wall time: {total / 60:.1f} min; load average (1, 5, 15 min) start, end: {loads}",
        "",
        "## The answer",
        "",
        answer(groups, sens, len(budget.final_seeds), mine="mine"),
        "",
        "## Tuned comparison",
        "",
        "Tuned LRs (TPE on seed 0, the best COMPLETE trial of each `tune.md`): "
        + ", ".join(f"{m} {v:g}" for m, v in best.items())
        + "; Prodigy at its multiplier 1 (parameter-free).",
        "",
        first_table((folder / "final-compare/compare.md").read_text()),
        "",
        f"![group means with ± std bands]({plots['compare']})",
        "",
        "## LR sensitivity",
        "",
        (folder / "sensitivity-compare/sensitivity.md").read_text().strip(),
        "",
        f"![final eval/accuracy against the LR]({plots['sensitivity']})",
        "",
        "## Tune studies",
        "",
        *(part for m, text in tune.items() for part in (f"`{m}`:", "", first_table(text), "")),
        "## Commands and wall time",
        "",
        f"Run from the study folder (`cd {folder.name}`), in order:",
        "",
        "| command | seconds |",
        "|---|---:|",
        rows,
        "",
    ]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines))
