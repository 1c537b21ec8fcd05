"""Per-batch LR rules on the two research workloads, with 3 seeds, and one question
answered; written to `docs/results-workloads.md`.

1. MNIST-1D against the paper (Greydanus & Kobak): the paper's CNN (`ConvBase`, no
   BatchNorm), our default CNN with BatchNorm, and the paper's MLP (hidden 100, and 256
   as in the repository's `get_model_args`), with Keras's and PyTorch's default
   initialization, all with the paper's Adam at a constant 1e-2, batches of 100, 6,000
   batches; final test accuracy.
2. Every kind of rule on the byte-level transformer (`experiments/
   stdlib_transformer.gin`) and the MNIST-1D CNN (`experiments/mnist1d_cnn.gin`):
   warmup-cosine tuned over a small grid of peak LRs (seed 0, then 3 seeds at the best
   peak), the three seed rules, OneCycle, hypergradient (Adam-HD) and Polyak (SGD, the
   method's own optimizer). Final `eval/bits_per_byte` or test accuracy (mean +- std)
   and loss spikes (`spikes` below).
3. A question: Adam at the paper's constant 1e-2 spikes once the CNN fits its training
   set; does gradient clipping, the grad-norm rule (alone, as a factor on the constant
   LR, or smoothed by `MaxChange`) or a cosine decay remove the spikes, and at what
   cost in test accuracy?

Runs go to `--jobs` worker processes with one TensorFlow thread each (2 workers use
both cores of a 2-core machine about twice as well as one 2-thread process for these
small steps). Events are read back with TensorBoard's loader.

Run: `python tools/workload_results.py` (about 25 minutes on 2 CPU cores); `--quick`
runs a few short configurations and only prints.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import multiprocessing
import os
import tempfile
import time
from collections.abc import Sequence
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from mnist1d_reference import AUTHORS, NOTEBOOK, PAPER, anchor_specs
from train_in_pool import init_worker, train_and_read

LINES: list[str] = []
SPIKE_WINDOW, SPIKE_RATIO, SPIKE_NATS = 50, 3.0, 0.2


def emit(line: str = "") -> None:
    """Prints a line and keeps it for the page."""
    print(line, flush=True)
    LINES.append(line)


class Job(NamedTuple):
    """One training run: an experiment file, extra bindings and a seed."""

    gin_file: str
    params: tuple[str, ...]
    seed: int


class Outcome(NamedTuple):
    """What a run left in its event files. `loss` is `loss/batch`, one value per batch;
    `metric` is the final value of the workload's eval metric."""

    loss: np.ndarray
    metric: float
    seconds: float


def spikes(loss: np.ndarray) -> int:
    """Loss spikes in a per-batch loss series: a batch `t >= SPIKE_WINDOW` is a spike
    batch when its loss exceeds `SPIKE_RATIO` times the median of the previous
    `SPIKE_WINDOW` batch losses and that median by at least `SPIKE_NATS` nats; a run
    of consecutive spike batches counts as one spike."""
    loss = np.asarray(loss, np.float64)
    flags = np.zeros(len(loss), bool)
    for t in range(SPIKE_WINDOW, len(loss)):
        median = np.median(loss[t - SPIKE_WINDOW : t])
        flags[t] = loss[t] > SPIKE_RATIO * median and loss[t] - median >= SPIKE_NATS
    return int(np.sum(flags & ~np.r_[False, flags[:-1]]))


def _train(job: Job, metric: str, logdir: str) -> Outcome:
    """Runs one job in this process and reads its events back."""
    values, seconds = train_and_read(
        job.gin_file, job.params, job.seed, logdir, ("loss/batch", metric)
    )
    return Outcome(values["loss/batch"], float(values[metric][-1]), seconds)


class Runner:
    """Runs jobs on a process pool, each job once (results are memoized)."""

    def __init__(self, jobs: int, logdir: str):
        self.logdir, self.done = logdir, {}
        context = multiprocessing.get_context("spawn")
        self.pool = futures.ProcessPoolExecutor(jobs, context, initializer=init_worker)

    def run(self, batch: Sequence[tuple[Job, str]]) -> list[Outcome]:
        """Runs every (job, metric) not run before, in parallel; returns all outcomes."""
        pending = {
            job: self.pool.submit(_train, job, metric, self.logdir)
            for job, metric in dict.fromkeys(batch)
            if job not in self.done
        }
        for job, future in pending.items():
            self.done[job] = future.result()
        return [self.done[job] for job, _ in batch]


