"""The per-batch log as blocks (`lrresearch.logs.rows`): the events hold what the summary
ops write, everything trained reaches the event files when a run fails between calls,
and histograms due on every batch ride in the rows."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.compat.proto import event_pb2, summary_pb2

from lrresearch.logs import rows as batch_log
from lrresearch.logs import summaries
from lrresearch.logs.rows import Block, BlockWriter
from lrresearch.training import outer_loop as run
from tests.support import read_events, train

SMALL = {
    "Trainer.steps": 40,
    "Trainer.steps_per_loop": 10,
    "Trainer.eval_every": 0,
    "Trainer.checkpoint_every": 0,
    "Trainer.histogram_every": 0,
    "Trainer.log_every": 10,
    "mlp.hidden": (8,),
}


def test_an_exception_between_calls_leaves_every_trained_batch_on_disk(tmp_path, monkeypatch):
    """The block of the last call is still being written when an action fails: the
    run's `finally` waits for it, so batches 0..29 are all on disk."""
    report = run._Loop._report

    def failing_report(self, last):
        report(self, last)
        if self.done == 30:
            raise RuntimeError("boom")

    monkeypatch.setattr(run._Loop, "_report", failing_report)
    with pytest.raises(RuntimeError, match="boom"):
        train(tmp_path, params=SMALL, run_name="failed")
    events = read_events(tmp_path / "failed")
    for tag in ("lr", "loss/batch", "grad/global_norm", "guard/skipped"):
        np.testing.assert_array_equal(events.steps(tag), np.arange(30), err_msg=tag)


def test_groups_due_every_batch_are_rows_of_the_block(tmp_path):
    """`histogram_every = 1` and `grad_norm_every = 1`: histograms and per-variable
    norms ride in every row (a second TensorArray for the histograms)."""
    params = {**SMALL, "Trainer.steps": 12, "Trainer.steps_per_loop": 5,
              "Trainer.histogram_every": 1, "Trainer.grad_norm_every": 1}  # fmt: skip
    result = train(tmp_path, params=params, run_name="every")
    events, trainer = result.events, result.trainer
    sizes = {
        name: int(np.prod(v.shape))
        for name, v in zip(trainer.variable_names, trainer.variables, strict=True)
    }
    for name, size in sizes.items():
        for kind in ("grad", "weights"):
            tag = f"{kind}/{name}"
            np.testing.assert_array_equal(events.steps(tag), np.arange(12), err_msg=tag)
            counts = events.values(tag)[..., 2].sum(axis=-1)
            np.testing.assert_array_equal(counts, size, err_msg=tag)
        norms = events.scalar(f"grad/norm/{name}")
        assert norms.shape == (12,) and np.all(norms >= 0)
    np.testing.assert_array_equal(events.steps("lr"), np.arange(12))


def raw_events(folder) -> list:
    """Every summary-bearing event of the folder's event files, in file order."""
    from tensorboard.backend.event_processing import event_file_loader

    events = []
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        loader = event_file_loader.RawEventFileLoader(path)
        events += [event_pb2.Event.FromString(record) for record in loader.Load()]
    return [e for e in events if e.HasField("summary")]


def test_block_events_hold_the_values_the_summary_ops_write(tmp_path):
    """The encoded values equal, proto for proto, what `summaries.scalar` and TF's
    histogram summary write (one event per batch instead of one per value)."""
    rows = np.array([[0.125, -2.5, np.nan], [1e-30, np.inf, 3.0], [7.0, 8.0, 9.0]], np.float32)
    tags = ("lr", "controller/trend", "guard/skipped")
    buckets = summaries.histogram_buckets(tf.constant([0.5, 1.5, 2.0, np.nan]))
    op_writer = tf.summary.create_file_writer(str(tmp_path / "op"))
    with op_writer.as_default():
        for i, step in enumerate((10, 11)):
            for j, tag in enumerate(tags):
                summaries.scalar(tag, rows[i, j], step)
        summaries.scalar("grad/norm/dense/kernel", 0.75, 10)
        tf.summary.write("grad/dense/kernel", buckets, 10, metadata=summaries.HISTOGRAM_METADATA)
    op_writer.close()
    writer = tf.summary.create_file_writer(str(tmp_path / "block"))
    block = Block(
        count=2,  # the third row is padding
        steps=tf.constant([10, 11, 12], tf.int64),
        scalar_tags=tags,
        scalars=tf.constant(rows),
        first={"grad/norm/dense/kernel": tf.constant(0.75), "grad/dense/kernel": buckets},
    )
    log = BlockWriter(writer, background=False)
    log.submit(block, started=0.0)
    log.close()
    writer.close()

    def by_step(events):
        """`{(step, tag): value without metadata}`, and each tag's first metadata."""
        values, metadata = {}, {}
        for event in events:
            for value in event.summary.value:
                if value.HasField("metadata"):
                    metadata.setdefault(value.tag, value.metadata)
                bare = summary_pb2.Summary.Value()
                bare.CopyFrom(value)
                bare.ClearField("metadata")
                values[event.step, value.tag] = bare
        return values, metadata

    ours, theirs = raw_events(tmp_path / "block"), raw_events(tmp_path / "op")
    assert [e.step for e in ours] == [10, 11, 10]  # one event per row, then the first
    assert by_step(ours) == by_step(theirs)
    # A scalar tag's metadata is written once per file, with its first value (as TF 1's
    # FileWriter did); TensorBoard keeps the first.
    assert all(v.HasField("metadata") for v in ours[0].summary.value)
    assert not any(v.HasField("metadata") for v in ours[1].summary.value)
    assert 0.0 < ours[0].wall_time < ours[1].wall_time
    loaded = read_events(tmp_path / "block")
    assert loaded.plugin("lr") == "scalars" and loaded.plugin("grad/dense/kernel") == "histograms"
    assert "Learning rate" in loaded.acc.SummaryMetadata("lr").summary_description


def test_importer_is_traced_once_for_every_block_size(tmp_path):
    """Blocks of 1..40 rows (the remainders at cadences) go through the same two
    compiled import functions, each traced once per process, in order (the old
    importer made one function per event count and writer; TensorFlow warned at the
    sixth)."""
    writer = tf.summary.create_file_writer(str(tmp_path))
    log = BlockWriter(writer, background=False)
    step = 0
    for count in (1, 5, 16, 17, 40, 3, 33):
        rows = np.arange(step, step + 40, dtype=np.float32)[:, None]
        block = Block(count, tf.range(step, step + 40, dtype=tf.int64), ("lr",), tf.constant(rows))
        log.submit(block, started=0.0)
        step += count
    log.close()
    writer.close()
    assert batch_log._import_chunks.experimental_get_tracing_count() == 1  # per process
    assert batch_log._import_each.experimental_get_tracing_count() == 1
    events = read_events(tmp_path)
    np.testing.assert_array_equal(events.steps("lr"), np.arange(step))
    np.testing.assert_array_equal(events.scalar("lr"), np.arange(step, dtype=np.float32))
