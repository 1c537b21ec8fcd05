"""The per-batch log of `ControlledModel` in Keras `fit`: the device-side ring of batch
rows the compiled train step fills (`LogRing`), and the callback that drains it into a
`rows.BlockWriter` after every compiled call (`PerBatchSummaries`). See the
`lrresearch.keras_fit.model` docstring for when rows are buffered; both names are also
importable from there.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import event_pb2

from lrresearch.logs import event_files, summaries
from lrresearch.logs.rows import Block, BlockWriter


class LogRing:
    """The device-side ring buffer of a `ControlledModel`'s batch rows: `rows` float32
    `[capacity, k]` (columns in `tags` order), `steps` int64 `[capacity]`, `count` the
    rows written so far (int64), and `written` (Python) the rows already drained.
    A plain object (no `tf.Module`), so no saving path sees its variables."""

    def __init__(self, tags: tuple[str, ...], capacity: int):
        self.tags, self.capacity, self.written = tags, capacity, 0

        def variable(value: tf.Tensor, name: str) -> tf.Variable:
            # Created (in `init_scope`) while Keras's train function is first traced; not
            # lifted, so `tf.function` does not trace that function a second time.
            return tf.Variable(
                value, trainable=False, name=name, experimental_enable_variable_lifting=False
            )

        self.rows = variable(tf.zeros([capacity, len(tags)], tf.float32), "log_rows")
        self.steps = variable(tf.zeros([capacity], tf.int64), "log_steps")
        self.count = variable(tf.constant(0, tf.int64), "log_count")


def log_row(model: keras.Model, row: dict[str, tf.Tensor], step: tf.Tensor) -> None:
    """Writes one batch's row and step into `model._log_ring` (traced code; the ring is
    created at trace time, `steps_per_execution` rows) at row `count mod capacity`, and
    counts it; `PerBatchSummaries` drains the ring after each compiled call."""
    tags, capacity = tuple(row), int(model.steps_per_execution)
    ring = getattr(model, "_log_ring", None)
    if ring is None or (ring.tags, ring.capacity) != (tags, capacity):
        with tf.init_scope():  # outside the traced function, as the controller's
            ring = LogRing(tags, capacity)
        # Untracked (not a Keras or checkpoint dependency): never saved.
        object.__setattr__(model, "_log_ring", ring)
    with tf.name_scope("summaries"):
        index = tf.reshape(tf.math.floormod(ring.count.read_value(), capacity), [1, 1])
        ring.rows.scatter_nd_update(index, tf.stack([row[t] for t in tags])[tf.newaxis])
        ring.steps.scatter_nd_update(index, tf.reshape(tf.cast(step, tf.int64), [1]))
        ring.count.assign_add(1)


def next_step(model: keras.Model) -> int:
    """The batch index (summary step) of `model`'s next batch: its optimizer's
    iterations, plus the batches its guard skipped and, under float16 loss scaling, the
    overflows (`ControlledModel`'s step). Reads a few scalars from the device."""
    step = int(model.optimizer.iterations.numpy())
    if (guard := getattr(model, "guard", None)) is not None:
        step += int(guard.skipped.numpy())
    if (loss_scale := getattr(model, "loss_scale", None)) is not None:
        step += int(loss_scale.overflows.numpy())
    return step


def last_logged_step(logdir: str) -> int | None:
    """The largest step of an event in `logdir`'s event files (None if none). Steps
    grow through a file, so each file's last intact record is read."""
    steps = []
    for path in event_files.event_files(logdir):
        records, _ = event_files.read_records(path)
        if len(records) > 1:  # the first record is the file version
            steps.append(event_pb2.Event.FromString(records[-1][1]).step)
    return max(steps, default=None)


class PerBatchSummaries(keras.callbacks.Callback):
    """Writes the per-batch summaries of a `ControlledModel`'s `fit` to `logdir`.

    Without a strategy the compiled step buffers its rows on the device (see the
    module docstring); this callback drains them after every compiled call (one
    `steps_per_execution` block) into a `BlockWriter`, and at the end of `fit`. Under a
    strategy it only provides the default writer that the step's summary ops write to.

    The writer stays open across `fit` calls: Keras keeps its traced train function
    between calls, and (under a strategy) that function holds the writer it was traced
    with. Call `close()` when done (it is flushed at the end of every `fit`).

    Resuming: a model restored from a save (`.keras`, `.weights.h5`,
    `BackupAndRestore`) goes on from the batch after the save, while `logdir` may
    hold the batches the interrupted process trained after it; those steps would be
    logged twice (TensorBoard's loaders keep both). With `resume=True` the first `fit`
    drops from `logdir`'s event files every event at the model's next batch index or
    later, as `lrresearch train --resume` does (`event_files.drop_steps_from`), and
    says how many; without it, such events are an error (`ValueError`) before any
    batch is trained. The check reads the model's step once per callback, never per
    batch.

    Args:
      logdir: the run's directory (event files).
      resume: drop the events the interrupted process logged after the save.
    """

    def __init__(self, logdir: str, resume: bool = False):
        super().__init__()
        self.logdir = logdir
        self.resume = resume
        self.writer: tf.summary.SummaryWriter | None = None
        self._blocks: BlockWriter | None = None
        self._warned = False

    def on_train_begin(self, logs=None):
        if self.writer is None:
            self._claim_steps()
            self.writer = summaries.create_writer(self.logdir)
            self._blocks = BlockWriter(self.writer)
        # Read when the train function is traced: buffer the rows for this callback.
        object.__setattr__(self.model, "_buffer_batch_rows", True)
        # A context, not `set_as_default`: the default writer must not outlive `fit`.
        self._default = self.writer.as_default()
        self._default.__enter__()

    def on_train_batch_end(self, batch, logs=None):
        self._drain()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            object.__setattr__(self.model, "_buffer_batch_rows", False)
            self._default.__exit__(None, None, None)
            self._drain()
            self._blocks.flush()

    def _claim_steps(self) -> None:
        """Drops (with `resume`) or refuses the events of `logdir` at or after the
        model's next batch index."""
        start = next_step(self.model)
        if self.resume:
            trimmed = event_files.drop_steps_from(self.logdir, start)
            if trimmed.dropped_events or trimmed.damage:
                print(
                    f"PerBatchSummaries: resume at step {start}: dropped "
                    f"{trimmed.dropped_events} events the interrupted run logged from step "
                    f"{start} on in {self.logdir}",
                    flush=True,
                )
            return
        last = last_logged_step(self.logdir)
        if last is not None and last >= start:
            raise ValueError(
                f"PerBatchSummaries: {self.logdir!r} already holds summaries up to step "
                f"{last}, and this model's next batch is step {start} (restored from a "
                f"save?), so steps {start}..{last} would be logged twice. Pass "
                f"PerBatchSummaries({self.logdir!r}, resume=True) to drop what was logged "
                f"from step {start} on (as `lrresearch train --resume` does), or log to "
                "a new directory."
            )

    def close(self) -> None:
        if self.writer is not None:
            try:
                self._blocks.close()
            finally:
                self.writer.close()
                self.writer = self._blocks = None

    def _drain(self) -> None:
        """Submits the rows written since the last drain, oldest first, as one block
        (one small gather: the block's one host transfer, made by the writer)."""
        ring = getattr(self.model, "_log_ring", None)
        if ring is None or self._blocks is None:
            return
        count = int(ring.count.numpy())
        new = count - ring.written
        if new <= 0:
            return
        if new > ring.capacity:
            lost = new - ring.capacity
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"PerBatchSummaries: the summaries of {lost} batches were lost: "
                    f"{new} batches ran since the last write but the model buffers "
                    f"only the last {ring.capacity} (its steps_per_execution): batches "
                    f"trained by a fit without this callback are written at the next fit "
                    f"with it, up to that many.",
                    stacklevel=2,
                )
            new = ring.capacity
        indices = tf.constant(np.arange(count - new, count) % ring.capacity, tf.int64)
        block = Block(
            count=new,
            steps=tf.gather(ring.steps, indices),
            scalar_tags=ring.tags,
            scalars=tf.gather(ring.rows, indices),
        )
        ring.written = count
        self._blocks.submit(block)
