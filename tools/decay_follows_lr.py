"""Does the gradient norm rise over the last 20% of training, and does weight decay that
follows the LR remove the rise? Written to `docs/results-decay-follows-lr.md` and its
figure `docs/results-decay-follows-lr.png`.

The MNIST-1D CNN with BatchNorm (`experiments/mnist1d_cnn.gin`: 6,000 batches of 100)
trained with Keras's AdamW and warmup-cosine (peak 0.03, the peak
docs/results-workloads.md tuned for this CNN; 10% warmup; to 0 at the end), 3 seeds,
in three arms that differ only in the weight decay:

* constant: `AdamW.weight_decay = WEIGHT_DECAY` every batch (AdamW as usual: Keras's
  decoupled `w -= lr_t * wd * w` decays ~ lr_t);
* follows lr (power 1): `DecayFollowsLR(power=1)`, `wd_t = WEIGHT_DECAY * lr_t / 0.03`
  (effective decay ~ lr_t**2, AdamC);
* follows lr^2 (power 2): `wd_t = WEIGHT_DECAY * (lr_t / 0.03)**2` (~ lr_t**3).

Every arm has the same decay at the peak LR. Per run, from the event files (read with
TensorBoard's loader): `grad/global_norm` of every batch, and the final
`eval/accuracy`. The rise is `mean(norm over the last 5% of batches) / mean(norm over
batches 75-80%)` (> 1: the norm rises at the end); also the last 20% against 75-80%.

Runs go to `--jobs` worker processes with one TensorFlow thread each. Run:
`python tools/decay_follows_lr.py` (about 5 minutes on 2 quiet CPU cores); `--quick`
runs 600 batches with one seed and only prints.
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
from train_in_pool import init_worker, train_and_read

PAGE = "docs/results-decay-follows-lr.md"
FIGURE = "docs/results-decay-follows-lr.png"
GIN_FILE = "experiments/mnist1d_cnn.gin"
PEAK, WEIGHT_DECAY, SEEDS = 0.03, 0.05, (0, 1, 2)
LINES: list[str] = []


def emit(line: str = "") -> None:
    """Prints a line and keeps it for the page."""
    print(line, flush=True)
    LINES.append(line)


def arms(steps: int) -> dict[str, tuple[str, ...]]:
    """The bindings of each arm on top of the experiment file."""
    schedule = (
        "Trainer.optimizer = 'adamw'",
        f"keras.optimizers.AdamW.weight_decay = {WEIGHT_DECAY}",
        f"WarmupCosineController.base_lr = {PEAK}",
        f"WarmupCosineController.warmup_steps = {steps // 10}",
        f"WarmupCosineController.decay_steps = {steps}",
        "WarmupCosineController.init_lr = 0.0",
        "WarmupCosineController.end_lr = 0.0",
        f"Trainer.steps = {steps}",
    )

    def follow(power: int) -> tuple[str, ...]:
        return (
            "Trainer.controller = @DecayFollowsLR()",
            "DecayFollowsLR.controller = @WarmupCosineController()",
            f"DecayFollowsLR.power = {power}",
            *schedule,
        )

    return {
        "constant": ("Trainer.controller = @WarmupCosineController()", *schedule),
        "follows lr (power 1)": follow(1),
        "follows lr^2 (power 2)": follow(2),
    }


class Outcome(NamedTuple):
    """What a run left in its event files: per batch `grad/global_norm`, `lr` and the
    weight decay set (None when constant); the final `eval/accuracy`."""

    norm: np.ndarray
    lr: np.ndarray
    weight_decay: np.ndarray | None
    accuracy: float
    seconds: float


def _train(params: tuple[str, ...], seed: int, logdir: str) -> Outcome:
    """Runs one arm and seed in this process and reads its events back."""
    tags = ("grad/global_norm", "lr", "optimizer/weight_decay", "eval/accuracy")
    values, seconds = train_and_read(GIN_FILE, params, seed, logdir, tags)
    return Outcome(
        values["grad/global_norm"],
        values["lr"],
        values.get("optimizer/weight_decay"),
        float(values["eval/accuracy"][-1]),
        seconds,
    )


def window_mean(norm: np.ndarray, start: float, end: float) -> float:
    """The mean of `norm` over the batches from fraction `start` to `end` of the run."""
    n = len(norm)
    return float(np.mean(norm[int(start * n) : int(end * n)]))


def rise(norm: np.ndarray, last: float = 0.05) -> float:
    """`mean(norm over the last `last` of the batches) / mean(norm over 75-80%)`."""
    return window_mean(norm, 1 - last, 1.0) / window_mean(norm, 0.75, 0.80)


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}"


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """The running mean over `window` batches (shorter at the start)."""
    cumulative = np.cumsum(np.insert(x, 0, 0.0))
    counts = np.minimum(np.arange(1, len(x) + 1), window)
    return (cumulative[1:] - cumulative[np.arange(1, len(x) + 1) - counts]) / counts


def plot(results: dict[str, list[Outcome]], path: str) -> None:
    """grad/global_norm (seed mean, 100-batch running mean, log scale) and the weight
    decay set per batch, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for label, outcomes in results.items():
        norm = np.mean([o.norm for o in outcomes], axis=0)
        (line,) = top.plot(smooth(norm, 100), label=label, lw=1.2)
        first = outcomes[0]
        decay = first.weight_decay
        decay = np.full(len(first.lr), WEIGHT_DECAY) if decay is None else decay
        bottom.plot(decay, color=line.get_color(), lw=1.2, label=label)
    steps = len(next(iter(results.values()))[0].norm)
    for axis in (top, bottom):
        axis.axvspan(0.75 * steps, 0.80 * steps, color="0.85", lw=0)
        axis.axvspan(0.95 * steps, steps, color="0.85", lw=0)
    top.set_yscale("log")
    top.set_ylabel("grad/global_norm\n(seed mean, 100-batch mean)")
    top.set_title("MNIST-1D CNN + BatchNorm, AdamW + warmup-cosine (peak 0.03)")
    top.legend(fontsize=8)
    bottom.set_ylabel("weight decay set\n(optimizer/weight_decay)")
    bottom.set_xlabel("batch (shaded: 75-80% and the last 5%, the rise's windows)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_note() -> str:
    """The 1-minute load average and the core count, for the page."""
    try:
        one, five, _ = os.getloadavg()
        return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"
    except OSError:
        return "load average unknown"


def run_all(steps: int, seeds: Sequence[int], jobs: int, logdir: str) -> dict[str, list[Outcome]]:
    """Every arm and seed on a pool of `jobs` processes."""
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(jobs, context, initializer=init_worker) as pool:
        submitted = {
            label: [pool.submit(_train, params, seed, logdir) for seed in seeds]
            for label, params in arms(steps).items()
        }
        return {label: [f.result() for f in fs] for label, fs in submitted.items()}


def report(results: dict[str, list[Outcome]], seeds: Sequence[int]) -> None:
    """The table and what it shows."""
    emit(
        "| arm | rise: last 5% / 75-80% | last 20% / 75-80% | per seed (last 5%) | "
        "norm at 75-80% | norm over the last 5% | final eval/accuracy | s per run |"
    )
    emit("|---|---:|---:|---|---:|---:|---:|---:|")
    rises, ends = {}, {}
    for label, outcomes in results.items():
        rises[label] = [rise(o.norm) for o in outcomes]
        ends[label] = [window_mean(o.norm, 0.95, 1.0) for o in outcomes]
        middles = [window_mean(o.norm, 0.75, 0.80) for o in outcomes]
        last20 = [rise(o.norm, 0.20) for o in outcomes]
        per_seed = ", ".join(f"{r:.2f}" for r in rises[label])
        emit(
            f"| {label} | {mean_std(rises[label], 2)} | {mean_std(last20, 2)} | {per_seed} | "
            f"{mean_std(middles, 4)} | {mean_std(ends[label], 4)} | "
            f"{mean_std([o.accuracy for o in outcomes])} | "
            f"{np.mean([o.seconds for o in outcomes]):.0f} |"
        )
    constant = rises["constant"]
    accuracy = {label: np.mean([o.accuracy for o in outs]) for label, outs in results.items()}
    emit()
    emit(f"Seeds {list(seeds)}. What the data show:")
    emit()
    above = sum(r > 1.0 for r in constant)
    emit(
        f"- Constant weight decay: the gradient norm over the last 5% is "
        f"{np.mean(constant):.2f}x its mean over 75-80%, above 1 in {above} of "
        f"{len(constant)} seeds: "
        + (
            "it rises at the end."
            if above == len(constant)
            else "no consistent rise at the end on this workload."
            if above
            else "no, it does not rise at the end on this workload."
        )
    )
    for label, values in rises.items():
        if label == "constant":
            continue
        lower = sum(v < c for v, c in zip(values, constant, strict=True))
        emit(
            f"- {label}: {np.mean(values):.2f}x, above 1 in {sum(v > 1.0 for v in values)} "
            f"of {len(values)} seeds, lower than the constant arm's in {lower} of "
            f"{len(values)} seeds (same seed); its norm over the last 5% is "
            f"{np.mean(ends[label]) / np.mean(ends['constant']):.2f}x the constant arm's; "
            f"final accuracy {accuracy[label] - accuracy['constant']:+.3f} against it."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 batches, one seed; prints")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    args = parser.parse_args()
    steps, seeds = (600, (0,)) if args.quick else (6000, SEEDS)
    start = time.perf_counter()
    load_before = load_note()
    with tempfile.TemporaryDirectory() as logdir:
        results = run_all(steps, seeds, args.jobs, logdir)
    emit(
        f"The MNIST-1D CNN with BatchNorm (`{GIN_FILE}`), {steps:,} batches of 100, Keras "
        f"AdamW with warmup-cosine (peak {PEAK}, {steps // 10:,} batches of warmup, to 0), "
        f"weight decay {WEIGHT_DECAY} at the peak in every arm; `--jobs {args.jobs}`. "
        f"Machine load before the runs: {load_before}; after: {load_note()} (the machine "
        f"was shared: these are results, not timings)."
    )
    emit()
    emit(
        "Rise = mean `grad/global_norm` over the last 5% of the batches / its mean over "
        "batches 75-80% (> 1: the norm rises at the end of training), per seed, then "
        "mean +- std over the seeds; the same with the whole last 20%."
    )
    emit()
    report(results, seeds)
    if args.quick:
        return
    from measured_page import write_page

    emit()
    emit(f"![grad/global_norm and the weight decay per arm]({os.path.basename(FIGURE)})")
    title = "Weight decay that follows the LR: does the gradient norm still rise at the end?"
    # The page first: it records the commit, which the new figure would mark as dirty.
    print(write_page(PAGE, title, "\n".join(LINES), time.perf_counter() - start))
    plot(results, os.path.join(os.path.dirname(os.path.dirname(__file__)), FIGURE))


if __name__ == "__main__":
    main()
