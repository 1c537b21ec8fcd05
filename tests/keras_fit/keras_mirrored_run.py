"""`ControlledModel.fit` on one device and under `MirroredStrategy` on 2 logical CPUs,
in a fresh process (the devices must be split before TensorFlow starts); prints what
`tests/keras_fit/test_keras_fit.py` checks, as JSON.

    python -m tests.keras_fit.keras_mirrored_run LOGDIR STEPS
"""

from __future__ import annotations

import json
import os
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lrresearch.controllers import GradNormController, LossTrendController  # noqa: E402
from lrresearch.keras_fit import ControlledModel, PerBatchSummaries  # noqa: E402
from lrresearch.step import precision  # noqa: E402
from lrresearch.workloads.data import BatchSampler, digits  # noqa: E402
from lrresearch.workloads.models import mlp  # noqa: E402

logdir, steps = sys.argv[1], int(sys.argv[2])
data = digits()
sampler = BatchSampler(data.x_train, data.y_train, 64, 0)
batches = [sampler.next() for _ in range(steps)]
x = np.concatenate([b[0].numpy() for b in batches])
y = np.concatenate([b[1].numpy() for b in batches])


def fit(
    strategy: tf.distribute.Strategy,
    name: str,
    steps_per_execution: int,
    x=x,
    y=y,
    policy: str = "off",
    loss_scale: float | None = None,
) -> ControlledModel:
    keras.utils.set_random_seed(0)
    with strategy.scope(), precision.policy(policy):
        model = ControlledModel(
            mlp(data.input_shape, data.num_classes, hidden=(32,)),
            LossTrendController(window=8, max_lr=0.3),
        )
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            steps_per_execution=steps_per_execution,
        )
        if loss_scale is not None:
            model.loss_scale.scale.assign(loss_scale)
    callback = PerBatchSummaries(os.path.join(logdir, name))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    try:
        history = model.fit(dataset, epochs=1, verbose=0, callbacks=[callback])
    finally:
        callback.close()
    model.epoch_loss = history.history["loss"][0]
    return model


single = fit(tf.distribute.get_strategy(), "single", 5)
strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
mirrored = fit(strategy, "mirrored", 1)
try:
    fit(strategy, "mirrored_5_per_call", 5)
    error = None
except ValueError as e:
    error = str(e)
# One NaN pixel in batch 3, in the slice replica 0 takes: the all-reduced norm is NaN on
# both replicas, so both skip the batch.
poisoned = x[: 10 * 64].copy()
poisoned[3 * 64 + 5, 3, 3, 0] = np.nan
nan_single = fit(tf.distribute.get_strategy(), "nan_single", 1, poisoned, y[: 10 * 64])
nan_mirrored = fit(strategy, "nan_mirrored", 1, poisoned, y[: 10 * 64])
# Float16 loss scaling on both replicas: 10 batches at Keras's scale, to compare with
# the float32 run; 25 from a scale of 2**40, whose first ~20 batches overflow.
float16 = fit(strategy, "float16_mirrored", 1, x[:640], y[:640], "mixed_float16")
overflow = fit(strategy, "overflow_mirrored", 1, x[:1600], y[:1600], "mixed_float16", 2.0**40)


def copies(variable) -> list[np.ndarray]:
    return [c.numpy() for c in strategy.experimental_local_results(variable.value)]


def max_diff(a: ControlledModel, b: ControlledModel) -> float:
    pairs = zip(a.trainable_variables, b.trainable_variables, strict=True)
    return max(float(np.max(np.abs(u.numpy() - v.numpy()))) for u, v in pairs)


def copy_diff(model: ControlledModel) -> float:
    weights = [copies(v) for v in model.trainable_variables]
    return max(float(np.max(np.abs(c - w[0]))) for w in weights for c in w[1:])


def guard(model: ControlledModel) -> dict[str, list[float]]:
    return {
        k: [float(c) for c in strategy.experimental_local_results(v)]
        for k, v in {**model.guard_state(), **model.loss_scale_state()}.items()
    }


