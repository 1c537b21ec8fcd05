"""Keras `model.fit` with a per-batch controller: the same LR sequence as the trainer."""

from __future__ import annotations

import gin
import keras
import numpy as np
import tensorflow as tf
from conftest import Events

from lrresearch import config
from lrresearch.controllers import GradNormController, LossTrendController
from lrresearch.data import BatchSampler, digits
from lrresearch.keras_fit import ControlledModel, PerBatchSummaries
from lrresearch.models import mlp
from lrresearch.trainer import Trainer

STEPS = 120


def keras_run(controller, logdir, steps_per_execution, extra_callbacks=()):
    """Same seed, data and batch order as `Trainer(seed=0, batch_size=64)`."""
    keras.utils.set_random_seed(0)
    data = digits()
    model = mlp(data.input_shape, data.num_classes, hidden=(32,))
    sampler = BatchSampler(data.x_train, data.y_train, 64, 0)
    batches = [sampler.next() for _ in range(STEPS)]
    ds = tf.data.Dataset.from_tensor_slices(
        (np.stack([b[0].numpy() for b in batches]), np.stack([b[1].numpy() for b in batches]))
    )
    wrapped = ControlledModel(model, controller)
    wrapped.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )
    wrapped.fit(
        ds, epochs=1, verbose=0, callbacks=[PerBatchSummaries(str(logdir)), *extra_callbacks]
    )
    return wrapped


def test_fit_gives_the_trainers_lr_sequence(tmp_path):
    config.parse([], ["mlp.hidden = (32,)"])
    try:
        trainer = Trainer(
            steps=STEPS,
            controller=GradNormController(slope=0.05),
            steps_per_loop=10,
            histogram_every=0,
            eval_every=0,
        )
        ours = Events(trainer.fit(logdir=str(tmp_path), run_name="ours", quiet=True).run_dir)
    finally:
        gin.clear_config()
    keras_run(
        GradNormController(slope=0.05),
        tmp_path / "keras",
        steps_per_execution=5,
        extra_callbacks=[
            keras.callbacks.TensorBoard(str(tmp_path / "keras_tb")),
            keras.callbacks.EarlyStopping(monitor="loss", patience=50),
        ],
    )
    theirs = Events(tmp_path / "keras")
    for tag in ("lr", "loss/batch", "grad/global_norm", "loss/ma_long"):
        np.testing.assert_allclose(theirs.scalar(tag), ours.scalar(tag), rtol=1e-5, err_msg=tag)
    assert np.ptp(ours.scalar("lr")) > 1e-3  # the controller actually moved the LR
    assert "controller/low_norm" in theirs.tags


def test_controller_state_is_saved_with_the_model(tmp_path):
    wrapped = keras_run(LossTrendController(window=10, max_lr=0.5), tmp_path / "k", 1)
    path = tf.train.Checkpoint(model=wrapped).save(str(tmp_path / "ckpt"))
    names = [n for n, _ in tf.train.list_variables(path)]
    assert any("controller/losses" in n for n in names), names
    assert any("ma_long/buffer" in n for n in names), names


def small_controlled_model():
    keras.utils.set_random_seed(0)
    data = digits()
    wrapped = ControlledModel(
        mlp(data.input_shape, data.num_classes, hidden=(8,)), GradNormController()
    )
    wrapped.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return data, wrapped


def test_summaries_survive_a_second_fit(tmp_path):
    data, wrapped = small_controlled_model()
    callback = PerBatchSummaries(str(tmp_path))
    for _ in range(2):  # Keras reuses its traced train function across fit calls
        wrapped.fit(
            data.x_train[:320],
            data.y_train[:320],
            batch_size=32,
            epochs=1,
            verbose=0,
            callbacks=[callback],
        )
    callback.close()
    assert len(Events(tmp_path).scalar("lr")) == 20  # steps 0..19, once each


def test_the_default_writer_does_not_outlive_fit(tmp_path):
    data, wrapped = small_controlled_model()
    callback = PerBatchSummaries(str(tmp_path))
    wrapped.fit(
        data.x_train[:64], data.y_train[:64], batch_size=32, verbose=0, callbacks=[callback]
    )
    # Nothing is recorded outside fit: no default writer is left behind.
    assert not tf.summary.should_record_summaries()
    callback.close()
