"""What logging every batch and XLA cost: the buffered per-batch log and
`Trainer.jit_compile` against the bare loop, on four workloads.

One process, interleaved: every round runs one block of every variant (the starting
variant rotates each round), so machine drift hits all alike; ratios are computed per
round against `bare` and the table reports their median (and min..max). Variants, each
a `Trainer` with the workload's model, data, optimizer and the default
`steps_per_loop` (100 batches per compiled call):

  bare          ConstantController, no summary writer, no XLA: the reference
  log           ConstantController with the default per-batch log: every batch's
                scalars, histograms and per-variable norms every 100 batches; each block
                waits for its last block of summaries to be written
  rule+log      the default rule (GradNorm; at Adam scale on the two workloads) with
                the log: on the default MLP, the default configuration
  xla           bare, compiled with XLA (`Trainer.jit_compile = True`)
  xla+rule+log  rule+log, compiled with XLA
  cli           (default MLP only) the real `lrresearch train --gin_param='Trainer.steps
                = <block>'`, run through `lrresearch.cli.commands.main` in this process: its
                steady-state steps/s as its summary line reports it (after the first
                call; evaluations and checkpoints left out), `tools/cli_rate.py`

Workloads: the default MLP (`lrresearch train`'s: digits 8x8, MLP 64-128-10, SGD,
batch 64), a large MLP (784-1024-1024-10, batch 256, synthetic data, SGD), and the
MNIST-1D CNN and the byte-level transformer of `tools/bench_workloads.py` (Adam).

Targets (issue 15): rule+log >= 0.97x bare on the default MLP; xla+rule+log >= 1.3x
bare on the default MLP; XLA no slower than the same variant without it elsewhere;
log >= 0.97x bare (logging costs <= 3%) on every workload. Issue 22: cli >= 0.9x
rule+log (what users run is what this page measures).

Run from the repository root on a quiet machine:
  python tools/bench_logging.py           # ~10 min on 2 CPU cores; writes
                                          # docs/benchmarks/logging.md
  python tools/bench_logging.py --quick   # smoke run, no page
  python tools/bench_logging.py --only 1  # the default MLP only, no page
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from bench_keras import SIZES, Block, make_data, trainer_block
from bench_workloads import SEED_CONTROLLERS, WORKLOADS, per_round, time_rounds
from cli_rate import CliBlock
from measured_page import write_page

from lrresearch.controllers import ConstantController, Controller, GradNormController
from lrresearch.studies import profile as profiling
from lrresearch.training.trainer import Trainer
from lrresearch.workloads.models import mlp

PAGE = "docs/benchmarks/logging.md"
TARGET_DEFAULT, TARGET_XLA, TARGET_LOG, TARGET_CLI = 0.97, 1.3, 0.97, 0.9


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    block: int  # batches per timed block
    rounds: int
    trainer_args: Callable[[], dict]  # Trainer's dataset, model, optimizer, batch size...
    rule: Callable[[], Controller]
    constant_lr: float
    default: bool = False  # the default configuration (its own targets)


def large_mlp() -> dict:
    features, hidden, classes, batch, examples = SIZES["large MLP 784-1024-1024-10, batch 256"]
    data = make_data(features, classes, examples)
    return {
        "dataset": data,
        "batch_size": batch,
        "model": lambda input_shape, num_classes: mlp(input_shape, num_classes, hidden=hidden),
    }


def adam(workload) -> Callable[[], dict]:
    return lambda: {
        **workload.trainer_args(),
        "optimizer": "adam",
        "batch_size": workload.batch,
    }


CNN, LM = WORKLOADS
PLAN = (
    Workload("default MLP 64-128-10 (digits, SGD, batch 64)", 4000, 15, dict,
             GradNormController, 0.1, default=True),
    Workload("large MLP 784-1024-1024-10 (SGD, batch 256)", 200, 11, large_mlp,
             GradNormController, 0.1),
    Workload(CNN.name, 1000, 11, adam(CNN), SEED_CONTROLLERS["GradNorm"], 1e-3),
    Workload(LM.name, 40, 9, adam(LM), SEED_CONTROLLERS["GradNorm"], 1e-3),
)  # fmt: skip


def variant(workload: Workload, name: str, tmp: str) -> Block:
    """One variant of `workload` as a timed `Block` (see the module docstring)."""
    rule = "rule" in name
    controller = workload.rule() if rule else ConstantController(lr=workload.constant_lr)
    trainer = Trainer(
        steps=1, controller=controller, jit_compile=name.startswith("xla"),
        **workload.trainer_args(),
    )  # fmt: skip
    trainer.build()
    logdir = os.path.join(tmp, name) if name.endswith("log") else None
    return trainer_block(trainer, logdir, name)


VARIANTS = ("bare", "log", "rule+log", "xla", "xla+rule+log")


@dataclasses.dataclass
class Row:
    name: str
    steps_per_second: float
    vs_bare: np.ndarray  # per round
    target: str


def targets(workload: Workload, by_name: dict[str, Block]) -> dict[str, str]:
    """PASS/MISS for each variant with a target on this workload."""

    def check(name: str, reference: str, at_least: float) -> str:
        ratio = float(np.median(per_round(by_name[reference], by_name[name])))
        verdict = "PASS" if ratio >= at_least else "MISS"
        return f"{verdict} ({ratio:.3f}x {reference}, target >= {at_least})"

    out = {"log": check("log", "bare", TARGET_LOG)}
    if workload.default:
        out["rule+log"] = check("rule+log", "bare", TARGET_DEFAULT)
        out["xla+rule+log"] = check("xla+rule+log", "bare", TARGET_XLA)
        out["cli"] = check("cli", "rule+log", TARGET_CLI)
    else:
        out["xla"] = check("xla", "bare", 1.0)
        out["xla+rule+log"] = check("xla+rule+log", "rule+log", 1.0)
    return out


def bench(workload: Workload, batches: int, rounds: int, tmp: str) -> str:
    label = workload.name.split()[0] + ("-mlp" if "MLP" in workload.name else "")
    blocks = []
    for name in VARIANTS:
        start = time.perf_counter()
        block = variant(workload, name, os.path.join(tmp, label))
        block.run(1)  # step 0: traces (and compiles) the loop with the periodic groups
        block.run(batches)  # traces the plain loop; lets the executor settle
        block.seconds_per_batch.clear()
        blocks.append(block)
        print(f"  {label}: built and warmed up {name} ({time.perf_counter() - start:.0f} s)")
    if workload.default:  # a fresh run each round: nothing to warm up
        blocks.append(CliBlock("cli"))
    time_rounds(blocks, batches, rounds, label)
    by_name = {b.name: b for b in blocks}
    verdicts = targets(workload, by_name)
    lines = [
        f"### {workload.name}\n\n{batches} batches per block, {rounds} rounds\n",
        "| variant | steps/s | x bare (min..max) | target |",
        "|---|---:|---:|---|",
    ]
    for block in blocks:
        ratios = per_round(by_name["bare"], block)
        lines.append(
            f"| {block.name} | {1.0 / np.median(block.seconds_per_batch):,.0f} | "
            f"{np.median(ratios):.3f} ({ratios.min():.3f}..{ratios.max():.3f}) | "
            f"{verdicts.get(block.name, '')} |"
        )
    for block in blocks:
        if isinstance(block, CliBlock):
            lines.append(
                f"\n`{block.name}`: first call {np.median(block.first_call_seconds):.2f} s "
                f"(median; the run's summary line), not in its steps/s"
            )
    section = "\n".join(lines) + "\n"
    print("\n" + section, flush=True)
    return section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny blocks, 2 rounds, no page")
    parser.add_argument(
        "--only", help="comma-separated workload numbers (1-4) to run; no page is written"
    )
    args = parser.parse_args(argv)
    chosen = [int(i) for i in args.only.split(",")] if args.only else range(1, len(PLAN) + 1)
    start = time.perf_counter()
    header = (
        f"device: {profiling.device_description()}; TF {tf.__version__}, Keras {keras.__version__}"
    )
    print(header + ("; --quick: smoke run, numbers meaningless" if args.quick else ""))
    plan = [
        (w, max(2, w.block // 20), 2) if args.quick else (w, w.block, w.rounds)
        for i, w in enumerate(PLAN, 1)
        if i in chosen
    ]
    with tempfile.TemporaryDirectory() as tmp:
        sections = [bench(w, batches, rounds, tmp) for w, batches, rounds in plan]
    if not (args.quick or args.only):
        intro = (
            "The buffered per-batch log and XLA against the bare loop, in interleaved "
            "rounds in one process; every variant and target is described in the "
            "docstring of `tools/bench_logging.py`. x bare: median over rounds of bare's "
            "time per batch over the variant's (> 1 = faster). The log's cost before "
            "buffering (summary ops in the loop): 0.80-0.88x bare on the default MLP "
            "(each controller with summaries took 1.14-1.25x the bare step in `lrresearch "
            "profile --rounds 15`, issue 15), 1.8-2.9% on the CNN "
            "([workloads](workloads.md), measured before this change)."
        )
        body = "\n\n".join([intro, header + ".", *sections])
        seconds = time.perf_counter() - start
        path = write_page(PAGE, "What logging every batch and XLA cost", body, seconds)
        print(f"wrote {path}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
