"""Soak test (not a CI test): a long run with per-batch logging; memory must not grow and
the event files must stay readable.

Trains the default small model for `--steps` (20,000) batches with the default
per-batch summaries, in blocks; after each block it samples the process's resident
memory (VmRSS from /proc/self/status). It then reads the run back with TensorBoard's
loader and checks every `lr` step is there once. Prints the RSS series and the growth
over the second half of the run (the first half includes TF's warm-up allocations).

Run: `python tools/soak.py [--steps 20000]`
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin
import numpy as np
from measured_page import run_and_write
from tensorboard.backend.event_processing import event_accumulator as ea

from lrresearch.config import parse as config
from lrresearch.logs import summaries
from lrresearch.training.trainer import Trainer

INTRO = (
    "A long run with the default per-batch summaries: resident memory must stay flat and "
    "every `lr` step must be in the event files once."
)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--blocks", type=int, default=20)
    args = parser.parse_args()
    per_block = args.steps // args.blocks
    samples = []
    with tempfile.TemporaryDirectory() as logdir:
        config.parse([], [f"Trainer.steps = {args.steps}"])
        try:
            trainer = Trainer()
            trainer.build()
        finally:
            gin.clear_config()
        run_dir = os.path.join(logdir, "soak")
        writer = summaries.create_writer(run_dir)
        start = time.perf_counter()
        with trainer.logging_to(writer):  # the per-batch path of `fit`, without eval
            for _ in range(args.blocks):
                trainer.run_steps(per_block).numpy()
                samples.append(rss_mib())
        writer.close()
        seconds = time.perf_counter() - start
        acc = ea.EventAccumulator(run_dir, size_guidance={ea.TENSORS: 0})
        acc.Reload()
        steps = [e.step for e in acc.Tensors("lr")]
        sizes = sum(
            os.path.getsize(os.path.join(run_dir, f))
            for f in os.listdir(run_dir)
            if "tfevents" in f
        )
    half = np.array(samples[len(samples) // 2 :])
    print(
        f"{args.steps} batches in {seconds:.0f} s ({args.steps / seconds:,.0f} batches/s) with the "
        f"default per-batch summaries; RSS sampled every {per_block} batches"
    )
    print("RSS MiB after each block: " + ", ".join(f"{s:.0f}" for s in samples))
    print(
        f"RSS growth over the second half: {half[-1] - half[0]:+.1f} MiB "
        f"({(half[-1] - half[0]) / (args.steps / 2) * 1e3:+.2f} KiB per 1,000 batches)"
    )
    print(
        f"events: {len(steps)} `lr` points, steps 0..{max(steps)}, each once: "
        f"{steps == list(range(args.steps))}; {sizes / 2**20:.1f} MiB of event files"
    )


if __name__ == "__main__":
    run_and_write(main, "docs/benchmarks/soak.md", "Soak", INTRO)
