"""Trains every standalone controller on the built-in tasks, with a fixed budget and
several seeds, and prints a markdown table; then checks one published claim.

Tasks: scikit-learn's digits (MLP 64-128-10) and the synthetic imbalanced, noisy task
(`synthetic(imbalance=10, label_noise=0.1)`, MLP 64-64). Each controller uses its
shipped `strategies/*.gin` file on top of `base.gin`, with `Trainer.steps = 2000` (so
the 2000-batch schedules end with the run), SGD unless the file picks its optimizer, batch
64, eval every 100 batches.
Reported: final eval loss and accuracy (mean +- std over seeds) and the batches until
eval accuracy first reached the task's target (median over the seeds that reached
it, and how many did). Events are read back with TensorBoard's loader.

Claim checked (Baydin et al., ICLR 2018): hypergradient descent makes the final loss
far less sensitive to the initial LR than plain SGD. Both are run from initial LRs
spread over two orders of magnitude; the table gives the final eval loss per initial
LR and the spread (max - min of the per-LR means).

Run: `python tools/results_table.py` (about 3 minutes on 2 CPU cores); it prints the
tables and writes them to `docs/results.md` (with the date, machine and versions).
`--quick` (one seed, a few controllers) only prints.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin
import numpy as np
import tensorflow as tf
from measured_page import write_page
from tensorboard.backend.event_processing import event_accumulator as ea

from lrresearch.config import files
from lrresearch.config import parse as config
from lrresearch.training.trainer import Trainer

LINES: list[str] = []


def emit(line: str = "") -> None:
    """Prints a line and keeps it for the page."""
    print(line, flush=True)
    LINES.append(line)


GIN = files.SHIPPED
TASKS = {
    "digits": (["Trainer.dataset = @digits"], 0.95),
    "synthetic": (
        [
            "Trainer.dataset = @synthetic",
            "synthetic.imbalance = 10.0",
            "synthetic.label_noise = 0.1",
            "mlp.hidden = (64,)",
        ],
        0.75,
    ),
}
COMMON = [
    "Trainer.steps = 2000",
    "Trainer.eval_every = 100",
    "Trainer.histogram_every = 0",
]  # the optimizer: base.gin's SGD, unless the strategy file picks its own (Prodigy, AdamW)


def eval_series(run_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    acc = ea.EventAccumulator(run_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()

    def series(tag: str) -> tuple[np.ndarray, np.ndarray]:
        events = acc.Tensors(tag)
        return (
            np.array([e.step for e in events]),
            np.array([float(tf.make_ndarray(e.tensor_proto)) for e in events]),
        )

    steps, accuracy = series("eval/accuracy")
    _, loss = series("eval/loss")
    return steps, loss, accuracy


def run(gin_files: list[str], params: list[str], logdir: str) -> tuple[np.ndarray, ...]:
    config.parse(gin_files, params)
    try:
        result = Trainer().fit(logdir=logdir, quiet=True)
    finally:
        gin.clear_config()
    return eval_series(result.run_dir)


def results(strategies: list[pathlib.Path], seeds: list[int], logdir: str) -> None:
    emit(
        f"## Every strategy on the built-in tasks\n\nEach `strategies/*.gin` on top of "
        f"`base.gin`, 2,000 batches of SGD, or of the optimizer the strategy file picks "
        "(batch 64, eval every 100), seeds "
        f"{', '.join(map(str, seeds))}; digits with the MLP 64-128-10, and the synthetic "
        "task with 10x class imbalance and 10% label noise (MLP 20-64-4). Final eval "
        "metrics are mean +- std over seeds; batches to target is the median over the "
        "seeds that reached it. Every strategy uses its gin file's numbers, untuned for "
        "these tasks.\n"
    )
    emit(
        "| controller | task | final eval loss | final eval accuracy | batches to target "
        "(reached) |"
    )
    emit("|---|---|---:|---:|---:|")
    for strategy in strategies:
        for task, (bindings, target) in TASKS.items():
            losses, accs, reach = [], [], []
            for seed in seeds:
                steps, loss, accuracy = run(
                    [str(GIN / "base.gin"), str(strategy)],
                    [*COMMON, *bindings, f"Trainer.seed = {seed}"],
                    logdir,
                )
                losses.append(loss[-1])
                accs.append(accuracy[-1])
                hit = np.flatnonzero(accuracy >= target)
                if hit.size:
                    reach.append(int(steps[hit[0]]) + 1)
            to_target = (
                f"{statistics.median(reach):.0f} ({len(reach)}/{len(seeds)})"
                if reach
                else f"- (0/{len(seeds)})"
            )
            emit(
                f"| {strategy.stem} | {task} (target {target:.2f}) | "
                f"{np.mean(losses):.3f} +- {np.std(losses):.3f} | "
                f"{np.mean(accs):.3f} +- {np.std(accs):.3f} | {to_target} |"
            )


def hypergradient_claim(lrs: list[float], seeds: list[int], hyper_lr: float, logdir: str) -> None:
    emit(
        '\n## A published claim, checked\n\nHypergradient descent "makes the final loss '
        'far less sensitive to the initial LR" (Baydin et al., ICLR 2018). Final eval '
        f"loss on digits after 2000 batches of SGD, mean over {len(seeds)} seeds "
        f"(`HypergradientController.hyper_lr = {hyper_lr:g}`):\n"
    )
    emit("| initial LR | SGD, constant | SGD-HD |")
    emit("|---:|---:|---:|")
    means = {"constant": [], "hd": []}
    for lr in lrs:
        row = {}
        for kind, params in (
            (
                "constant",
                ["Trainer.controller = @ConstantController()", f"ConstantController.lr = {lr}"],
            ),
            (
                "hd",
                [
                    "Trainer.controller = @HypergradientController()",
                    f"HypergradientController.initial_lr = {lr}",
                    f"HypergradientController.hyper_lr = {hyper_lr}",
                ],
            ),
        ):
            finals = [
                run([str(GIN / "base.gin")], [*COMMON, *params, f"Trainer.seed = {s}"], logdir)[1][
                    -1
                ]
                for s in seeds
            ]
            row[kind] = float(np.mean(finals))
            means[kind].append(row[kind])
        emit(f"| {lr:g} | {row['constant']:.3f} | {row['hd']:.3f} |")
    spread = {k: max(v) - min(v) for k, v in means.items()}
    emit(f"| spread (max - min) | {spread['constant']:.3f} | {spread['hd']:.3f} |")
    emit(
        f"\nOver initial LRs from {min(lrs):g} to {max(lrs):g}, plain SGD's final loss "
        f"spreads over {spread['constant']:.3f}, SGD-HD's over {spread['hd']:.3f} "
        f"({spread['constant'] / max(spread['hd'], 1e-12):.0f} times smaller)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--hyper_lr", type=float, default=1e-3)
    args = parser.parse_args()
    strategies = sorted((GIN / "strategies").glob("*.gin"))
    seeds = [0, 1, 2]
    lrs = [0.003, 0.01, 0.03, 0.1, 0.3]
    if args.quick:
        strategies, seeds, lrs = strategies[:3], [0], [0.01, 0.3]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as logdir:
        results(strategies, seeds, logdir)
        hypergradient_claim(lrs, seeds, args.hyper_lr, logdir)
    seconds = time.perf_counter() - start
    print(f"\n({seconds:.0f} s)")
    if not args.quick:
        path = write_page("docs/results.md", "Results", "\n".join(LINES), seconds)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
