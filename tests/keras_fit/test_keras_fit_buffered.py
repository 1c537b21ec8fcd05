"""`ControlledModel` + `PerBatchSummaries` without a strategy: the rows are buffered on
the device and written as blocks, with no summary op in Keras's compiled train
function; the buffer is never saved."""

from __future__ import annotations

import inspect

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch import controllers as c
from lrresearch.keras_fit import ControlledModel, PerBatchSummaries
from lrresearch.workloads.models import mlp
from tests.support import Events

BATCHES = 30
SUMMARY_OPS = {
    "WriteSummary",
    "WriteScalarSummary",
    "WriteRawProtoSummary",
    "ImportEvent",
    "FlushSummaryWriter",
}


def batches(count: int = BATCHES) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(count * 16, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=count * 16)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def tiny(steps_per_execution: int) -> ControlledModel:
    keras.utils.set_random_seed(0)
    model = ControlledModel(mlp((8, 8, 1), 10, hidden=(8,)), c.GradNormController(slope=0.05))
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )
    return model


def fit(model: ControlledModel, logdir, count: int = BATCHES) -> None:
    callback = PerBatchSummaries(str(logdir))
    model.fit(batches(count), verbose=0, callbacks=[callback])
    callback.close()


def graph_ops(model: ControlledModel) -> set[str]:
    """Every op in the graphs Keras traced for `fit` (its `multi_step_on_iterator`
    tf.function), including the functions of its library (while bodies, the step)."""
    compiled = model._compiled_train_function
    function = inspect.getclosurevars(compiled).nonlocals["multi_step_on_iterator"]
    concrete = function._list_all_concrete_functions()
    assert concrete
    ops = set()
    for f in concrete:
        graph_def = f.graph.as_graph_def()
        ops |= {n.op for n in graph_def.node}
        ops |= {n.op for fn in graph_def.library.function for n in fn.node_def}
    return ops


@pytest.mark.slow
def test_blocks_of_seven_give_every_step_once_as_one_per_call(tmp_path):
    seven, one = tiny(7), tiny(1)
    fit(seven, tmp_path / "seven")
    fit(one, tmp_path / "one")
    a, b = Events(tmp_path / "seven"), Events(tmp_path / "one")
    assert a.tags == b.tags
    assert {"lr", "loss/batch", "grad/global_norm", "guard/skipped", "controller/low_norm"} <= (
        a.tags
    )
    for tag in sorted(a.tags):
        np.testing.assert_array_equal(a.steps(tag), np.arange(BATCHES), err_msg=tag)
        np.testing.assert_allclose(a.values(tag), b.values(tag), rtol=1e-6, err_msg=tag)
    assert np.ptp(a.values("lr")) > 1e-4


def test_no_summary_op_in_the_compiled_train_function(tmp_path):
    model = tiny(7)
    fit(model, tmp_path)
    assert len(Events(tmp_path).steps("lr")) == BATCHES  # logging was on
    ops = graph_ops(model)
    assert not ops & SUMMARY_OPS, ops & SUMMARY_OPS
    assert "ResourceScatterNdUpdate" in ops  # the rows go to the buffer instead


def test_a_writer_set_by_the_caller_still_gets_the_summaries(tmp_path):
    """Without PerBatchSummaries there is nobody to drain a buffer: the step writes
    summary ops into the caller's default writer, as before."""
    model = tiny(3)
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        model.fit(batches(9), verbose=0)
    writer.close()
    np.testing.assert_array_equal(Events(tmp_path).steps("lr"), np.arange(9))
    assert graph_ops(model) & SUMMARY_OPS  # the detector sees summary ops when present


@pytest.mark.slow
def test_the_buffer_is_not_saved(tmp_path):
    model = tiny(5)
    fit(model, tmp_path / "logs", 10)
    ring = model._log_ring
    buffers = [ring.rows, ring.steps, ring.count]
    assert int(ring.count.numpy()) == 10
    ids = {id(v) for v in buffers}
    assert not ids & {id(v) for v in model.variables}
    assert not ids & {id(v) for v in model.weights}
    model.save_weights(tmp_path / "m.weights.h5")
    with h5py.File(tmp_path / "m.weights.h5", "r") as f:
        names: list[str] = []
        f.visit(names.append)
    assert not [n for n in names if "log" in n], names
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert getattr(loaded, "_log_ring", None) is None
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    names = [n for n, _ in tf.train.list_variables(path)]
    assert not [n for n in names if "log_" in n], names
    assert any("guard/skipped" in n for n in names), names


def test_batches_run_without_the_callback_are_written_up_to_the_buffer(tmp_path):
    """fit without the callback reuses the traced function, so its rows stay in the
    buffer (3 rows); the next fit with the callback writes the newest 3 and warns."""
    model = tiny(3)
    callback = PerBatchSummaries(str(tmp_path))
    model.fit(batches(6), verbose=0, callbacks=[callback])  # steps 0..5
    model.fit(batches(6), verbose=0)  # steps 6..11, not drained
    with pytest.warns(UserWarning, match=r"summaries of 6 batches were lost"):
        model.fit(batches(3), verbose=0, callbacks=[callback])  # steps 12..14
    callback.close()
    np.testing.assert_array_equal(Events(tmp_path).steps("lr"), [0, 1, 2, 3, 4, 5, 12, 13, 14])
