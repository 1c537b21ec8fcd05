"""Steps per second of per-batch LR control: Keras `fit` against the lrresearch trainer.

One process, interleaved: every round runs one block of every variant, so machine
drift hits all alike; the table reports the median over rounds and ratios computed per
round. Variants (for each model size):

  A  keras-fit            `model.fit`, no callbacks
  B  keras-fit+callback   `model.fit` + a Python per-batch LR callback that assigns
                          the LR and logs `lr` and `loss` with `tf.summary`, plus
                          `keras.callbacks.TensorBoard(update_freq=1)`: how most users
                          do per-batch LR today
  C  ours-bare            our trainer, ConstantController, no summaries, 1 batch/call
  D  ours-<controller>    each seed controller, default per-batch summaries, 1 batch/call
  E  ours-<controller>-loop  D with the default steps_per_loop (100 batches/call)
  F  E (GradNorm) without histograms: E/F is the cost of the default histogram cadence
  G  Keras `model.fit` of `ControlledModel(GradNorm)` + `PerBatchSummaries`: our
     per-batch LR and tags inside Keras's compiled train function (steps_per_execution
     1 and 20)

Run: `python tools/bench_keras.py` (about 5 minutes on 2 CPU cores); `--quick` for a
smoke run. Prints a markdown table; paste the last one into the README.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from lrresearch.controllers import (
    ConstantController,
    Controller,
    CyclicalController,
    GradNormController,
    LossTrendController,
)
from lrresearch.keras_fit import ControlledModel, PerBatchSummaries
from lrresearch.logs import summaries
from lrresearch.studies import profile as profiling
from lrresearch.training.trainer import Trainer
from lrresearch.workloads.data import Dataset, split
from lrresearch.workloads.models import mlp

SIZES = {
    # name: (input features, hidden layers, classes, batch size, examples)
    "small MLP 64-128-10, batch 64": (64, (128,), 10, 64, 4096),
    "large MLP 784-1024-1024-10, batch 256": (784, (1024, 1024), 10, 256, 8192),
}
SEED_CONTROLLERS: dict[str, Callable[[], Controller]] = {
    "GradNorm": GradNormController,
    "LossTrend": lambda: LossTrendController(max_lr=0.1),
    "Cyclical": CyclicalController,
}


from measured_page import run_and_write  # noqa: E402

INTRO = (
    "Our trainer and `ControlledModel` against Keras `model.fit` with a hand-written per- "
    "batch LR callback and TensorBoard (interleaved rounds in one process; ratios against "
    "our bare constant-LR step)."
)


def make_data(features: int, classes: int, examples: int) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(examples, features)).astype(np.float32)
    w = rng.normal(size=(features, classes)).astype(np.float32)
    y = np.argmax(x @ w, axis=1).astype(np.int32)
    return split(x, y, 0.1, 0, classes, "bench")


class Block:
    """A variant that can run `n` more batches and report how long they took (and the
    loss its run function returned, if any: `last_loss`)."""

    def __init__(self, name: str, run: Callable[[int], float | None]):
        self.name, self.run_fn, self.seconds_per_batch = name, run, []
        self.last_loss = float("nan")

    def run(self, batches: int) -> None:
        start = time.perf_counter()
        loss = self.run_fn(batches)
        self.seconds_per_batch.append((time.perf_counter() - start) / batches)
        if loss is not None:
            self.last_loss = loss


def keras_dataset(data: Dataset, batch: int) -> tf.data.Dataset:
    """The usual Keras input: shuffled, repeated, batched; autotune off (it can stall a
    short fit's teardown by seconds)."""
    ds = (
        tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train))
        .shuffle(len(data.x_train), seed=0)
        .repeat()
        .batch(batch, drop_remainder=True)
        .prefetch(2)
    )
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


