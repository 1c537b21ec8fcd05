"""Where the first compiled call of the default run goes, part by part, written to
`docs/benchmarks/first_call.md`.

The first call of `lrresearch train` traces the loop (Python runs the step twice: the
call's first batch with the periodic summary groups, and the loop body), lets
TensorFlow optimize and instantiate the graph (Grappler, kernels), and runs it; the
writer's first block traces the event importer; the first evaluation traces the
evaluation function. Every sweep point and every test pays it. Parts, each timed on a
fresh default `Trainer` (built, summary writer attached), in interleaved rounds:

  trace                the loop's Python trace (`get_concrete_function`), as shipped
                       (`tf.function(autograph=False)`: the code is graph code already)
  trace, AutoGraph     the same loop traced with AutoGraph on, as before issue 22: the
                       difference is AutoGraph's source conversion
  trace, no groups     the trace of a loop without the periodic groups (histograms,
                       per-variable norms) due on its first batch
  optimize+first run   the first execution of `steps_per_loop` batches (Grappler,
                       kernel instantiation, the run), minus a later call's time
  later call           a later call of the same batches (the steady state)
  ..., Grappler off    the same two with TensorFlow's graph optimizer off (process-wide,
                       so not shipped: its later calls are what per-batch work it saves)
  writer               the event importer's trace and the first block written
  eval (first)         the evaluation function's first call, minus a later call's
  cli first call       `lrresearch train`'s own first-call figure (its summary line),
                       a whole default run of 2,000 batches (`tools/cli_rate.py`)

Run from the repository root on a quiet machine:
  python tools/bench_first_call.py             # ~3 min on 2 CPU cores; writes the page
  python tools/bench_first_call.py --rounds 1  # smoke run, no page
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from cli_rate import train_rate
from measured_page import write_page

from lrresearch.logs import rows as batch_log
from lrresearch.logs import summaries
from lrresearch.training.trainer import Trainer

PAGE = "docs/benchmarks/first_call.md"
GROUPS = frozenset({"histograms", "grad_norms"})  # due on the default run's first call
N = tf.TensorSpec([], tf.int64)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fresh(logdir: str) -> tuple[Trainer, tf.summary.SummaryWriter]:
    """A built default trainer logging to a new writer (as `outer_loop.fit` sets it up)."""
    trainer = Trainer()
    trainer.build()
    writer = summaries.create_writer(tempfile.mkdtemp(dir=logdir))
    trainer.log_to = batch_log.BlockWriter(writer, background=False)
    trainer.reset_loops()
    return trainer, writer


def loop_parts(logdir: str, parts: dict[str, list[float]], grappler: bool) -> None:
    """Trace, first run and a later run of the default first call's loop."""
    trainer, writer = fresh(logdir)
    n = tf.constant(trainer.call_capacity, tf.int64)
    loop = trainer.loop_for(GROUPS)
    parts["trace"].append(timed(lambda: loop.get_concrete_function(N)))
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": not grappler})
    try:
        first = timed(lambda: loop(n)[0].numpy())
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})
    later = timed(lambda: loop(n)[0].numpy())
    off = "" if grappler else ", Grappler off"
    parts["optimize+first run" + off].append(first - later)
    parts["later call" + off].append(later)
    if grappler:
        result = loop(n)
        block = batch_log.Block(  # the writer's first block (importer traced in __init__)
            int(n), result[1], loop.layout["tags"][0], result[2], first=result[4]
        )
        start = time.perf_counter()
        trainer.log_to = batch_log.BlockWriter(summaries.create_writer(logdir + "/w"), False)
        trainer.log_to.submit(block)
        parts["writer"].append(time.perf_counter() - start)
        first_eval = timed(lambda: trainer.evaluate()["loss"].numpy())
        parts["eval (first)"].append(first_eval - timed(lambda: trainer.evaluate()["loss"].numpy()))
    writer.close()


def trace_parts(logdir: str, parts: dict[str, list[float]]) -> None:
    """The trace with AutoGraph on (as before) and without the periodic groups."""
    trainer, writer = fresh(logdir)
    autograph = tf.function(trainer.loop_for(GROUPS).python_function, autograph=True)
    parts["trace, AutoGraph"].append(timed(lambda: autograph.get_concrete_function(N)))
    trainer, writer = fresh(logdir)
    loop = trainer.loop_for(frozenset())
    parts["trace, no groups"].append(timed(lambda: loop.get_concrete_function(N)))
    writer.close()


def table(parts: dict[str, list[float]]) -> str:
    lines = ["| part | seconds (median) | min..max |", "|---|---:|---:|"]
    for name, values in parts.items():
        v = np.array(values)
        lines.append(f"| {name} | {np.median(v):.3f} | {v.min():.3f}..{v.max():.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    loads = [os.getloadavg()[0]]
    parts: dict[str, list[float]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as logdir:
        for r in range(args.rounds):
            order = [
                lambda: loop_parts(logdir, parts, True),
                lambda: loop_parts(logdir, parts, False),
                lambda: trace_parts(logdir, parts),
                lambda: parts["cli first call"].append(
                    train_rate(["Trainer.steps = 2000"], logdir)[1]
                ),
            ]
            shift = r % len(order)
            for step in order[shift:] + order[:shift]:
                step()
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}/{args.rounds}", flush=True)
    body = table(parts)
    print("\n" + body)
    load = f"{min(loads):.1f}..{max(loads):.1f} on {os.cpu_count()} cores"
    if args.rounds >= 3:
        intro = (
            "The first compiled call of the default run (`lrresearch train`: MLP "
            "64-128-10 on digits, 100 batches per call, histograms and per-variable "
            "norms due on it), part by part; every part is described in the docstring "
            "of `tools/bench_first_call.py`. Fresh trainers each round, interleaved. "
            "AutoGraph caches its conversions in a process: the first round's `trace, "
            "AutoGraph` (the max) is what a fresh `lrresearch train` process paid. Load "
            f"average while measuring: {load}."
        )
        path = write_page(
            PAGE, "The first call", intro + "\n\n" + body, time.perf_counter() - start
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
