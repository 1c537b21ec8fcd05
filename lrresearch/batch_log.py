"""Per-batch logging without summary ops in the compiled loop: rows on the device, a
block per compiled call, written as ordinary summaries on a background thread.

Inside the compiled loop each batch's logged values are a *row*, `{tag: value}` (a
float32 scalar, or a histogram as `summaries.histogram_buckets` rows). The loop stacks
the rows of its batches into a `Block` (`new_arrays`, `write_row`: one `TensorArray` per kind, a
fixed capacity, so the shapes are static under XLA) and returns it with the loss; no
summary op and no host transfer runs per batch. After the call, `BlockWriter` writes
the block's rows, step by step, with the exact tags, steps and metadata of
`lrresearch.summaries`, in one compiled call on its own thread, while the next
compiled call of the training loop runs: one call behind, as CLU's `AsyncWriter` and
MaxText's double buffering do. Everything that needs the summaries on disk (a
checkpoint, an evaluation, the end of a run, a stop of any kind) calls
`BlockWriter.wait()` or `flush()` first.

On a GPU the block is one device-to-host copy per compiled call, made by the writer's
call (TF's summary ops run on the CPU), not one copy per batch inside the loop.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import weakref
from collections.abc import Mapping

import tensorflow as tf

from lrresearch import summaries

Row = Mapping[str, tf.Tensor]
# The compiled writer functions of each summary writer, by block layout.
_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def split_row(row: Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The row's (scalar tags, histogram tags), each in the row's order. A value of
    rank 0 is a scalar, one of shape `[buckets, 3]` a histogram's buckets."""
    scalar_tags, histogram_tags = [], []
    for tag, value in row.items():
        rank = value.shape.rank
        if rank == 0:
            scalar_tags.append(tag)
        elif rank == 2 and value.shape[-1] == 3:
            histogram_tags.append(tag)
        else:
            raise ValueError(
                f"logged value {tag!r} has shape {value.shape}: not a scalar or histogram buckets"
            )
    return tuple(scalar_tags), tuple(histogram_tags)


@dataclasses.dataclass(frozen=True)
class Block:
    """One compiled call's logged values, still on the device.

    Attributes:
      count: the rows that hold batches (`n <= capacity`); the rest are padding.
      steps: int64 `[capacity]`, the step of each row.
      scalar_tags: the `k` scalar tags, in column order.
      scalars: float32 `[capacity, k]`.
      histogram_tags: the `h` histogram tags.
      histograms: float64 `[capacity, h, buckets, 3]` (None when `h` is 0).
      first: `{tag: value}` written once at `steps[0]` (the periodic groups due on the
        call's first batch: per-variable norms, histograms).
    """

    count: int
    steps: tf.Tensor
    scalar_tags: tuple[str, ...]
    scalars: tf.Tensor
    histogram_tags: tuple[str, ...] = ()
    histograms: tf.Tensor | None = None
    first: Mapping[str, tf.Tensor] = dataclasses.field(default_factory=dict)


def new_arrays(row: Row, capacity: int) -> tuple[tf.TensorArray, ...]:
    """Empty `TensorArray`s of `capacity` rows shaped like `row` (traced code): one for
    the scalars, one more for histograms if the row has any. Carry them as loop
    variables; `write_row` fills them, `stack_arrays` gives the block's tensors."""
    scalar_tags, histogram_tags = split_row(row)
    arrays = (tf.TensorArray(tf.float32, size=capacity, element_shape=[len(scalar_tags)]),)
    if histogram_tags:
        shape = [len(histogram_tags), *row[histogram_tags[0]].shape]
        arrays += (tf.TensorArray(tf.float64, size=capacity, element_shape=shape),)
    return arrays


def write_row(
    arrays: tuple[tf.TensorArray, ...],
    index: tf.Tensor,
    row: Row,
    tags: tuple[tuple[str, ...], tuple[str, ...]],
) -> tuple[tf.TensorArray, ...]:
    """`arrays` with row `index` set to `row`, its values in the order of `tags` (the
    `split_row` of the call's first row: every row has the same tags)."""
    scalar_tags, histogram_tags = tags
    with tf.name_scope("summaries"):
        return _write_row(arrays, index, row, scalar_tags, histogram_tags)