class PerBatchLR(keras.callbacks.Callback):
    """The usual hand-written per-batch LR: Python computes and assigns the LR before
    each batch and logs it (and the loss Keras reports) after, with `tf.summary`."""

    def __init__(self, writer: tf.summary.SummaryWriter, base_lr: float = 0.01):
        super().__init__()
        self.writer, self.base_lr, self.step = writer, base_lr, 0

    def on_train_batch_begin(self, batch_index: int, logs: dict | None = None) -> None:
        self.lr = self.base_lr * (1.0 + 0.5 * np.cos(self.step / 100.0))
        self.model.optimizer.learning_rate.assign(self.lr)

    def on_train_batch_end(self, batch_index: int, logs: dict | None = None) -> None:
        with self.writer.as_default(step=self.step):
            tf.summary.scalar("lr", self.lr)
            tf.summary.scalar("loss", float((logs or {}).get("loss", 0.0)))
        self.step += 1


def per_batch_lr_callbacks(logdir: str, base_lr: float = 0.01) -> list[keras.callbacks.Callback]:
    """`PerBatchLR` (LR around `base_lr`, logged under `logdir/lr`) and
    `keras.callbacks.TensorBoard(logdir, update_freq=1)`: per-batch LR as most users
    write it today."""
    writer = tf.summary.create_file_writer(os.path.join(logdir, "lr"))
    return [PerBatchLR(writer, base_lr), keras.callbacks.TensorBoard(logdir, update_freq=1)]


def fit_block(
    model: keras.Model,
    ds: tf.data.Dataset,
    callbacks: list[keras.callbacks.Callback],
    name: str,
) -> Block:
    """A block is one `model.fit` call of `batches` steps (one epoch) on `ds`."""

    def run(batches: int) -> float:
        history = model.fit(
            ds, epochs=1, steps_per_epoch=batches, verbose=0, callbacks=callbacks, shuffle=False
        )
        return float(history.history.get("loss", [np.nan])[-1])

    return Block(name, run)


def keras_block(
    data: Dataset, hidden: tuple[int, ...], batch: int, logdir: str | None, name: str
) -> Block:
    keras.utils.set_random_seed(0)
    model = mlp(data.input_shape, data.num_classes, hidden=hidden)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    callbacks = per_batch_lr_callbacks(logdir) if logdir else []
    return fit_block(model, keras_dataset(data, batch), callbacks, name)


def keras_controlled_block(
    data: Dataset,
    hidden: tuple[int, ...],
    batch: int,
    logdir: str,
    steps_per_execution: int,
    name: str,
) -> Block:
    """`model.fit` of `ControlledModel` (GradNorm in Keras's compiled train function)
    with `PerBatchSummaries`: our per-batch LR inside Keras."""
    keras.utils.set_random_seed(0)
    model = ControlledModel(
        mlp(data.input_shape, data.num_classes, hidden=hidden), GradNormController()
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )
    return fit_block(model, keras_dataset(data, batch), [PerBatchSummaries(logdir)], name)


def ours_block(
    data: Dataset,
    hidden: tuple[int, ...],
    batch: int,
    controller: Controller,
    logdir: str | None,
    steps_per_loop: int,
    name: str,
    histogram_every: int = 100,
) -> Block:
    trainer = Trainer(
        steps=1,
        histogram_every=histogram_every,
        controller=controller,
        batch_size=batch,
        dataset=data,
        model=lambda shape, classes: mlp(shape, classes, hidden=hidden),
        steps_per_loop=steps_per_loop,
    )
    trainer.build()
    return trainer_block(trainer, logdir, name)


def trainer_block(trainer: Trainer, logdir: str | None, name: str) -> Block:
    """A block is `trainer.run_steps(batches)` (at most `trainer.steps_per_loop` batches
    per compiled call), writing the default summaries to `logdir` (None: no writer, so
    no summaries), then one host read of the last loss."""
    writer = summaries.create_writer(logdir) if logdir else None

    def run(batches: int) -> float:
        with trainer.logging_to(writer) if writer else contextlib.nullcontext():
            loss = trainer.run_steps(batches, trainer.steps_per_loop)  # not bounded by steps
        return float(loss.numpy())

    return Block(name, run)


