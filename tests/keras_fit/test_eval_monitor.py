"""`PlateauController(monitor='val_<name>')` inside `ControlledModel.fit`: each epoch's
validation value reaches the controller, and the next epoch's first batch runs at the LR
Keras's own `ReduceLROnPlateau` would set; refused before training without validation
data, and with a name the epoch logs lack."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lrresearch.controllers import PlateauController
from lrresearch.keras_fit import ControlledModel
from lrresearch.keras_fit.eval_monitor import EvalMonitor
from lrresearch.workloads.data import digits
from lrresearch.workloads.models import mlp
from tests.support import keras_callback_lrs

PLATEAU = dict(initial_lr=0.5, patience=0, factor=0.5, cooldown=0, min_delta=0.1)


def fit_with(monitor: str, epochs: int = 4, validation: bool = True, metrics=("accuracy",)):
    keras.utils.set_random_seed(0)
    data = digits()
    controller = PlateauController(monitor=monitor, **PLATEAU)
    model = ControlledModel(mlp(data.input_shape, data.num_classes, hidden=(8,)), controller)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=PLATEAU["initial_lr"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=list(metrics),
    )
    first_batch_lrs = []

    def record(batch: int, logs=None) -> None:
        if batch == 0:
            first_batch_lrs.append(float(model.optimizer.learning_rate.numpy()))

    history = model.fit(
        data.x_train, data.y_train, batch_size=64, epochs=epochs, steps_per_epoch=4,
        verbose=0, callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=record)],
        validation_data=(data.x_eval, data.y_eval) if validation else None,
    )  # fmt: skip
    return history.history, np.array(first_batch_lrs, dtype=np.float32)


@pytest.mark.slow
def test_fit_cuts_the_lr_at_the_epoch_after_keras_would():
    logs, lrs = fit_with("val_loss")
    values = logs["val_loss"]
    p = PLATEAU
    after = keras_callback_lrs(values, p["initial_lr"], "min", p["patience"], p["factor"],
                               p["cooldown"], p["min_delta"], 0.0)  # fmt: skip
    np.testing.assert_array_equal(lrs[1:], after[:-1])  # epoch e+1 runs at the LR after e
    assert lrs[0] == np.float32(0.5) and lrs[-1] < lrs[0]


def test_fit_without_validation_data_is_refused_before_training():
    with pytest.raises(ValueError, match="fit got no validation_data or validation_split"):
        fit_with("val_loss", validation=False)


def test_a_name_the_epoch_logs_lack_lists_those_they_have():
    controller = PlateauController(monitor="val_acc")
    model = ControlledModel(mlp((4,), 3, hidden=(2,)), controller)
    model.compile(optimizer="sgd", loss="mse")
    monitor = EvalMonitor(controller)
    monitor.set_model(model)
    monitor.on_epoch_end(0, {"loss": 1.0})  # no validation this epoch: nothing to check
    with pytest.raises(ValueError) as error:
        monitor.on_epoch_end(1, {"loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5})
    message = str(error.value)
    assert message.startswith("PlateauController.monitor = 'val_acc' is not logged")
    assert "'val_loss', 'val_accuracy'" in message and "compile(metrics=...)" in message
