"""`ControlledModel.fit` on one device and under `MirroredStrategy` on 2 logical CPUs,
in a fresh process (the devices must be split before TensorFlow starts); prints what
`tests/test_keras_fit.py` checks, as JSON.

    python tests/keras_mirrored_run.py LOGDIR STEPS
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

from lrresearch.controllers import LossTrendController  # noqa: E402
from lrresearch.data import BatchSampler, digits  # noqa: E402
from lrresearch.keras_fit import ControlledModel, PerBatchSummaries  # noqa: E402
from lrresearch.models import mlp  # noqa: E402

logdir, steps = sys.argv[1], int(sys.argv[2])
data = digits()
sampler = BatchSampler(data.x_train, data.y_train, 64, 0)
batches = [sampler.next() for _ in range(steps)]
x = np.concatenate([b[0].numpy() for b in batches])
y = np.concatenate([b[1].numpy() for b in batches])


def fit(strategy: tf.distribute.Strategy, name: str, steps_per_execution: int) -> ControlledModel:
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = ControlledModel(
            mlp(data.input_shape, data.num_classes, hidden=(32,)),
            LossTrendController(window=8, max_lr=0.3),
        )
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            steps_per_execution=steps_per_execution,
        )
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


def copies(variable) -> list[np.ndarray]:
    return [c.numpy() for c in strategy.experimental_local_results(variable.value)]


pairs = zip(single.trainable_variables, mirrored.trainable_variables, strict=True)
weights = [copies(v) for v in mirrored.trainable_variables]
print(
    json.dumps(
        {
            "replicas": strategy.num_replicas_in_sync,
            "weight_max_diff": max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in pairs),
            "lr_copies": [float(v) for v in copies(mirrored.optimizer.learning_rate)],
            "weight_copy_max_diff": max(
                float(np.max(np.abs(c - w[0]))) for w in weights for c in w[1:]
            ),
            "iterations": int(mirrored.optimizer.iterations.numpy()),
            "epoch_loss": {"single": single.epoch_loss, "mirrored": mirrored.epoch_loss},
            "steps_per_execution_error": error,
        }
    )
)
