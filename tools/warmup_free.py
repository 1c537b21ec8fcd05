"""The "warmup-free" claim of Schedule-Free RAdam, checked on the byte-level transformer;
written to `docs/results-warmup-free.md` (with a CSV of every run and a plot next to it).

The claim (facebookresearch/schedule_free, `radam_schedulefree.py`): Schedule-Free RAdam
needs no LR warmup. Four arms on `experiments/stdlib_transformer.gin`, configured as
`tools/workload_results.py` runs its "Schedule-Free AdamW (lr 0.003, 10% warmup)" row
(400 batches, LR 0.003 tuned there for warmup-cosine, a constant controller): that row
itself; Schedule-Free AdamW without warmup, the control that shows what warmup buys;
Schedule-Free RAdam without warmup at the same LR; and at that grid's next LR, 0.01,
because RAdam's rectification multiplies the LR by a factor that grows from 0 over
thousands of batches (the step applied is read back as `optimizer/effective_lr`).
3 seeds; the final
`eval/bits_per_byte` and the loss of every batch (`loss/batch`, the first 100 batches
plotted, spikes counted by `workload_results.spikes`), read back from each run's event
files with TensorBoard's loader.

Run: `python tools/warmup_free.py` (`--jobs 2`; the runs and a JSON per finished run stay
under `--logdir`, so a second invocation trains only what is missing); `--quick` trains
a few short runs with one seed and only prints (`--page`: writes it too).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cached_runs
import numpy as np
import workload_results
from cached_runs import Result, Spec, cost_line, has_configurable, run_all

QUICK_NOTE = (
    "**A quick run** (`--quick`: a few short runs, one seed): a smoke test of "
    "the script, not the study; the study is the command without `--quick`."
)
PAGE, CSV, FIGURE = (f"docs/results-warmup-free.{ext}" for ext in ("md", "csv", "png"))
SEEDS = (0, 1, 2)
LOSS, METRIC, SKIPPED = "loss/batch", "eval/bits_per_byte", "guard/skipped"
EFFECTIVE = "optimizer/effective_lr"  # the step size the optimizer applied, per batch
PEAK = 3e-3  # the warmup-cosine peak tuned in tools/workload_results.py
HIGHER = 1e-2  # the next LR of workload_results' grid: RAdam's rectification is a ramp
EARLY = 100  # batches: the start of training, where warmup acts
ROW = "Schedule-Free AdamW (lr 0.003, 10% warmup)"  # workload_results' row
CONSTANT = ("Trainer.controller = @ConstantController()", f"ConstantController.lr = {PEAK}")


def arms(steps: int) -> dict[str, tuple[str, str | None, tuple[str, ...]]]:
    """`{key: (label, the class it needs or None, bindings)}`; the first is
    workload_results' row, taken from there."""
    row = workload_results.parameter_free_rules(steps, PEAK)[ROW]
    return {
        "sf_adamw_warmup": (f"Schedule-Free AdamW, {steps // 10} batches of warmup", None, row),
        "sf_adamw": ("Schedule-Free AdamW, no warmup", None, (
            "Trainer.optimizer = @ScheduleFreeAdamW", "ScheduleFreeAdamW.warmup_steps = 0",
            *CONSTANT)),
        "sf_radam": ("Schedule-Free RAdam, no warmup", "ScheduleFreeRAdam", (
            "Trainer.optimizer = @ScheduleFreeRAdam", *CONSTANT)),
        "sf_radam_higher": (f"Schedule-Free RAdam, no warmup, lr {HIGHER:g}",
                            "ScheduleFreeRAdam", (
            "Trainer.optimizer = @ScheduleFreeRAdam", CONSTANT[0],
            f"ConstantController.lr = {HIGHER}")),
    }  # fmt: skip


def specs(keys: Sequence[str], w: workload_results.Workload, seeds: Sequence[int]) -> list[Spec]:
    table = arms(w.steps)
    return [
        Spec(f"lm-{k}-s{s}", w.gin_file, (*w.common, *table[k][2]), s) for k in keys for s in seeds
    ]


def early_windows(loss: np.ndarray, width: int = 10) -> np.ndarray:
    """Mean `loss/batch` over consecutive windows of `width` batches of the first
    `EARLY` batches (fewer in a shorter run): shape `[min(EARLY, len(loss)) // width]`."""
    n = min(EARLY, len(loss)) // width * width
    return np.asarray(loss[:n], np.float64).reshape(-1, width).mean(axis=1)


def _mean_std(values: Sequence[float], digits: int = 3) -> str:
    return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}"