def _write_row(arrays, index, row, scalar_tags, histogram_tags):
    if set(row) != {*scalar_tags, *histogram_tags}:
        raise ValueError(
            f"a batch logged {sorted(row)}, the call's first batch "
            f"{sorted(scalar_tags + histogram_tags)}"
        )
    values = [tf.stack([tf.cast(row[t], tf.float32) for t in scalar_tags])]
    if histogram_tags:
        values.append(tf.stack([tf.cast(row[t], tf.float64) for t in histogram_tags]))
    return tuple(a.write(index, v) for a, v in zip(arrays, values, strict=True))


def stack_arrays(arrays: tuple[tf.TensorArray, ...]) -> tuple[tf.Tensor, tf.Tensor | None]:
    """`(scalars [capacity, k], histograms [capacity, h, buckets, 3] or None)`."""
    stacked = [a.stack() for a in arrays]
    return stacked[0], (stacked[1] if len(stacked) > 1 else None)


class BlockWriter:
    """Writes `Block`s to a summary writer on one background thread, one call behind.

    `submit(block)` first waits for the previous block (so at most one is in flight,
    and blocks are written in order), then queues this one and returns at once.
    `wait()` returns when everything submitted is written, re-raising the writer
    thread's error (a full disk, say) in the caller. With `background=False` each
    block is written in `submit` (for code that needs the events at once).

    Args:
      writer: the `tf.summary.SummaryWriter` to write into.
      background: write on the background thread (default) or in `submit`.
    """

    def __init__(self, writer: tf.summary.SummaryWriter, background: bool = True):
        self.writer = writer
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lrresearch-summaries")
            if background
            else None
        )
        self._pending: concurrent.futures.Future | None = None
        # Shared by every BlockWriter of this writer: each layout is traced once per
        # writer, not once per BlockWriter (`Trainer.logging_to` makes one per context).
        self._functions = _FUNCTIONS.setdefault(writer, {})

    def submit(self, block: Block) -> None:
        self.wait()
        if self._pool is None:
            self._write(block)
        else:
            self._pending = self._pool.submit(self._write, block)

    def wait(self) -> None:
        """Returns once every submitted block is written (raising the writer's error)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def flush(self) -> None:
        """Waits for the pending block and flushes the writer to disk."""
        self.wait()
        self.writer.flush()

    def close(self) -> None:
        """Waits for the pending block; stops the thread (the writer stays open)."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _write(self, block: Block) -> None:
        key = (
            block.scalar_tags,
            block.histogram_tags,
            tuple((tag, tuple(v.shape)) for tag, v in block.first.items()),
        )
        if key not in self._functions:
            self._functions[key] = self._compile(block)
        count = tf.constant(block.count, tf.int32)
        self._functions[key](count, block.steps, block.scalars, block.histograms, dict(block.first))

    def _compile(self, block: Block):
        """One compiled writer per block layout: a `tf.range` loop over the rows."""
        # A weak reference: the cache, keyed weakly by the writer, must not keep it alive.
        writer_ref = weakref.ref(self.writer)
        scalar_tags, histogram_tags = block.scalar_tags, block.histogram_tags

        def write(count, steps, scalars, histograms, first):
            # The `summaries` scope: profiles attribute these ops to logging.
            with writer_ref().as_default(), tf.name_scope("summaries"):
                for i in tf.range(count):
                    step = steps[i]
                    for j, tag in enumerate(scalar_tags):
                        summaries.scalar(tag, scalars[i, j], step)
                    for j, tag in enumerate(histogram_tags):
                        summaries.histogram_from_buckets(tag, histograms[i, j], step)
                for tag, value in first.items():
                    if value.shape.rank == 0:
                        summaries.scalar(tag, value, steps[0])
                    else:
                        summaries.histogram_from_buckets(tag, value, steps[0])

        return tf.function(write, reduce_retracing=True)
