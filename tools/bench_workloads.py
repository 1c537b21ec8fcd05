"""Steps per second of per-batch LR control on two workloads, ours against Keras fit.

The lrresearch trainer (bare, and each seed controller in its default configuration)
against Keras `model.fit` with and without a hand-written per-batch LR callback.

Workloads (Adam, float32, one CPU/GPU device):
  mnist1d-cnn       `mnist1d_cnn` (BatchNorm, 25 channels) on `@mnist1d` (4,000 training
                    examples of 40 features), batch 100
  byte-transformer  `byte_transformer` as in experiments/stdlib_transformer.gin (2
                    pre-LN blocks, width 128, 4 heads, context 128) on `stdlib_bytes`
                    through tf.data, batch 32, sparse cross-entropy from logits

Variants of each workload:
  ours-bare            `Trainer` with `ConstantController`, no summary writer and no
                       periodic summaries: the bare compiled step
  ours-<controller>    GradNorm, LossTrend, Cyclical (Adam-scale LRs) with the default
                       per-batch summaries and histogram cadence: our default configuration
  keras-fit            `model.fit`, no callbacks, Keras's default steps_per_execution = 1
  keras-fit+callback   the same plus bench_keras.py's per-batch LR callback (Python assigns
                       the LR and logs lr/loss with tf.summary) and
                       `keras.callbacks.TensorBoard(update_freq=1)`

Every variant is built once and keeps its model and optimizer state across blocks; it is
warmed up (1 batch, then one untimed block: traces every compiled function) before the
rounds. Each round times one block of every variant (the order rotates by one each
round); the table gives the median steps/s over rounds and, per round, the ratios of
time per batch (x ours-bare, x keras-fit, x keras-fit+callback), as bench_keras.py does.
Targets for each seed controller: overhead (1 - x ours-bare) <= 2%, x keras-fit >= 1.0,
x keras-fit+callback >= 1.2.

Run from the repository root on a quiet machine:
  python tools/bench_workloads.py            # ~8 min on 2 CPU cores; writes
                                             # docs/benchmarks/workloads.md
  python tools/bench_workloads.py --quick    # smoke run, ~2 min (mostly tracing), no
                                             # page
TensorFlow's "N out of the last M calls to <function build.<locals>.loop>
triggered tf.function retracing" counts the loops of all our trainers together (each
traces its own); the script checks that no loop is traced during the timed rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from bench_keras import Block, fit_block, keras_dataset, per_batch_lr_callbacks, trainer_block
from measured_page import write_page

from lrresearch.controllers import (
    ConstantController,
    Controller,
    CyclicalController,
    GradNormController,
    LossTrendController,
)
from lrresearch.studies import profile as profiling
from lrresearch.training.trainer import Trainer
from lrresearch.workloads.data import mnist1d
from lrresearch.workloads.models import mnist1d_cnn
from lrresearch.workloads.stdlib_lm import byte_transformer, stdlib_bytes

PAGE = "docs/benchmarks/workloads.md"
BASE_LR = 1e-3  # ours-bare's constant LR; the Keras callback's LR moves around it
# The seed rules at Adam scale (their strategies/*.gin defaults are SGD-scale).
SEED_CONTROLLERS: dict[str, Callable[[], Controller]] = {
    "GradNorm": lambda: GradNormController(base_lr=2e-3, low_norm_lr=2e-3, slope=1e-4, min_lr=2e-4),
    "LossTrend": lambda: LossTrendController(initial_lr=1e-3, min_lr=1e-5, max_lr=3e-3),
    "Cyclical": lambda: CyclicalController(min_lr=1e-4, max_lr=2e-3),
}
TARGET_OVERHEAD, TARGET_VS_FIT, TARGET_VS_CALLBACK = 0.02, 1.0, 1.2
LM_DATA = functools.partial(stdlib_bytes, context=128, eval_fraction=0.1, seed=0)
LM_MODEL = functools.partial(
    byte_transformer, layers=2, width=128, heads=4, context=128, mlp_ratio=4, dropout=0.0
)
CNN_MODEL = functools.partial(mnist1d_cnn, channels=25, batch_norm=True)


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model, its data and loss for both trainers, and the full run's block sizes."""

    name: str
    batch: int
    block: int  # batches per timed block
    rounds: int
    trainer_args: Callable[[], dict]  # Trainer's dataset, model (and loss)
    keras_model: Callable[[], keras.Model]
    keras_data: Callable[[int], tf.data.Dataset]  # batched, endless