def table(runs: dict[str, list[Result]], labels: dict[str, str]) -> list[str]:
    lines = [f"| arm | final {METRIC} | per seed | loss spikes per run, all / first {EARLY} "
             f"batches | mean loss/batch of batches 0-{EARLY - 1} | s per run |",
             "|---|---:|---|---:|---:|---:|"]  # fmt: skip
    for key, results in runs.items():
        finals = [r.last(METRIC)[1] for r in results]
        losses = [r.series[LOSS][1] for r in results]
        lines.append(
            f"| {labels[key]} | {_mean_std(finals)} | {', '.join(f'{v:.3f}' for v in finals)} | "
            f"{np.mean([workload_results.spikes(x) for x in losses]):.1f} / "
            f"{np.mean([workload_results.spikes(x[:EARLY]) for x in losses]):.1f} | "
            f"{_mean_std([np.mean(x[:EARLY]) for x in losses], 3)} | "
            f"{np.mean([r.seconds for r in results]):.0f} |"
        )
    return lines


def window_table(runs: dict[str, list[Result]], labels: dict[str, str]) -> list[str]:
    """The early loss curve: mean `loss/batch` (nats) per 10 batches, mean over seeds."""
    lines = [f"| batches | {' | '.join(labels[k] for k in runs)} |", "|---|" + "---:|" * len(runs)]
    means = {
        k: np.mean([early_windows(r.series[LOSS][1]) for r in rs], 0) for k, rs in runs.items()
    }
    for i in range(len(next(iter(means.values())))):
        lines.append(
            f"| {10 * i}-{10 * i + 9} | " + " | ".join(f"{m[i]:.3f}" for m in means.values()) + " |"
        )
    return lines


def effective_table(runs: dict[str, list[Result]], labels: dict[str, str]) -> list[str]:
    """The step size each arm applied (`optimizer/effective_lr`, mean over seeds) at a
    few batches and on average over the run: warmup's ramp, and RAdam's rectification."""
    steps = [
        b
        for b in (0, 4, 10, 40, 100, 200, 399)
        if b < len(next(iter(runs.values()))[0].series[LOSS][1])
    ]
    lines = ["| arm | " + " | ".join(f"batch {b}" for b in steps) + " | mean over the run |",
             "|---|" + "---:|" * (len(steps) + 1)]  # fmt: skip
    for key, results in runs.items():
        if not all(EFFECTIVE in r.series for r in results):
            continue
        lr = np.mean([r.series[EFFECTIVE][1] for r in results], axis=0)
        cells = [f"{lr[b]:.3g}" for b in steps] + [f"{lr.mean():.3g}"]
        lines.append(f"| {labels[key]} | " + " | ".join(cells) + " |")
    return [*lines, "", ramp_sentence(runs, labels)]


def ramp_sentence(runs: dict[str, list[Result]], labels: dict[str, str]) -> str:
    """Each arm's mean step over the run as a multiple of the first arm's."""
    mean = {k: float(np.mean([r.series[EFFECTIVE][1].mean() for r in rs]))
            for k, rs in runs.items() if all(EFFECTIVE in r.series for r in rs)}  # fmt: skip
    if not mean:
        return ""
    (base_key, base), *others = mean.items()
    return (f"Mean step over the run, as a multiple of {labels[base_key]}'s ({base:.3g}): "
            + "; ".join(f"{labels[k]} {v / base:.2f}x" for k, v in others) + ".")  # fmt: skip


def verdict(runs: dict[str, list[Result]], labels: dict[str, str]) -> str:
    """One sentence per arm against the first: the difference of the mean final metric
    and the seeds' spread (std of each arm, in quadrature)."""
    finals = {k: np.array([r.last(METRIC)[1] for r in rs]) for k, rs in runs.items()}
    (base_key, base), *others = finals.items()
    lines = [f"Against {labels[base_key]} ({base.mean():.3f}):"]
    for key, values in others:
        diff, spread = values.mean() - base.mean(), float(np.hypot(values.std(), base.std()))
        where = "within" if abs(diff) <= spread else "beyond"
        better = "better" if diff < 0 else "worse"
        lines.append(f"- {labels[key]}: {diff:+.3f} bits/byte ({better}, {where} the seeds' "
                     f"spread of {spread:.3f}).")  # fmt: skip
    return "\n".join(lines)


def write_csv(runs: dict[str, list[Result]], logdir: str, path: str) -> None:
    """Every run: directory, seed, the step and value of its last `eval/bits_per_byte`,
    its spikes, its last `guard/skipped`, read from its event files."""
    import csv

    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["arm", "seed", "run_dir", "step", "eval_bits_per_byte", "spikes",
                      f"spikes_first_{EARLY}", "guard_skipped", "seconds"])  # fmt: skip
        for key, results in runs.items():
            for r in results:
                loss = r.series[LOSS][1]
                out.writerow([key, r.spec.seed, os.path.relpath(r.run_dir, logdir),
                              r.last(METRIC)[0], repr(r.last(METRIC)[1]),
                              workload_results.spikes(loss), workload_results.spikes(loss[:EARLY]),
                              f"{r.total(SKIPPED):.0f}", f"{r.seconds:.1f}"])  # fmt: skip