class Workload(NamedTuple):
    """An experiment file and how this script runs it."""

    name: str
    gin_file: str
    common: tuple[str, ...]
    steps: int
    metric: str
    grid: tuple[float, ...]
    higher_is_better: bool


def _schedule(steps: int, peak: float) -> tuple[str, ...]:
    return (
        "Trainer.controller = @WarmupCosineController()",
        f"WarmupCosineController.base_lr = {peak}",
        f"WarmupCosineController.warmup_steps = {steps // 10}",
        f"WarmupCosineController.decay_steps = {steps}",
        "WarmupCosineController.init_lr = 0.0",
        "WarmupCosineController.end_lr = 0.0",
    )


def rules(steps: int, peak: float) -> dict[str, tuple[str, ...]]:
    """The strategies compared on a workload, given the tuned warmup-cosine peak.

    The shipped `strategies/*.gin` files are written for SGD at LR ~0.1 over 2,000 batches. For
    Adam every LR-valued number of a seed rule (LRs, bounds, `GradNorm.slope`) is
    multiplied by `s = peak / 0.1`, and every batch count by `steps / 2000`."""
    s, b = peak / 0.1, steps / 2000
    return {
        f"warmup-cosine (peak {peak:g})": _schedule(steps, peak),
        "GradNorm (seed)": (
            "Trainer.controller = @GradNormController()",
            f"GradNormController.base_lr = {0.1 * s:.6g}",
            f"GradNormController.low_norm_lr = {0.11 * s:.6g}",
            f"GradNormController.slope = {0.005 * s:.6g}",
            f"GradNormController.min_lr = {0.01 * s:.6g}",
        ),
        "LossTrend (seed)": (
            "Trainer.controller = @LossTrendController()",
            f"LossTrendController.initial_lr = {1e-3 * s:.6g}",
            f"LossTrendController.window = {max(4, round(100 * b))}",
            f"LossTrendController.min_lr = {1e-6 * s:.6g}",
            f"LossTrendController.max_lr = {0.1 * s:.6g}",
        ),
        "Cyclical (seed)": (
            "Trainer.controller = @CyclicalController()",
            f"CyclicalController.min_lr = {1e-3 * s:.6g}",
            f"CyclicalController.max_lr = {1e-2 * s:.6g}",
            f"CyclicalController.cycle_length = {max(2, round(1000 * b))}",
        ),
        "OneCycle": (
            "Trainer.controller = @OneCycleController()",
            f"OneCycleController.max_lr = {peak}",
            f"OneCycleController.total_steps = {steps}",
        ),
        "Adam-HD (hypergradient)": (
            "Trainer.controller = @HypergradientController()",
            f"HypergradientController.initial_lr = {peak / 10:.6g}",
            "HypergradientController.hyper_lr = 1e-7",  # the paper's beta for Adam
            f"HypergradientController.max_lr = {peak * 10:.6g}",
        ),
        "Polyak SPS_max (SGD)": (
            "Trainer.optimizer = 'sgd'",
            "Trainer.controller = @PolyakController()",
            "PolyakController.c = 0.5",
            "PolyakController.max_lr = 1.0",
        ),
        **parameter_free_rules(steps, peak),
    }


def parameter_free_rules(steps: int, peak: float) -> dict[str, tuple[str, ...]]:
    """The parameter-free methods (issue 16), untuned: each at its authors' defaults
    (lr 1 for the D-Adaptation family), Mechanic and Schedule-Free at the tuned peak."""
    constant = ("Trainer.controller = @ConstantController()",)
    return {
        "DoG (SGD, untuned)": (
            "Trainer.optimizer = 'sgd'",
            "Trainer.controller = @DoGController()",
            "DoGController.reps_rel = 1e-4",  # the authors' advice with normalization layers
        ),
        "Prodigy (lr 1)": (
            "Trainer.optimizer = @Prodigy", *constant, "ConstantController.lr = 1.0"),
        "D-Adapt Adam (lr 1)": (
            "Trainer.optimizer = @DAdaptAdam", *constant, "ConstantController.lr = 1.0"),
        f"Mechanic on Adam (lr {peak:g})": (
            "Trainer.optimizer = @Mechanic",
            "Mechanic.base_optimizer = 'adam'",
            *constant,
            f"ConstantController.lr = {peak}",
        ),
        f"Schedule-Free AdamW (lr {peak:g}, 10% warmup)": (
            "Trainer.optimizer = @ScheduleFreeAdamW",
            f"ScheduleFreeAdamW.warmup_steps = {steps // 10}",
            *constant,
            f"ConstantController.lr = {peak}",
        ),
    }  # fmt: skip