def lm_keras_data(batch: int) -> tf.data.Dataset:
    """The training bytes batched as `Trainer` does for a tf.data input (repeat, batch
    dropping the remainder, prefetch 2, autotune off)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    train, _ = LM_DATA()
    ds = train.repeat().batch(batch, drop_remainder=True).prefetch(2)
    return ds.with_options(options)


def cnn_keras_model() -> keras.Model:
    data = mnist1d()
    return CNN_MODEL(data.input_shape, data.num_classes)


WORKLOADS = (
    Workload(
        name="mnist1d-cnn (BatchNorm, 25 channels), @mnist1d, Adam, batch 100",
        batch=100,
        block=1000,  # ~1.4 s: 200-batch blocks gave per-round ratios 0.84..1.26
        rounds=15,
        trainer_args=lambda: {"dataset": mnist1d, "model": CNN_MODEL},
        keras_model=cnn_keras_model,
        keras_data=lambda batch: keras_dataset(mnist1d(), batch),
    ),
    Workload(
        name="byte-transformer (2 layers, width 128, 4 heads, context 128), stdlib_bytes, "
        "Adam, batch 32",
        batch=32,
        block=40,
        rounds=13,
        trainer_args=lambda: {
            "dataset": LM_DATA,
            "model": LM_MODEL,
            "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        },
        keras_model=lambda: LM_MODEL((128,)),
        keras_data=lm_keras_data,
    ),
)


def ours(
    workload: Workload,
    controller: Controller,
    logdir: str | None,
    name: str,
    trainers: dict[str, Trainer],
    histogram_every: int = 100,
) -> Block:
    """Our trainer (Adam, default `steps_per_loop`); summaries to `logdir` if given.
    The trainer is also put in `trainers` (to count its traces)."""
    trainer = Trainer(
        steps=1,
        controller=controller,
        optimizer="adam",
        batch_size=workload.batch,
        histogram_every=histogram_every,
        **workload.trainer_args(),
    )
    trainer.build()
    trainers[name] = trainer
    return trainer_block(trainer, logdir, name)


def keras_fit(workload: Workload, logdir: str | None, name: str) -> Block:
    """`model.fit` of the same model (Adam, Keras's default compile settings), plus the
    per-batch LR callback and TensorBoard when `logdir` is given."""
    keras.utils.set_random_seed(0)
    model = workload.keras_model()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=BASE_LR),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    callbacks = per_batch_lr_callbacks(logdir, BASE_LR) if logdir else []
    return fit_block(model, workload.keras_data(workload.batch), callbacks, name)


def build_variants(workload: Workload, tmp: str) -> tuple[list[Block], dict[str, Trainer]]:
    """ours-bare first, then each seed controller, keras-fit, keras-fit+callback; and
    our variants' trainers by name."""
    trainers: dict[str, Trainer] = {}
    bare = ConstantController(lr=BASE_LR)
    blocks = [ours(workload, bare, None, "ours-bare", trainers, histogram_every=0)]
    for label, make in SEED_CONTROLLERS.items():
        logdir = os.path.join(tmp, label)
        blocks.append(ours(workload, make(), logdir, f"ours-{label}", trainers))
    blocks.append(keras_fit(workload, None, "keras-fit"))
    blocks.append(keras_fit(workload, os.path.join(tmp, "keras"), "keras-fit+callback"))
    return blocks, trainers


def traces(trainers: dict[str, Trainer]) -> dict[str, dict[frozenset[str], int]]:
    """How many times each compiled loop of each trainer has been traced."""
    return {
        name: {group: fn.experimental_get_tracing_count() for group, fn in t.loops.items()}
        for name, t in trainers.items()
    }


def warm_up(blocks: list[Block], batches: int, label: str) -> None:
    """Runs 1 batch, then one block, of every variant, untimed."""
    for block in blocks:
        start = time.perf_counter()
        block.run(1)  # step 0: traces the loop that writes the periodic summaries
        block.run(batches)  # traces the plain loop; lets the executor settle
        block.seconds_per_batch.clear()
        print(f"  {label}: warmed up {block.name} ({time.perf_counter() - start:.0f} s)")


def time_rounds(blocks: list[Block], batches: int, rounds: int, label: str) -> None:
    """Times `rounds` interleaved rounds of one block of every variant (the starting
    variant rotates every round)."""
    start = time.perf_counter()
    for r in range(rounds):
        shift = r % len(blocks)
        for block in blocks[shift:] + blocks[:shift]:
            block.run(batches)
        eta = (time.perf_counter() - start) / (r + 1) * (rounds - r - 1)
        print(f"  {label}: round {r + 1}/{rounds}, ETA {eta:.0f} s", flush=True)


@dataclasses.dataclass
class Row:
    """One variant's results; ratios are medians over rounds of per-round time ratios
    (> 1: faster than the reference)."""

    name: str
    steps_per_second: float
    vs_bare: float
    vs_bare_low: float
    vs_bare_high: float
    vs_fit: float
    vs_callback: float
    last_loss: float


def per_round(reference: Block, block: Block) -> np.ndarray:
    """Reference time per batch over this block's, round by round."""
    return np.array(reference.seconds_per_batch) / np.array(block.seconds_per_batch)


def rows_of(blocks: list[Block]) -> list[Row]:
    by_name = {b.name: b for b in blocks}
    bare, fit, callback = (by_name[n] for n in ("ours-bare", "keras-fit", "keras-fit+callback"))
    rows = []
    for block in blocks:
        vs_bare = per_round(bare, block)
        rows.append(
            Row(
                name=block.name,
                steps_per_second=1.0 / statistics.median(block.seconds_per_batch),
                vs_bare=float(np.median(vs_bare)),
                vs_bare_low=float(vs_bare.min()),
                vs_bare_high=float(vs_bare.max()),
                vs_fit=float(np.median(per_round(fit, block))),
                vs_callback=float(np.median(per_round(callback, block))),
                last_loss=block.last_loss,
            )
        )
    return rows


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def format_table(rows: list[Row]) -> str:
    """Markdown; PASS/MISS next to each target, on the seed controllers' rows."""
    lines = [
        "| variant | steps/s | x ours-bare (min..max) | overhead | x keras-fit "
        "| x keras-fit+callback | last loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        overhead = f"{100 * (1 - r.vs_bare):+.1f}%"
        vs_fit, vs_callback = f"{r.vs_fit:.2f}", f"{r.vs_callback:.2f}"
        if r.name.removeprefix("ours-") in SEED_CONTROLLERS:
            overhead += " " + verdict(1 - r.vs_bare <= TARGET_OVERHEAD)
            vs_fit += " " + verdict(r.vs_fit >= TARGET_VS_FIT)
            vs_callback += " " + verdict(r.vs_callback >= TARGET_VS_CALLBACK)
        lines.append(
            f"| {r.name} | {r.steps_per_second:,.1f} | {r.vs_bare:.3f} "
            f"({r.vs_bare_low:.3f}..{r.vs_bare_high:.3f}) | {overhead} | {vs_fit} "
            f"| {vs_callback} | {r.last_loss:.3f} |"
        )
    return "\n".join(lines)


def bench(workload: Workload, batches: int, rounds: int, tmp: str) -> str:
    """Builds, warms up and times the variants of `workload`; returns its section."""
    label = workload.name.split()[0]
    start = time.perf_counter()
    blocks, trainers = build_variants(workload, os.path.join(tmp, label))
    print(f"  {label}: built {len(blocks)} variants ({time.perf_counter() - start:.0f} s)")
    warm_up(blocks, batches, label)
    traced = traces(trainers)
    time_rounds(blocks, batches, rounds, label)
    if traces(trainers) != traced:  # then a timed block included tracing
        print(f"  {label}: WARNING: a compiled loop was traced during the timed rounds")
    section = (
        f"### {workload.name}\n\n{batches} batches per block, {rounds} rounds\n\n"
        f"{format_table(rows_of(blocks))}\n"
    )
    print("\n" + section, flush=True)
    return section


def intro(plan: list[tuple[Workload, int, int]]) -> str:
    """The page's first paragraph: what was timed, how, and what the columns mean."""
    sizes = "; ".join(
        f"{w.name.split()[0]}: {batches} batches per block, {rounds} rounds"
        for w, batches, rounds in plan
    )
    return (
        "Per-batch LR control on two workloads, our trainer against Keras `model.fit`, "
        "timed in interleaved rounds in one process (see the docstring of "
        "`tools/bench_workloads.py` for every variant). "
        f"{sizes}; each variant warmed up first (1 batch, then one untimed block). "
        "LRs at Adam scale: ours-bare and Keras 1e-3 (the callback: 1e-3 x (1 + 0.5 "
        "cos(step / 100))); GradNorm base_lr = low_norm_lr = 2e-3, slope 1e-4, min_lr "
        "2e-4; LossTrend 1e-3 in [1e-5, 3e-3]; Cyclical 2e-3 down to 1e-4 over 1000 "
        "batches. ours-* use `Trainer`'s default `steps_per_loop` (100 batches per compiled "
        "call; a block runs as one or more calls) and in-graph batches for in-memory "
        "data; the seed controllers write the default per-batch summaries (histograms and "
        "per-variable norms every 100 batches). Keras runs one `fit` call per block "
        "(`steps_per_epoch` = block), so each Keras block includes one `fit` call's setup "
        "(~15-20 ms on 2 cores: ~2% of a CNN block); `steps_per_execution` = 1 (Keras's "
        "default), jit_compile 'auto' (off on CPU), the in-memory data through tf.data "
        "(`bench_keras.keras_dataset`). The transformer runs without "
        "`Trainer.deterministic` and with 100 batches per call (its gin file: on, 50). "
        "x columns: median over rounds of the reference's "
        "time per batch over the variant's (> 1 = faster). Targets for each seed "
        "controller: overhead <= 2%, x keras-fit >= 1.0, x keras-fit+callback >= 1.2. "
        "Last loss: the last block's (ours: last batch; Keras: mean over the block), a "
        "check that no variant diverged."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny blocks, 2 rounds, no page")
    parser.add_argument("--rounds", type=int, help="override every workload's rounds")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    header = (
        f"device: {profiling.device_description()}; TF {tf.__version__}, Keras {keras.__version__}"
    )
    print(header + ("; --quick: smoke run, numbers meaningless" if args.quick else ""))
    plan = [
        (w, max(2, w.block // 10), args.rounds or 2)
        if args.quick
        else (w, w.block, args.rounds or w.rounds)
        for w in WORKLOADS
    ]
    with tempfile.TemporaryDirectory() as tmp:
        sections = [bench(w, batches, rounds, tmp) for w, batches, rounds in plan]
    if not args.quick:
        body = "\n\n".join([intro(plan), header + ".", *sections])
        seconds = time.perf_counter() - start
        path = write_page(PAGE, "Per-batch LR control on two workloads", body, seconds)
        print(f"wrote {path}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