def plot(runs: dict[str, list[Result]], labels: dict[str, str], path: str) -> None:
    """`loss/batch` of the first `EARLY` batches (each seed thin, the mean thick) and
    `eval/bits_per_byte` at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (early, evals) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (key, results) in enumerate(runs.items()):
        color = f"C{i}"
        for r in results:
            early.plot(r.series[LOSS][1][:EARLY], color=color, alpha=0.3, lw=0.8)
        early.plot(np.mean([r.series[LOSS][1][:EARLY] for r in results], 0), color=color,
                   lw=2, label=labels[key])  # fmt: skip
        steps = results[0].series[METRIC][0]
        values = np.array([r.series[METRIC][1] for r in results])
        evals.errorbar(steps, values.mean(0), values.std(0), color=color, marker="o",
                       capsize=3, label=labels[key])  # fmt: skip
    early.set(xlabel="batch", ylabel="loss/batch (nats)", title=f"first {EARLY} batches")
    evals.set(xlabel="batch", ylabel=METRIC, title="evaluations (mean +- std over seeds)")
    for ax in (early, evals):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def page(runs, labels, w, seeds, missing, errors, logdir: str) -> str:
    lines = [__doc__.split("\n\n", 1)[1].split("\nRun:")[0].strip(), ""]
    lines += [
        f"{w.steps} batches, seeds {list(seeds)} (mean +- std over them, `np.std`, ddof 0); "
        "the reported value is the **last "
        f"`{METRIC}`**, logged at step {w.steps - 1} (the trainer evaluates Schedule-Free's "
        "averaged weights, `x`). The same configuration's row in "
        "[results-workloads.md](results-workloads.md) (the byte-level transformer table) is "
        "the first arm, trained again here. Shared bindings: "
        + ", ".join(f"`{b}`" for b in w.common)
        + ".",
        "",
        workload_results.spike_definition(),
        "",
        f"The runs are under `{logdir}` (git-ignored; `<logdir>/lm-<arm>-s<seed>`), every "
        f"run's values in [`{os.path.basename(CSV)}`]({os.path.basename(CSV)}).",
        "",
    ]
    if runs:
        lines += [*table(runs, labels), "", verdict(runs, labels), "",
                  f"The step size applied (`{EFFECTIVE}`, mean over seeds):", "",
                  *effective_table(runs, labels), "",
                  f"Mean `loss/batch` (nats) per 10 batches over the first {EARLY}, mean over "
                  "seeds:", "", *window_table(runs, labels), "",
                  f"![loss curves]({os.path.basename(FIGURE)})", ""]  # fmt: skip
    for key, needs in missing.items():
        lines.append(f"Not run: {labels[key]} (`{needs}` is not in this lrresearch yet).")
    for name, error in errors.items():
        lines.append(f"- run `{name}` failed: {error}")
    return "\n".join(lines)


def main() -> None:
    args = cached_runs.arguments(__doc__.splitlines()[0], "warmup_free").parse_args()
    seeds = SEEDS[:1] if args.quick else SEEDS
    logdir = cached_runs.logdir(args, "warmup_free")
    w = workload_results.workloads(args.quick)["lm"]
    table_ = arms(w.steps)
    labels = {k: v[0] for k, v in table_.items()}
    missing = {k: v[1] for k, v in table_.items() if not has_configurable(v[1])}
    keys = [k for k in table_ if k not in missing]
    start = time.perf_counter()
    wanted = specs(keys, w, seeds)
    results, errors = run_all(wanted, logdir, (LOSS, METRIC, SKIPPED, EFFECTIVE), args.jobs,
                              whole=(LOSS, METRIC, EFFECTIVE), minutes=args.minutes)  # fmt: skip
    runs = {
        k: [results[f"lm-{k}-s{s}"] for s in seeds]
        for k in keys
        if all(f"lm-{k}-s{s}" in results for s in seeds)
    }
    text = page(runs, labels, w, seeds, missing, errors, logdir)
    text += "\n\n" + cost_line(results, wanted, errors, args.minutes)
    if args.quick:
        text = QUICK_NOTE + "\n\n" + text
    print(text)
    if args.page or not args.quick:
        from measured_page import write_page

        # The page first: its header names the commit, clean until the CSV and plot change.
        print("wrote", write_page(PAGE, "Warmup-free", text, time.perf_counter() - start))
        write_csv(runs, logdir, CSV)
        plot(runs, labels, FIGURE)


if __name__ == "__main__":
    main()