def dropout_resume() -> dict[str, float]:
    """A Dropout model under the strategy: 5 batches straight, and from a `.weights.h5`
    and a `.keras` file saved after 3 (`random_state` in ControlledModel's files)."""

    def make() -> ControlledModel:
        keras.utils.set_random_seed(0)
        with strategy.scope():
            inputs = keras.Input(data.input_shape)
            hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(inputs))
            outputs = keras.layers.Dense(10)(keras.layers.Dropout(0.5)(hidden))
            model = ControlledModel(keras.Model(inputs, outputs), GradNormController(slope=0.05))
            model.compile(
                optimizer=keras.optimizers.SGD(learning_rate=0.1),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                steps_per_execution=1,
            )
            model.build((None, *data.input_shape))
            model.optimizer.build(model.trainable_variables)
        return model

    def batches(start: int, stop: int) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(
            (x[start * 64 : stop * 64], y[start * 64 : stop * 64])
        ).batch(64)

    # One PerBatchSummaries per model, open across its fits (under a strategy the
    # traced step holds the writer it was traced with).
    callbacks: dict[int, PerBatchSummaries] = {}

    def fit_logged(model: ControlledModel, start: int, stop: int, name: str) -> None:
        if id(model) not in callbacks:
            callbacks[id(model)] = PerBatchSummaries(os.path.join(logdir, "dropout_resume", name))
        model.fit(batches(start, stop), verbose=0, callbacks=[callbacks[id(model)]])

    folder = os.path.join(logdir, "dropout_resume")
    whole = make()
    fit_logged(whole, 0, 3, "whole")
    whole.save_weights(os.path.join(folder, "at.weights.h5"))
    whole.save(os.path.join(folder, "at.keras"))
    fit_logged(whole, 3, 5, "whole")
    from_weights = make()
    from_weights.load_weights(os.path.join(folder, "at.weights.h5"))
    with strategy.scope():
        from_keras = keras.models.load_model(os.path.join(folder, "at.keras"))
    report = {}
    for name, model in (("weights.h5", from_weights), ("keras", from_keras)):
        fit_logged(model, 3, 5, name)
        report[name] = max_diff(whole, model) + abs(
            float(whole.optimizer.learning_rate.numpy())
            - float(model.optimizer.learning_rate.numpy())
        )
    for callback in callbacks.values():
        callback.close()
    return report


print(
    json.dumps(
        {
            "replicas": strategy.num_replicas_in_sync,
            "dropout_resume": dropout_resume(),
            "weight_max_diff": max_diff(single, mirrored),
            "lr_copies": [float(v) for v in copies(mirrored.optimizer.learning_rate)],
            "weight_copy_max_diff": copy_diff(mirrored),
            "iterations": int(mirrored.optimizer.iterations.numpy()),
            "epoch_loss": {"single": single.epoch_loss, "mirrored": mirrored.epoch_loss},
            "steps_per_execution_error": error,
            "nan": {
                "weight_max_diff": max_diff(nan_single, nan_mirrored),
                "weight_copy_max_diff": copy_diff(nan_mirrored),
                "finite": all(np.isfinite(v.numpy()).all() for v in nan_mirrored.weights),
                "guard": guard(nan_mirrored),
                "single_skipped": int(nan_single.guard.skipped.numpy()),
                "iterations": int(nan_mirrored.optimizer.iterations.numpy()),
            },
            "float16": {
                "optimizer": type(float16.optimizer).__name__,
                "weight_copy_max_diff": copy_diff(float16),
            },
            "overflow": {
                "weight_copy_max_diff": copy_diff(overflow),
                "finite": all(np.isfinite(v.numpy()).all() for v in overflow.weights),
                "state": guard(overflow),
                "iterations": int(overflow.optimizer.iterations.numpy()),
            },
        }
    )
)