def workloads(quick: bool) -> dict[str, Workload]:
    lm_steps, cnn_steps = (60, 300) if quick else (400, 6000)
    no_extras = ("Trainer.histogram_every = 0", "Trainer.checkpoint_every = 0")
    return {
        "lm": Workload(
            "byte-level transformer (stdlib_transformer.gin)",
            "experiments/stdlib_transformer.gin",
            (f"Trainer.steps = {lm_steps}", f"Trainer.eval_every = {lm_steps // 4}", *no_extras),
            lm_steps,
            "eval/bits_per_byte",
            (1e-3, 3e-3, 1e-2),
            False,
        ),
        "cnn": Workload(
            "MNIST-1D CNN with BatchNorm (mnist1d_cnn.gin)",
            "experiments/mnist1d_cnn.gin",
            (f"Trainer.steps = {cnn_steps}", "Trainer.eval_every = 500", *no_extras),
            cnn_steps,
            "eval/accuracy",
            (3e-3, 1e-2, 3e-2),
            True,
        ),
    }


def _mean_std(values: Sequence[float], digits: int = 3) -> str:
    return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}"


def _spike_cell(outcomes: Sequence[Outcome]) -> str:
    counts = [spikes(o.loss) for o in outcomes]
    return f"{np.mean(counts):.1f} ({min(counts)}-{max(counts)})"


def _jobs(w: Workload, params: Sequence[str], seeds: Sequence[int]) -> list[tuple[Job, str]]:
    return [(Job(w.gin_file, (*w.common, *params), seed), w.metric) for seed in seeds]


def question_specs(steps: int) -> dict[str, tuple[str, ...]]:
    """Adam at the paper's constant 1e-2 on the CNN, and five ways to damp its spikes."""
    factor = (
        "Product.base = @ConstantController()",
        "Product.factor = @GradNormController()",
        "GradNormController.base_lr = 1.0",  # a multiplier: 1 - 0.4 * norm, >= 0.1
        "GradNormController.low_norm_lr = 1.0",
        "GradNormController.slope = 0.4",
        "GradNormController.min_lr = 0.1",
    )
    return {
        "constant 1e-2 (the paper's)": (),
        "+ clip_norm 1.0 (about the 90th percentile norm)": ("Trainer.clip_norm = 1.0",),
        "x grad-norm factor max(0.1, 1 - 0.4 norm)": (
            "Trainer.controller = @Product()",
            *factor,
        ),
        "MaxChange(5%) of that product": (
            "Trainer.controller = @MaxChange()",
            "MaxChange.controller = @Product()",
            "MaxChange.max_change_ratio = 0.05",
            *factor,
        ),
        "GradNorm seed rule (scaled to 1e-2)": rules(steps, 1e-2)["GradNorm (seed)"],
        "warmup-cosine, peak 1e-2": _schedule(steps, 1e-2),
    }


def best_peak(w: Workload, runner: Runner) -> float:
    """The grid's peak with the best seed-0 final metric."""
    finals = {
        peak: runner.run(_jobs(w, _schedule(w.steps, peak), [0]))[0].metric for peak in w.grid
    }
    pick = max if w.higher_is_better else min
    return pick(finals, key=finals.get)


def anchor_section(cnn: Workload, runner: Runner, seeds: Sequence[int]) -> None:
    emit(
        "## MNIST-1D against the paper\n\nAdam at a constant 1e-2, batches of 100, "
        f"{cnn.steps:,} batches (the paper's settings; its training code draws batches in "
        "order, ours at random), 4,000 training and 1,000 test examples from "
        f"`mnist1d.make_dataset`'s defaults; final test accuracy, seeds {list(seeds)}.\n\n"
        + AUTHORS
    )
    emit("| model | final test accuracy, % | the README, % | the 2024 notebook, % |")
    emit("|---|---:|---:|---:|")
    for label, params in anchor_specs().items():
        outcomes = runner.run(_jobs(cnn, params, seeds))
        acc = [100 * o.metric for o in outcomes]
        kind = "CNN" if "CNN" in label else "MLP"
        emit(f"| {label} | {_mean_std(acc, 1)} | {PAPER[kind]} | {NOTEBOOK[kind]} |")