def bench(
    size: str, rounds: int, block_seconds: float, tmp: str
) -> list[tuple[str, float, float, float]]:
    features, hidden, classes, batch, examples = SIZES[size]
    data = make_data(features, classes, examples)
    logs = lambda name: os.path.join(tmp, size.split()[0], name)  # noqa: E731
    blocks = [
        keras_block(data, hidden, batch, None, "A keras-fit"),
        keras_block(data, hidden, batch, logs("keras"), "B keras-fit+callback+TensorBoard"),
        ours_block(data, hidden, batch, ConstantController(), None, 1, "C ours-bare"),
    ]
    for label, make in SEED_CONTROLLERS.items():
        blocks.append(ours_block(data, hidden, batch, make(), logs(label), 1, f"D ours-{label}"))
    blocks.append(
        keras_controlled_block(
            data,
            hidden,
            batch,
            logs("keras-controlled"),
            1,
            "G keras-fit+ControlledModel(GradNorm)",
        )
    )
    blocks.append(
        keras_controlled_block(
            data,
            hidden,
            batch,
            logs("keras-controlled-20"),
            20,
            "G keras-fit+ControlledModel(GradNorm), 20/exec",
        )
    )
    for label, make in SEED_CONTROLLERS.items():
        blocks.append(
            ours_block(
                data, hidden, batch, make(), logs(label + "-loop"), 100, f"E ours-{label}-loop100"
            )
        )
    # What the default histogram cadence costs: E without histograms.
    blocks.append(
        ours_block(
            data,
            hidden,
            batch,
            GradNormController(),
            logs("nohist"),
            100,
            "F ours-GradNorm-loop100-no-histograms",
            histogram_every=0,
        )
    )
    # Warm up (traces every function) and size the blocks to ~block_seconds each.
    sizes = {}
    for block in blocks:
        block.run(20)
        block.run(20)
        per_batch = block.seconds_per_batch.pop()
        block.seconds_per_batch.clear()
        sizes[block.name] = max(20, int(block_seconds / per_batch) // 20 * 20)
    for r in range(rounds):
        for block in blocks:
            block.run(sizes[block.name])
        print(f"  {size}: round {r + 1}/{rounds}", flush=True)
    bare = next(b for b in blocks if b.name.startswith("C "))
    keras_cb = next(b for b in blocks if b.name.startswith("B "))
    rows = []
    for block in blocks:
        rate = 1.0 / statistics.median(block.seconds_per_batch)
        per_round = np.array(bare.seconds_per_batch) / np.array(block.seconds_per_batch)
        vs_keras = statistics.median(
            np.array(keras_cb.seconds_per_batch) / np.array(block.seconds_per_batch)
        )
        rows.append(
            (
                block.name,
                rate,
                float(np.median(per_round)),
                float(per_round.min()),
                float(per_round.max()),
                vs_keras,
            )
        )
    with_hist = next(b for b in blocks if b.name == "E ours-GradNorm-loop100")
    no_hist = next(b for b in blocks if b.name.startswith("F "))
    cost = np.array(with_hist.seconds_per_batch) / np.array(no_hist.seconds_per_batch) - 1
    print(
        f"  {size}: default histogram cadence costs {100 * np.median(cost):+.1f}% per batch "
        f"(rounds: {100 * cost.min():+.1f}% .. {100 * cost.max():+.1f}%)",
        flush=True,
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--block_seconds", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 0.2 s blocks")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.block_seconds = 2, 0.2
    print(
        f"device: {profiling.device_description()}; TF {tf.__version__}, "
        f"Keras {keras.__version__}; {args.rounds} interleaved rounds",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            rows = bench(size, args.rounds, args.block_seconds, tmp)
            print(f"\n{size}\n")
            print(
                "| variant | steps/s | x ours-bare (min..max over rounds) "
                "| x keras-fit+callback+TB |"
            )
            print("|---|---:|---:|---:|")
            for name, rate, vs_bare, low, high, vs_keras in rows:
                print(
                    f"| {name} | {rate:,.0f} | {vs_bare:.2f} ({low:.2f}..{high:.2f}) "
                    f"| {vs_keras:.2f} |"
                )
            print(flush=True)


if __name__ == "__main__":
    run_and_write(main, "docs/benchmarks/keras_fit.md", "Against Keras fit", INTRO)
