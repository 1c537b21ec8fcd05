"""`ControlledModel` with Dropout resumes exactly from its Keras saves: `.keras` files
and `BackupAndRestore` (`.weights.h5`) carry the random streams
(`lrresearch.step.random_state`); a file saved without them loads with a warning."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import GradNormController
from lrresearch.keras_fit import ControlledModel
from lrresearch.workloads.data import digits

BATCHES, SAVE_AT = 5, 3  # batches per epoch (of 32); one save, after SAVE_AT batches


def dropout_model(dropouts: int = 1) -> ControlledModel:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(inputs))
    for _ in range(dropouts):
        x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(10)(x)
    wrapped = ControlledModel(keras.Model(inputs, outputs), GradNormController(slope=0.05))
    wrapped.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    wrapped.build((None, 8, 8, 1))  # BackupAndRestore needs a built model
    wrapped.optimizer.build(wrapped.trainable_variables)
    return wrapped


def batches() -> tf.data.Dataset:
    data = digits()
    return tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train)).take(32 * BATCHES)


def weights(model: ControlledModel) -> list[np.ndarray]:
    return [v.numpy() for v in model.trainable_variables]


class Crash(keras.callbacks.Callback):
    """Raises in epoch `epoch` (from 0), as a killed process would stop."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("crash")


def test_a_keras_save_resumes_the_dropout_stream_exactly(tmp_path):
    whole = dropout_model()
    path = tmp_path / "at.keras"
    save = keras.callbacks.ModelCheckpoint(path, save_freq=SAVE_AT)
    whole.fit(batches().batch(32), epochs=1, verbose=0, callbacks=[save])
    resumed = keras.models.load_model(path)
    resumed.fit(batches().skip(32 * SAVE_AT).batch(32), epochs=1, verbose=0)
    assert float(resumed.optimizer.learning_rate) == float(whole.optimizer.learning_rate)
    for a, b in zip(weights(whole), weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_backup_and_restore_resumes_the_dropout_stream_exactly(tmp_path):
    whole = dropout_model()
    whole.fit(batches().batch(32), epochs=3, verbose=0)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="crash"):
        dropout_model().fit(batches().batch(32), epochs=3, verbose=0, callbacks=[backup, Crash(2)])
    resumed = dropout_model()  # a fresh process would draw the same initial seeds
    resumed.fit(batches().batch(32), epochs=3, verbose=0, callbacks=[backup])
    assert int(resumed.optimizer.iterations) == 3 * BATCHES
    for a, b in zip(weights(whole), weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_file_saved_without_random_state_loads_with_a_warning(tmp_path):
    saved = dropout_model()
    saved.fit(batches().batch(32), epochs=1, verbose=0)
    # As earlier versions saved it: ControlledModel's own entries without random_state.
    saved.save_own_variables = lambda store, save=saved.save_own_variables: save(
        _WithoutRandomState(store)
    )
    saved.save_weights(tmp_path / "old.weights.h5")
    loaded = dropout_model()
    with pytest.warns(UserWarning, match=r"random generator\(s\) .* start new streams"):
        loaded.load_weights(tmp_path / "old.weights.h5")
    for a, b in zip(weights(saved), weights(loaded), strict=True):
        np.testing.assert_array_equal(a, b)


class _WithoutRandomState(dict):
    """A Keras weights store that drops the `random_state.<i>` entries."""

    def __init__(self, store):
        super().__init__()
        self.store = store

    def __setitem__(self, key, value):
        if not key.startswith("random_state."):
            self.store[key] = value


def test_a_tf_train_checkpoint_of_the_model_holds_the_random_streams(tmp_path):
    model = dropout_model()
    for _ in range(3):  # three draws of the Dropout mask
        model(np.zeros((2, 8, 8, 1), np.float32), training=True)
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    fresh = dropout_model()
    tf.train.Checkpoint(model=fresh).read(path).assert_existing_objects_matched()
    [state] = fresh.random_state.seed_states
    assert state.numpy()[1] == 3
    np.testing.assert_array_equal(state.numpy(), model.random_state.seed_states[0].numpy())


def test_a_file_with_other_random_layers_is_refused_naming_the_fix(tmp_path):
    dropout_model().save_weights(tmp_path / "one.weights.h5")
    with pytest.raises(ValueError, match=r"holds 1 random generator state\(s\).* this model 2"):
        dropout_model(dropouts=2).load_weights(tmp_path / "one.weights.h5")
