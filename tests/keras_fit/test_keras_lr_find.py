"""The LR range test inside a user's Keras `fit`: the in-graph ramp on their model and
pipeline, and the model and optimizer restored bit for bit afterwards."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.keras_fit.range_test import lr_find
from lrresearch.studies.lr_find import NoDescentError
from lrresearch.workloads.data import digits


def compiled_model(optimizer: keras.optimizers.Optimizer) -> keras.Model:
    """Dense, BatchNorm (non-trainable statistics) and Dropout (an RNG state)."""
    keras.utils.set_random_seed(0)
    data = digits()
    model = keras.Sequential(
        [
            keras.Input(data.input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(data.num_classes),
        ]
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def batches() -> tf.data.Dataset:
    data = digits()
    ds = tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train))
    return ds.shuffle(2000, seed=0).batch(64)


def state(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy().copy() for v in (*model.variables, *model.optimizer.variables)]


@pytest.mark.slow
def test_range_test_in_fit_restores_weights_and_optimizer_bit_for_bit():
    model = compiled_model(keras.optimizers.Adam(1e-3))
    model.fit(batches().take(5), verbose=0, shuffle=False)  # moments, iterations=5, BN statistics
    before = state(model)
    result = lr_find(model, batches(), start_lr=1e-5, end_lr=10.0, num_steps=60)
    after = state(model)
    assert len(before) == len(after) and all(
        np.array_equal(a, b) for a, b in zip(before, after, strict=True)
    )
    assert int(model.optimizer.iterations.numpy()) == 5
    n = len(result.lrs)
    np.testing.assert_allclose(result.lrs, 1e-5 * 1e6 ** (np.arange(n) / 59), rtol=1e-5)
    assert result.run_dir is None and np.isfinite(result.batch_losses[:10]).all()
    for value in result.suggestions().values():
        assert 1e-5 <= value <= 10.0
    # The restored model trains on as before.
    model.fit(batches().take(2), verbose=0, shuffle=False)
    assert int(model.optimizer.iterations.numpy()) == 7


def test_linear_ramp_stops_at_divergence_and_repeats_a_short_dataset():
    model = compiled_model(keras.optimizers.SGD(0.1))
    result = lr_find(
        model, batches().take(3), start_lr=1e-3, end_lr=30.0, num_steps=80, mode="linear"
    )
    assert result.stopped_early and len(result.lrs) < 80  # 3 batches, repeated
    n = len(result.lrs)
    np.testing.assert_allclose(result.lrs, 1e-3 + (30 - 1e-3) * np.arange(n) / 79, rtol=1e-5)


def test_a_curve_without_descent_names_the_keyword_arguments():
    model = compiled_model(keras.optimizers.SGD(0.1))
    with pytest.raises(NoDescentError, match="lower start_lr ") as caught:
        lr_find(model, batches(), start_lr=300.0, end_lr=3e5, num_steps=30)
    assert caught.value.result is not None and np.isnan(caught.value.result.valley_lr)


def test_uncompiled_model_and_an_lr_callable_without_arguments_are_refused():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="must be compiled"):
        lr_find(model, batches())
    # A schedule is set aside for the test (tests/keras_fit/test_keras_schedule_fit.py).
    with pytest.raises(ValueError, match="lr_find: the optimizer's learning_rate is a callable"):
        lr_find(compiled_model(keras.optimizers.SGD(lambda: 0.1)), batches())