def rules_section(w: Workload, runner: Runner, seeds: Sequence[int], peak: float) -> None:
    emit(f"\n## {w.name}\n")
    grid = runner.run([j for p in w.grid for j in _jobs(w, _schedule(w.steps, p), [0])])
    emit(
        f"{w.steps:,} batches; warmup-cosine (10% warmup) tuned on seed 0 over peaks "
        + ", ".join(f"{p:g} ({o.metric:.3f})" for p, o in zip(w.grid, grid, strict=True))
        + f" -> **{peak:g}**. Seeds {list(seeds)}.\n"
    )
    emit(f"| rule | final {w.metric} | loss spikes per run, mean (range) | s per run |")
    emit("|---|---:|---:|---:|")
    for label, params in rules(w.steps, peak).items():
        outcomes = runner.run(_jobs(w, params, seeds))
        emit(
            f"| {label} | {_mean_std([o.metric for o in outcomes])} | "
            f"{_spike_cell(outcomes)} | {np.mean([o.seconds for o in outcomes]):.0f} |"
        )


def question_section(cnn: Workload, runner: Runner, seeds: Sequence[int]) -> None:
    emit(
        "\n## Does damping by the gradient norm remove Adam's loss spikes?\n\n"
        f"The MNIST-1D CNN, Adam at the paper's constant 1e-2 for {cnn.steps:,} batches, "
        "fits its 4,000 training examples (batch loss ~0.005) and then spikes. Seeds "
        f"{list(seeds)}.\n"
    )
    emit("| variant | loss spikes per run, mean (range) | final test accuracy |")
    emit("|---|---:|---:|")
    for label, params in question_specs(cnn.steps).items():
        outcomes = runner.run(_jobs(cnn, params, seeds))
        emit(f"| {label} | {_spike_cell(outcomes)} | {_mean_std([o.metric for o in outcomes])} |")


def answer(cnn: Workload, runner: Runner, seeds: Sequence[int]) -> None:
    """One generated sentence per variant: spikes and accuracy against the baseline."""
    specs = question_specs(cnn.steps)
    results = {k: runner.run(_jobs(cnn, p, seeds)) for k, p in specs.items()}
    (base_label, base), *others = results.items()
    base_spikes = np.mean([spikes(o.loss) for o in base])
    base_acc = 100 * np.mean([o.metric for o in base])
    emit(
        f"\nAgainst the {base_label} ({base_spikes:.1f} spikes per run, "
        f"{base_acc:.1f}% test accuracy):\n"
    )
    for label, outcomes in others:
        n = np.mean([spikes(o.loss) for o in outcomes])
        acc = 100 * np.mean([o.metric for o in outcomes])
        change = f"{(n / base_spikes - 1) * 100:+.0f}%" if base_spikes else "n/a"
        emit(f"- {label}: {n:.1f} spikes ({change}), accuracy {acc - base_acc:+.1f} points.")


def spike_definition() -> str:
    return (
        f"A **loss spike** is a batch `t >= {SPIKE_WINDOW}` whose loss is more than "
        f"{SPIKE_RATIO:g}x the median of the previous {SPIKE_WINDOW} batch losses and at "
        f"least {SPIKE_NATS:g} nats above it; consecutive spike batches count once "
        "(`spikes` in `tools/workload_results.py`)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one seed; prints")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    args = parser.parse_args()
    seeds = [0] if args.quick else [0, 1, 2]
    ws = workloads(args.quick)
    cnn = ws["cnn"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as logdir:
        runner = Runner(args.jobs, logdir)
        runner.run(  # everything that does not depend on a tuned peak, in one batch
            [j for w in ws.values() for p in w.grid for j in _jobs(w, _schedule(w.steps, p), [0])]
            + [j for p in anchor_specs().values() for j in _jobs(cnn, p, seeds)]
            + [j for p in question_specs(cnn.steps).values() for j in _jobs(cnn, p, seeds)]
        )
        peaks = {key: best_peak(w, runner) for key, w in ws.items()}
        runner.run(
            [
                j
                for key, w in ws.items()
                for p in rules(w.steps, peaks[key]).values()
                for j in _jobs(w, p, seeds)
            ]
        )
        emit(spike_definition() + "\n")
        anchor_section(cnn, runner, seeds)
        for key, w in ws.items():
            rules_section(w, runner, seeds, peaks[key])
            if key == "lm":
                from transformer_vs_compressors import compressor_note

                emit(compressor_note())
        question_section(cnn, runner, seeds)
        answer(cnn, runner, seeds)
        runner.pool.shutdown()
    seconds = time.perf_counter() - start
    emit(f"\n{len(runner.done)} runs, {args.jobs} at a time, {seconds / 60:.1f} minutes.")
    if not args.quick:
        from measured_page import write_page

        path = write_page(
            "docs/results-workloads.md",
            "Results on the research workloads",
            "\n".join(LINES),
            seconds,
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
