"""The MoMo authors' "LR insensitivity" claim, checked on this machine; written to
`docs/results-lr-insensitivity.md` (with a CSV of every run and a plot next to it).

The claim (Schaipp et al., ICML 2024): MoMo and MoMo-Adam keep their final accuracy over
four decades of LR where SGD-momentum and Adam collapse. The authors' record (MNIST, an
MLP with two hidden layers of 100, batches of 128, 10 epochs, a constant LR, 3 runs;
`fabian-sp/step-back`@6d033ec9, `configs/mnist_mlp.json` and `stepback/records/mnist_mlp.csv`):
MoMo 97.65-97.97% validation accuracy for every lr in 0.1..1000, SGD-M 9.8% at lr >= 10.

Here: the same grids of constant LRs, on the digits MLP (`base.gin`) and the MNIST-1D MLP
(`experiments/mnist1d_mlp.gin`), for SGD-M and Adam, MoMo and MoMo-Adam, and NGN and
AdaGrad-Norm (LR controllers on plain SGD; NGN-M, NGN with momentum 0.9, on Keras's
heavy ball) on SGD-M's grid; 3 seeds; the final
`eval/accuracy` read back from each run's event files with TensorBoard's loader.

Run: `python tools/lr_insensitivity.py` (`--jobs 2`; the runs and a JSON per finished
run stay under `--logdir`, so a second invocation trains only what is missing);
`--quick` trains a few short runs with one seed and only prints (`--page`: writes it too).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cached_runs
import numpy as np
from cached_runs import Result, Spec, cost_line, has_configurable, run_all

QUICK_NOTE = (
    "**A quick run** (`--quick`: a few short runs, one seed): a smoke test of "
    "the script, not the study; the study is the command without `--quick`."
)
PAGE, CSV, FIGURE = (f"docs/results-lr-insensitivity.{ext}" for ext in ("md", "csv", "png"))
SEEDS = (0, 1, 2)
METRIC, SKIPPED = "eval/accuracy", "guard/skipped"
TOLERANCE = 1.0  # percentage points: the "insensitivity" figure below
# The authors' grids (step-back configs/mnist_mlp.json): MoMo 1e-3..1e3, SGD-M 1e-3..1e2,
# Adam and MoMo-Adam 1e-4..10. SGD-M, NGN and AdaGrad-Norm run on MoMo's grid here.
SGD_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
ADAM_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
BETA = 0.9  # SGD-M's and MoMo's momentum (the authors')


def constant(optimizer: str, lr: float) -> tuple[str, ...]:
    return (f"Trainer.optimizer = {optimizer}", "Trainer.controller = @ConstantController()",
            f"ConstantController.lr = {lr!r}")  # fmt: skip


class Method(NamedTuple):
    """A method on the grid: the lrresearch class it needs (None: built in), its grid and
    its bindings at a grid LR."""

    label: str
    needs: str | None
    grid: tuple[float, ...]
    bindings: Callable[[float], tuple[str, ...]]


# One line per method; a method whose class is not in this lrresearch is listed on the
# page as not run. SGD-M is the authors' `torch.optim.SGD(lr, momentum=0.9, dampening=0.9)`
# (the buffer is an average of gradients, as MoMo's): with a constant LR that is
# Keras's SGD(momentum=0.9) at lr * (1 - 0.9), but for the first step (PyTorch's buffer
# starts at the first gradient undamped).
METHODS = {
    "sgdm": Method("SGD-M", None, SGD_GRID,
                   lambda lr: constant("'momentum'", round(lr * (1 - BETA), 12))),
    "momo": Method("MoMo", "MoMo", SGD_GRID, lambda lr: constant("@MoMo", lr)),
    "ngn": Method("NGN", "NGNController", SGD_GRID, lambda lr: (
        "Trainer.optimizer = 'sgd'", "Trainer.controller = @NGNController()",
        f"NGNController.lr = {lr!r}")),
    "ngn_m": Method("NGN-M", "NGNController", SGD_GRID, lambda lr: (
        "Trainer.optimizer = 'momentum'", "Trainer.controller = @NGNController()",
        f"NGNController.lr = {lr!r}", f"NGNController.momentum = {BETA}")),
    "adagrad_norm": Method("AdaGrad-Norm", "AdaGradNormController", SGD_GRID, lambda lr: (
        "Trainer.optimizer = 'sgd'", "Trainer.controller = @AdaGradNormController()",
        f"AdaGradNormController.lr = {lr!r}")),
    "adam": Method("Adam", None, ADAM_GRID, lambda lr: constant("'adam'", lr)),
    "momo_adam": Method("MoMo-Adam", "MoMoAdam", ADAM_GRID, lambda lr: constant("@MoMoAdam", lr)),
}  # fmt: skip

# The authors' final (epoch 10) validation accuracy in %, mean of 3 runs, from
# fabian-sp/step-back@6d033ec9 stepback/records/mnist_mlp.csv.
AUTHORS = {
    "momo": {1e-3: 87.05, 1e-2: 94.72, 0.1: 97.65, 1: 97.97, 10: 97.92, 100: 97.92, 1000: 97.92},
    "sgdm": {1e-3: 87.05, 1e-2: 94.73, 0.1: 97.73, 1: 97.08, 10: 9.8, 100: 9.8},
    "adam": {1e-4: 95.98, 1e-3: 97.75, 1e-2: 96.46, 0.1: 10.03, 1: 10.01, 10: 9.92},
    "momo_adam": {1e-4: 95.98, 1e-3: 97.87, 1e-2: 97.96, 0.1: 97.95, 1: 97.95, 10: 97.95},
}


class Workload(NamedTuple):
    name: str
    gin_file: str
    steps: int


def workloads(quick: bool) -> dict[str, Workload]:
    return {
        "digits": Workload("digits MLP (`base.gin`: 8x8 digits, hidden 128, batches of 64)",
                           "base.gin", 100 if quick else 2000),
        "mnist1d": Workload("MNIST-1D MLP (`experiments/mnist1d_mlp.gin`: hidden 100, "
                            "batches of 100)", "experiments/mnist1d_mlp.gin",
                            300 if quick else 6000),
    }  # fmt: skip


def common(w: Workload) -> tuple[str, ...]:
    """Bindings of every run: the workload's length, one evaluation at the end, and the
    non-finite guard keeping the grid's LR (no LR cut per skipped batch) and never
    stopping the run, so a diverged run ends with its last finite weights evaluated."""
    return (f"Trainer.steps = {w.steps}", "Trainer.eval_every = 0",
            "Trainer.histogram_every = 0", "Trainer.checkpoint_every = 0",
            f"Trainer.max_consecutive_nonfinite = {w.steps}",
            "Trainer.nonfinite_lr_factor = 1.0")  # fmt: skip


def run_name(workload: str, method: str, lr: float, seed: int) -> str:
    return f"{workload}-{method}-lr{lr:g}-s{seed}"


def specs(ws: dict[str, Workload], methods: Sequence[str], seeds: Sequence[int]) -> list[Spec]:
    """The runs in the order they are trained: a workload's every run before the next
    one's, and within a workload one seed of every cell before the next seed (a run cut
    short by `--minutes` leaves whole workloads and whole seeds)."""
    return [
        Spec(run_name(wk, mk, lr, s), w.gin_file, (*common(w), *METHODS[mk].bindings(lr)), s)
        for wk, w in ws.items() for s in seeds for mk in methods for lr in METHODS[mk].grid
    ]  # fmt: skip


def available(methods: Sequence[str]) -> tuple[list[str], list[str]]:
    """`(methods this lrresearch has, those whose class it lacks)`."""
    has = {m: has_configurable(METHODS[m].needs) for m in methods}
    return [m for m in methods if has[m]], [m for m in methods if not has[m]]


def insensitive_range(
    lrs: Sequence[float], means: Sequence[float], tolerance: float = TOLERANCE
) -> tuple[float, float, float]:
    """The LR range over which a method stays within `tolerance` percentage points of
    its best: the longest run of consecutive grid LRs (sorted) that contains the LR of
    the best mean accuracy and whose means are all >= best - tolerance (NaN counts as
    below). Returns `(lowest LR, highest LR, decades = log10(highest / lowest))`."""
    order = np.argsort(lrs)
    lr = np.asarray(lrs, np.float64)[order]
    mean = np.nan_to_num(np.asarray(means, np.float64)[order], nan=-np.inf)
    best = int(np.argmax(mean))
    ok = mean >= mean[best] - tolerance
    lo = hi = best
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    while hi < len(lr) - 1 and ok[hi + 1]:
        hi += 1
    return float(lr[lo]), float(lr[hi]), float(math.log10(lr[hi] / lr[lo]))


class Cell(NamedTuple):
    """One method at one LR on one workload: per-seed final accuracy (%) and the
    batches the non-finite guard skipped, summed over seeds."""

    accuracy: list[float]
    skipped: float
    seeds: int  # the seeds asked for; `accuracy` may hold fewer

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracy)) if self.accuracy else math.nan


def cells(results: dict[str, Result], workload: str, method: str, seeds) -> dict[float, Cell]:
    out = {}
    for lr in METHODS[method].grid:
        runs = [results.get(run_name(workload, method, lr, s)) for s in seeds]
        runs = [r for r in runs if r is not None and METRIC in r.series]
        accuracy = [100 * r.last(METRIC)[1] for r in runs]
        out[lr] = Cell(accuracy, sum(r.total(SKIPPED) for r in runs), len(seeds))
    return out


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    if not cell.accuracy:
        return "not run"
    mark = f" ({cell.skipped:.0f} skipped)" if cell.skipped else ""
    if len(cell.accuracy) < cell.seeds:
        mark += f" ({len(cell.accuracy)} of {cell.seeds} seeds)"
    return f"{np.mean(cell.accuracy):.1f} +- {np.std(cell.accuracy):.1f}{mark}"


def grid_table(table: dict[str, dict[float, Cell]]) -> list[str]:
    """Rows: every LR of any grid; columns: the methods; cells: mean +- std of the final
    accuracy (%) over seeds, with the non-finite batches the guard skipped."""
    lrs = sorted({lr for row in table.values() for lr in row})
    lines = ["| lr | " + " | ".join(METHODS[m].label for m in table) + " |",
             "|---:|" + "---:|" * len(table)]  # fmt: skip
    for lr in lrs:
        lines.append(
            f"| {lr:g} | " + " | ".join(_cell_text(row.get(lr)) for row in table.values()) + " |"
        )
    return lines


def ranges(table: dict[str, dict[float, Cell]]) -> dict[str, tuple[float, float, float, float]]:
    """Per method with every LR run: `(best LR, lowest LR, highest LR, decades)`."""
    out = {}
    for method, row in table.items():
        if all(len(c.accuracy) == c.seeds for c in row.values()):
            lrs, means = list(row), [c.mean for c in row.values()]
            out[method] = (lrs[int(np.nanargmax(means))], *insensitive_range(lrs, means))
    return out


def _decades(decades: float) -> str:
    return f"{decades:g} decade" + ("" if decades == 1 else "s")


def range_table(table: dict[str, dict[float, Cell]]) -> list[str]:
    lines = [f"| method | best lr | its accuracy, % | LRs within {TOLERANCE:g} point of it | "
             "decades | the authors' (MNIST MLP) |", "|---|---:|---:|---|---:|---|"]  # fmt: skip
    for method, (best, lo, hi, decades) in ranges(table).items():
        theirs = ""
        if method in AUTHORS:
            a = AUTHORS[method]
            a_lo, a_hi, a_dec = insensitive_range(list(a), list(a.values()))
            theirs = f"{a_lo:g}..{a_hi:g} ({_decades(a_dec)})"
        lines.append(f"| {METHODS[method].label} | {best:g} | {_cell_text(table[method][best])} | "
                     f"{lo:g}..{hi:g} | {decades:g} | {theirs} |")  # fmt: skip
    return lines


def comparison(tables: dict[str, dict[str, dict[float, Cell]]], ws: dict[str, Workload]) -> str:
    """One paragraph: each workload's ranges next to the authors' and SGD-M at lr >= 10."""
    parts = []
    for wk, table in tables.items():
        r = ranges(table)
        said = [f"{METHODS[m].label} {r[m][3]:g}" for m in METHODS if m in r]
        sgdm = table.get("sgdm", {})
        high = [c.mean for lr, c in sgdm.items() if lr >= 10 and c.accuracy]
        tail = f"; SGD-M at lr >= 10 ends at {min(high):.1f}-{max(high):.1f}%" if high else ""
        parts.append(
            f"on the {ws[wk].name.split(' (')[0]}, the decades within "
            f"{TOLERANCE:g} point of the best are {', '.join(said) or 'none yet'}{tail}"
        )
    authors = {m: insensitive_range(list(a), list(a.values()))[2] for m, a in AUTHORS.items()}
    return ("**Against the authors' record.** In the authors' MNIST runs the decades within "
            f"{TOLERANCE:g} point of the best are "
            + ", ".join(f"{METHODS[m].label} {d:g}" for m, d in authors.items())
            + " (MoMo 97.65-97.97% for every lr in 0.1..1000; SGD-M 9.8% at lr 10 and 100, "
            "where its loss became NaN). Here, " + "; ".join(parts) + ".")  # fmt: skip


def write_csv(results: dict[str, Result], ws, methods, seeds, logdir: str, path: str) -> None:
    """Every run: its directory under the logdir, the step and value of its last
    `eval/accuracy` and its last `guard/skipped`, read from its event files."""
    import csv

    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["workload", "method", "lr", "seed", "run_dir", "step", "eval_accuracy",
                      "guard_skipped", "seconds"])  # fmt: skip
        for wk in ws:
            for mk in methods:
                for lr in METHODS[mk].grid:
                    for seed in seeds:
                        r = results.get(run_name(wk, mk, lr, seed))
                        if r is None or METRIC not in r.series:
                            continue
                        step, value = r.last(METRIC)
                        out.writerow([wk, mk, f"{lr:g}", seed, os.path.relpath(r.run_dir, logdir),
                                      step, repr(value), f"{r.total(SKIPPED):.0f}",
                                      f"{r.seconds:.1f}"])  # fmt: skip


def plot(tables: dict[str, dict[str, dict[float, Cell]]], ws, path: str) -> None:
    """Final accuracy against the LR (log x), one panel per workload and one with the
    authors' MNIST record; mean over seeds with +- std bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(ws[wk].name.split(" (")[0], t) for wk, t in tables.items()]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5 * (len(panels) + 1), 4), sharey=True)
    for ax, (title, table) in zip(axes, panels, strict=False):
        for mk, row in table.items():
            done = [(lr, c) for lr, c in row.items() if c.accuracy]
            if done:
                ax.errorbar([lr for lr, _ in done], [c.mean for _, c in done],
                            [np.std(c.accuracy) for _, c in done], marker="o", capsize=3,
                            label=METHODS[mk].label)  # fmt: skip
        ax.set_title(title)
    for mk, row in AUTHORS.items():
        axes[-1].plot(list(row), list(row.values()), marker="o", label=METHODS[mk].label)
    axes[-1].set_title("the authors' record (MNIST MLP)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("lr (constant)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("final eval/accuracy, %")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def page(tables, ws, seeds, missing, errors, logdir: str, seconds: dict[str, list[float]]) -> str:
    lines = [__doc__.split("\n\n", 1)[1].split("\nRun:")[0].strip(), ""]
    lines += [
        f"Every run trains with a constant LR (the authors' runs used `lr_schedule: constant`), "
        f"seeds {list(seeds)}; the cell is the mean +- std (`np.std`, ddof 0) over seeds of "
        "the **last "
        f"`{METRIC}`**, logged at the run's last batch (step `Trainer.steps - 1`), in %. "
        "The non-finite guard keeps the grid's LR (`Trainer.nonfinite_lr_factor = 1.0`) and "
        "never stops a run (`Trainer.max_consecutive_nonfinite = Trainer.steps`): where the "
        "authors' PyTorch run turned NaN, ours skips the batch, and a diverged run is "
        "evaluated on its last finite weights; '(n skipped)' is the last `guard/skipped` "
        "summed over the seeds. SGD-M is the authors' `torch.optim.SGD(lr, momentum=0.9, "
        "dampening=0.9)`, run as Keras's `SGD(momentum=0.9)` at lr x 0.1 (the same steps "
        "at a constant LR, but for the first: PyTorch's buffer starts at the whole first "
        "gradient, Keras's at a tenth of it); MoMo, MoMo-Adam, NGN, NGN-M and AdaGrad-Norm "
        "at their defaults but the LR (MoMo's lower bound 0, no online estimate, as the authors' "
        "MNIST runs).",
        "",
        "The grids (constant LRs): MoMo, SGD-M, NGN, NGN-M, AdaGrad-Norm "
        + ", ".join(f"{lr:g}" for lr in SGD_GRID)
        + " (the authors': MoMo 0.001..1000, SGD-M 0.001..100); Adam and MoMo-Adam "
        + ", ".join(f"{lr:g}" for lr in ADAM_GRID)
        + " (the authors' own).",
        "",
        f"**Insensitivity** (defined once, `insensitive_range` in `tools/lr_insensitivity.py`): "
        f"the longest run of consecutive grid LRs that holds a method's best LR and whose "
        f"mean accuracy stays within {TOLERANCE:g} percentage point of the best mean; reported "
        "as that LR range and its width in decades (log10 of highest / lowest).",
        "",
        f"The runs are under `{logdir}` (git-ignored; "
        "`<logdir>/<workload>-<method>-lr<lr>-s<seed>`), every run's value in "
        f"[`{os.path.basename(CSV)}`]({os.path.basename(CSV)}); "
        f"the plot: [`{os.path.basename(FIGURE)}`]({os.path.basename(FIGURE)}).",
        "",
    ]
    for wk, table in tables.items():
        cost = (
            f" ({len(seconds[wk])} runs, {np.mean(seconds[wk]):.0f} s each)" if seconds[wk] else ""
        )
        lines += [f"## {ws[wk].name}, {ws[wk].steps:,} batches{cost}", "", *grid_table(table), "",
                  *range_table(table), ""]  # fmt: skip
    lines += [comparison(tables, ws), "", f"![accuracy against LR]({os.path.basename(FIGURE)})", ""]
    if missing:
        lines.append(
            "Not run (their class is not in this lrresearch yet): "
            + ", ".join(f"{METHODS[m].label} (`{METHODS[m].needs}`)" for m in missing)
            + "."
        )
    for name, error in errors.items():
        lines.append(f"- run `{name}` failed: {error}")
    return "\n".join(lines)


def main() -> None:
    parser = cached_runs.arguments(__doc__.splitlines()[0], "lr_insensitivity")
    parser.add_argument(
        "--workloads",
        default="digits,mnist1d",
        help="comma-separated, of: " + ", ".join(workloads(False)),
    )
    args = parser.parse_args()
    seeds = SEEDS[:1] if args.quick else SEEDS
    logdir = cached_runs.logdir(args, "lr_insensitivity")
    ws = {k: v for k, v in workloads(args.quick).items() if k in args.workloads.split(",")}
    methods, missing = available(list(METHODS))
    start = time.perf_counter()
    wanted = specs(ws, methods, seeds)
    results, errors = run_all(wanted, logdir, (METRIC, SKIPPED), args.jobs, minutes=args.minutes)
    tables = {wk: {m: cells(results, wk, m, seeds) for m in methods} for wk in ws}
    run_seconds = {
        wk: [r.seconds for n, r in results.items() if n.startswith(f"{wk}-")] for wk in ws
    }
    text = page(tables, ws, seeds, missing, errors, logdir, run_seconds)
    text += "\n\n" + cost_line(results, wanted, errors, args.minutes)
    if args.quick:
        text = QUICK_NOTE + "\n\n" + text
    print(text)
    if args.page or not args.quick:
        from measured_page import write_page

        seconds = time.perf_counter() - start
        # The page first: its header names the commit, clean until the CSV and plot change.
        print("wrote", write_page(PAGE, "LR insensitivity", text, seconds))
        write_csv(results, ws, methods, seeds, logdir, CSV)
        plot(tables, ws, FIGURE)


if __name__ == "__main__":
    main()
