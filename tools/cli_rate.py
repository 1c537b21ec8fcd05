"""The steady-state steps/s of the real `lrresearch train` path, for the benchmarks.

`cli_block` runs the CLI's own entry point, `lrresearch.cli.commands.main(["train", ...])`, in
this process (the same parse, `Trainer`, `fit`, writer, evaluations, checkpoints and
progress as a user's run) and reads the rate from the summary line it prints: the
steps/s after the first call (which traces), with evaluation and checkpoint time left
out (`outer_loop._Loop._rate`). As a `bench_keras.Block`, it interleaves with the other
variants of a benchmark, so the CLI and the loop the benchmark times cannot drift
apart unseen (issue 22: the CLI ran at a quarter of the figure the benchmark reported).
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile

import gin
from bench_keras import Block

from lrresearch.cli import commands as cli

SUMMARY = re.compile(r"\(([\d,]+) steps/s after a ([\d.]+) s first call")


def train_rate(params: list[str], logdir: str) -> tuple[float, float]:
    """`(steps/s after the first call, first call seconds)` of `lrresearch train
    --gin_param=...` (each of `params`) into `logdir`."""
    out = io.StringIO()
    args = ["train", *(f"--gin_param={p}" for p in params), f"--logdir={logdir}", "--quiet"]
    try:
        with contextlib.redirect_stdout(out):
            code = cli.main(args)
    finally:
        gin.clear_config()  # later trainers of the benchmark take their own arguments
    match = SUMMARY.search(out.getvalue())
    if code or match is None:
        raise RuntimeError(f"lrresearch {' '.join(args)} exited {code}: {out.getvalue()}")
    return float(match.group(1).replace(",", "")), float(match.group(2))


class CliBlock(Block):
    """`lrresearch train` of `batches` steps as a benchmark block: records the run's
    steady-state seconds per batch (not the wall time, which includes start-up, the
    first call, evaluations and checkpoints) and its first call (`first_call_seconds`).

    Args:
      name: the variant's name in the table.
      params: more `--gin_param` bindings (the default run: none).
    """

    def __init__(self, name: str, params: tuple[str, ...] = ()):
        super().__init__(name, lambda batches: None)
        self.params, self.first_call_seconds = params, []
        self._logdir = tempfile.TemporaryDirectory(prefix="bench-cli-")

    def run(self, batches: int) -> None:
        params = [f"Trainer.steps = {batches}", *self.params]
        rate, first = train_rate(params, self._logdir.name)
        self.seconds_per_batch.append(1.0 / rate)
        self.first_call_seconds.append(first)


def cli_against_bare(batches: int = 6000, rounds: int = 5) -> str:
    """A markdown table: `lrresearch train` (default configuration, `batches` steps)
    against the bare loop of the same model (`ConstantController`, no summary writer,
    `steps_per_loop` batches per call), in interleaved rounds in this process."""
    import numpy as np
    from bench_keras import trainer_block
    from bench_workloads import per_round, time_rounds

    from lrresearch.controllers import ConstantController
    from lrresearch.training.trainer import Trainer

    gin.clear_config()  # the default configuration, whatever ran before
    bare_trainer = Trainer(steps=1, controller=ConstantController(lr=0.1))
    bare_trainer.build()
    bare = trainer_block(bare_trainer, None, "bare loop")
    bare.run(1)
    bare.run(batches)  # traces both loops; lets the executor settle
    bare.seconds_per_batch.clear()
    flag = f"--gin_param='Trainer.steps = {batches}'"
    clis = [
        CliBlock(f"`lrresearch train {flag}`"),
        CliBlock("the same, `Trainer.steps_per_loop = 1000`", ("Trainer.steps_per_loop = 1000",)),
    ]
    time_rounds([bare, *clis], batches, rounds, "cli")
    lines = [
        f"{batches} batches per run, {rounds} interleaved rounds\n",
        "| variant | steps/s | x bare (min..max) | first call (s) |",
        "|---|---:|---:|---:|",
        f"| bare loop | {1 / np.median(bare.seconds_per_batch):,.0f} | 1.000 |  |",
    ]
    for block in clis:
        ratios = per_round(bare, block)
        lines.append(
            f"| {block.name} | {1 / np.median(block.seconds_per_batch):,.0f} | "
            f"{np.median(ratios):.3f} ({ratios.min():.3f}..{ratios.max():.3f}) | "
            f"{np.median(block.first_call_seconds):.2f} |"
        )
    return "\n".join(lines) + "\n"
