"""`ControlledModel` compiled with an optimizer whose LR is a Keras schedule: with no
controller the schedule runs as `ScheduleController`, batch by batch as Keras's own
`fit` applies it; a controller given too wins, with a warning; the LR finder sets the
schedule aside for its ramp and puts the optimizer back exactly."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch import controllers as c
from lrresearch.keras_fit import ControlledModel, PerBatchSummaries
from lrresearch.keras_fit.range_test import lr_find
from tests.support import read_events

S = keras.optimizers.schedules
BATCHES = 12


@keras.saving.register_keras_serializable(package="lrresearch_tests")
class LinearWarmupRsqrt(S.LearningRateSchedule):
    """A user's own schedule: `peak * min((t + 1) / warmup, sqrt(warmup / (t + 1)))`."""

    def __init__(self, peak: float = 0.1, warmup_steps: int = 4):
        self.peak, self.warmup_steps = peak, warmup_steps

    def __call__(self, step):
        t = keras.ops.cast(step, "float32") + 1.0
        w = float(self.warmup_steps)
        return self.peak * keras.ops.minimum(t / w, keras.ops.sqrt(w / t))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps}


def reference(t: int) -> float:
    return 0.3 * min((t + 1) / 4, math.sqrt(4 / (t + 1)))


def small_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )


def batches() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16 * BATCHES, 5)).astype("float32")
    y = (x @ rng.normal(size=(5, 1)) + 0.1).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


class WeightsEveryBatch(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch, logs=None):
        inner = getattr(self.model, "inner", self.model)
        self.weights.append([w.copy() for w in inner.get_weights()])


@pytest.mark.slow
def test_fit_with_a_schedule_and_no_controller_applies_kerass_lr_every_batch(tmp_path):
    plain = small_model()
    plain.compile(optimizer=keras.optimizers.SGD(LinearWarmupRsqrt(0.3)), loss="mse")
    kerass = WeightsEveryBatch()
    plain.fit(batches(), verbose=0, shuffle=False, callbacks=[kerass])

    wrapped = ControlledModel(small_model())
    wrapped.compile(optimizer=keras.optimizers.SGD(LinearWarmupRsqrt(0.3)), loss="mse")
    assert isinstance(wrapped.controller, c.ScheduleController)
    ours, summaries = WeightsEveryBatch(), PerBatchSummaries(str(tmp_path))
    wrapped.fit(batches(), verbose=0, shuffle=False, callbacks=[ours, summaries])
    summaries.close()

    assert len(ours.weights) == len(kerass.weights) == BATCHES
    for t, (a, b) in enumerate(zip(ours.weights, kerass.weights, strict=True)):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7, err_msg=f"batch {t}")
    lrs = read_events(tmp_path).scalar("lr")
    np.testing.assert_allclose(lrs, [reference(t) for t in range(BATCHES)], rtol=1e-6)
    # The optimizer holds a float LR variable, placed as Keras places its own.
    names = [v.name for v in wrapped.optimizer.variables]
    assert names == ["iteration", "learning_rate"]
    assert float(wrapped.optimizer.learning_rate.numpy()) == pytest.approx(reference(11))
    # A `.keras` file records the schedule in the controller's config and rebuilds it.
    wrapped.save(tmp_path / "run.keras")
    loaded = keras.models.load_model(tmp_path / "run.keras")
    assert isinstance(loaded.controller, c.ScheduleController)
    assert loaded.controller.schedule.get_config() == {"peak": 0.3, "warmup_steps": 4}
    assert int(loaded.optimizer.iterations.numpy()) == BATCHES


def test_a_controller_given_with_a_schedule_wins_with_a_warning():
    wrapped = ControlledModel(small_model(), c.ConstantController(0.01))
    with pytest.warns(UserWarning, match="the controller sets the LR every batch") as caught:
        wrapped.compile(optimizer=keras.optimizers.SGD(S.ExponentialDecay(0.5, 2, 0.5)), loss="mse")
    assert "wrap ScheduleController(schedule) in Warmup, Product" in str(caught[0].message)
    assert isinstance(wrapped.controller, c.ConstantController)
    assert isinstance(wrapped.optimizer._learning_rate, keras.Variable)  # what it assigns


def test_a_recompile_with_another_schedule_follows_it():
    wrapped = ControlledModel(small_model())
    wrapped.compile(optimizer=keras.optimizers.SGD(S.ExponentialDecay(0.5, 2, 0.5)), loss="mse")
    second = S.PiecewiseConstantDecay([1], [0.2, 0.1])
    wrapped.compile(optimizer=keras.optimizers.SGD(second), loss="mse")
    assert wrapped.controller.schedule is second


def test_no_controller_and_a_float_lr_is_refused_at_compile():
    wrapped = ControlledModel(small_model())
    with pytest.raises(ValueError, match="ControlledModel needs a controller: pass one"):
        wrapped.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")


@pytest.mark.slow
def test_lr_find_sets_a_schedule_aside_and_restores_the_optimizer_exactly():
    schedule = S.CosineDecay(0.0, 50, warmup_target=0.05, warmup_steps=5)
    model = small_model()
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9), loss="mse")
    model.fit(batches().take(3), verbose=0, shuffle=False)  # momenta, iterations = 3
    optimizer = model.optimizer
    own = list(optimizer.variables)
    before = [v.numpy().copy() for v in (*model.variables, *own)]
    result = lr_find(model, batches(), start_lr=1e-4, end_lr=3.0, num_steps=30)
    n = len(result.lrs)
    np.testing.assert_allclose(result.lrs, 1e-4 * 3e4 ** (np.arange(n) / 29), rtol=1e-5)
    assert optimizer._learning_rate is schedule  # the same object, as the LR again
    assert [id(v) for v in optimizer.variables] == [id(v) for v in own]  # no LR variable left
    after = [v.numpy() for v in (*model.variables, *optimizer.variables)]
    assert len(after) == len(before)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.03)  # schedule(3)
    model.fit(batches().take(2), verbose=0, shuffle=False)  # trains on with its schedule
    assert int(optimizer.iterations.numpy()) == 5
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.05)  # schedule(5)
