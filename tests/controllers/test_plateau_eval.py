"""`PlateauController` on an eval metric: Keras's `ReduceLROnPlateau` rule, one
evaluation per Keras epoch, checked against Keras's own callback and a Python
transcription of it; the decision at the batch after the evaluation; the monitor
checked before training; best/wait/cooldown across a checkpoint."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import PlateauController, Warmup, evaluation
from lrresearch.controllers.signals import make_signals
from tests.support import keras_callback_lrs

# Evaluation values with improvements, exact ties, gains below min_delta, NaN, and a
# long flat tail so the LR reaches min_lr.
RISING = [0.5, 0.6, 0.6, 0.6, 0.65, 0.65002, 0.64, 0.7, 0.7, float("nan"), 0.7, 0.69,
          0.71, 0.71, 0.71, 0.70, 0.72, *[0.72] * 12, 0.75, *[0.75] * 10]  # fmt: skip
FALLING = [2.0 - v for v in RISING]


def keras_transcription(values, lr, mode, patience, factor, cooldown, min_delta, min_lr):
    """keras/src/callbacks/reduce_lr_on_plateau.py `on_epoch_end` (Keras 3.15), with
    MonitorCallback's `_is_improvement`, in Python floats; the LR after each epoch."""
    best, wait, counter, out = None, 0, 0, []
    lr = float(np.float32(lr))  # the optimizer's float32 LR variable, read as a float
    delta = -abs(min_delta) if mode == "min" else abs(min_delta)
    op = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
    for current in values:
        if counter > 0:
            counter -= 1
            wait = 0
        if best is None or op(current - delta, best):
            best, wait = current, 0
        elif not counter > 0:
            wait += 1
            if wait >= patience and lr > np.float32(min_lr):
                lr = float(np.float32(max(lr * factor, min_lr)))  # the float32 variable
                counter, wait = cooldown, 0
        out.append(lr)
    return np.array(out, dtype=np.float32)


def driven(controller, values, batches_between=2, jit=False):
    """Our controller in one traced step (compiled by XLA with `jit`): each value handed
    over (host), then `batches_between` batches; the LR and `reduced` of the batch after
    each value."""
    step = tf.function(
        lambda: controller.compute(make_signals(0, 1.0)), autograph=False, jit_compile=jit
    )
    lrs, reduced, later = [], [], []
    for value in values:
        evaluation.observe(controller, {"accuracy": value})
        out = step()
        lrs.append(float(out.lr))
        reduced.append(float(out.diagnostics["reduced"]))
        for _ in range(batches_between - 1):  # no new value: nothing changes
            again = step()
            later.append((float(again.lr) == lrs[-1], float(again.diagnostics["reduced"])))
    assert step.experimental_get_tracing_count() == 1  # fed through variables: no retrace
    assert all(same and r == 0.0 for same, r in later)
    return np.array(lrs, dtype=np.float32), np.array(reduced)


CASES = [  # mode, patience, factor, cooldown, min_delta, min_lr, XLA
    ("max", 2, 0.5, 0, 1e-4, 0.0, False),
    ("max", 1, 0.3, 2, 0.0, 0.01, True),
    ("max", 0, 0.5, 1, 0.05, 0.02, False),
    ("min", 3, 0.1, 0, 1e-4, 1e-3, False),
    ("min", 1, 0.7, 3, 0.0, 0.0, False),
]


@pytest.mark.parametrize("mode,patience,factor,cooldown,min_delta,min_lr,jit", CASES)
def test_eval_plateau_matches_keras_reduce_lr_on_plateau(
    mode, patience, factor, cooldown, min_delta, min_lr, jit
):
    values = RISING if mode == "max" else FALLING
    args = (0.1, mode, patience, factor, cooldown, min_delta, min_lr)
    want = keras_callback_lrs(values, *args)
    np.testing.assert_array_equal(keras_transcription(values, *args), want)
    controller = PlateauController(
        initial_lr=0.1, monitor="eval/accuracy", mode=mode, patience=patience,
        factor=factor, cooldown=cooldown, min_delta=min_delta, min_lr=min_lr,
    )  # fmt: skip
    lrs, reduced = driven(controller, values, jit=jit)
    np.testing.assert_array_equal(lrs, want)
    assert want[-1] < 0.1  # it did cut
    before = np.concatenate([[np.float32(0.1)], want[:-1]])
    np.testing.assert_array_equal(reduced, (want != before).astype(float))


def test_mode_auto_follows_keras_metric_direction():
    available = evaluation.directions(
        [keras.metrics.SparseCategoricalAccuracy(name="accuracy"), keras.metrics.MeanSquaredError()]
    )
    assert available == {"loss": "down", "accuracy": "up", "mean_squared_error": "down"}
    up = PlateauController(monitor="eval/accuracy")
    evaluation.bind(Warmup(up, warmup_steps=5), available)  # found inside a wrapper
    assert int(up.direction.numpy()) == 1
    down = PlateauController(monitor="val_loss")  # Keras's spelling
    assert int(down.direction.numpy()) == -1
    odd = PlateauController(monitor="eval/auc_like")
    with pytest.raises(ValueError, match=r"PlateauController\.mode = 'auto' cannot tell"):
        evaluation.bind(odd, {"loss": "down", "auc_like": None})


def test_a_monitor_the_run_does_not_log_lists_the_names_it_does():
    controller = PlateauController(monitor="eval/acc")
    with pytest.raises(ValueError) as error:
        evaluation.bind(controller, {"loss": "down", "accuracy": "up"})
    message = str(error.value)
    assert message.startswith("PlateauController.monitor = 'eval/acc' is not logged by")
    assert "'eval/loss', 'eval/accuracy'" in message and "Trainer.metrics" in message
    with pytest.raises(ValueError, match="no held-out data"):
        evaluation.bind(controller, {})


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(monitor="eval/"), "PlateauController.monitor must be"),
        (dict(monitor="accuracy"), "PlateauController.monitor must be"),
        (dict(monitor="eval/accuracy", mode="up"), "PlateauController.mode must be"),
        (dict(monitor="loss_ma_long", mode="max"), "PlateauController.mode must be"),
        (dict(monitor="eval/loss", threshold=0.01), "PlateauController.threshold"),
        (dict(monitor="loss", min_delta=0.01), "PlateauController.min_delta"),
        (dict(monitor="eval/loss", min_delta=-1.0), "PlateauController.min_delta"),
        (dict(monitor="eval/loss", patience=-1), "PlateauController.patience"),
    ],
)
def test_bad_eval_arguments_name_the_binding(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlateauController(**kwargs)


def test_patience_defaults_per_monitor_and_warns_without_room():
    assert PlateauController().patience == 200  # batches, as before
    controller = PlateauController(monitor="eval/loss")
    assert controller.patience == 10  # evaluations, Keras's default
    evaluation.bind(controller, {"loss": "down"}, evaluations=10)
    [warning] = controller.run_warnings(1000)
    assert warning.startswith("PlateauController.patience = 10 evaluations leaves no room")
    evaluation.bind(controller, {"loss": "down"}, evaluations=11)
    assert controller.run_warnings(1000) == []


def test_before_any_evaluation_the_lr_holds_and_nan_is_shown():
    controller = PlateauController(initial_lr=0.2, monitor="eval/loss", patience=0)
    out = controller.compute(make_signals(0, 1.0))
    assert float(out.lr) == pytest.approx(0.2)
    assert math.isnan(float(out.diagnostics["monitored"]))
    assert float(out.diagnostics["reduced"]) == 0.0
