"""Keras `model.fit` with a per-batch controller: the same LR sequence as the trainer,
and Keras's saving paths carry the controller's state."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch import controllers as c
from lrresearch.config import parse as config
from lrresearch.controllers.base import deserialize_controller, serialize_controller
from lrresearch.controllers.signals import make_signals
from lrresearch.keras_fit import ControlledModel, PerBatchSummaries
from lrresearch.training.trainer import Trainer
from lrresearch.workloads.data import digits
from lrresearch.workloads.models import mlp
from tests.support import BATCH_TAGS, REPO, Events, digit_batches

STEPS = 120


def controlled_mlp(controller: c.Controller, steps_per_execution: int = 1) -> ControlledModel:
    """The trainer's model (seed 0, `mlp(hidden=(32,))`, SGD at 0.1) around `controller`."""
    keras.utils.set_random_seed(0)
    data = digits()
    wrapped = ControlledModel(mlp(data.input_shape, data.num_classes, hidden=(32,)), controller)
    wrapped.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )
    return wrapped


def fit_batches(wrapped: ControlledModel, x, y, logdir, callbacks=()) -> None:
    """One epoch over the stacked batches `x`, `y`, with summaries in `logdir`."""
    summaries = PerBatchSummaries(str(logdir))
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    wrapped.fit(ds, epochs=1, verbose=0, callbacks=[summaries, *callbacks])
    summaries.close()


def keras_run(controller, logdir, steps_per_execution, extra_callbacks=()):
    """Same seed, data and batch order as `Trainer(seed=0, batch_size=64)`."""
    wrapped = controlled_mlp(controller, steps_per_execution)
    fit_batches(wrapped, *digit_batches(STEPS), logdir, extra_callbacks)
    return wrapped


CONTROLLERS = {
    "grad_norm": (lambda: c.GradNormController(slope=0.05), "controller/low_norm"),
    # Watches the weights: ControlledModel must call build(variables) as the trainer does.
    "hypergradient": (
        lambda: c.HypergradientController(initial_lr=0.05, hyper_lr=0.05),
        "controller/hypergradient",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONTROLLERS))
def test_fit_gives_the_trainers_lr_sequence(tmp_path, name):
    make_controller, diagnostic = CONTROLLERS[name]
    config.parse([], ["mlp.hidden = (32,)"])
    try:
        trainer = Trainer(
            steps=STEPS,
            controller=make_controller(),
            steps_per_loop=10,
            histogram_every=0,
            eval_every=0,
        )
        ours = Events(trainer.fit(logdir=str(tmp_path), run_name="ours", quiet=True).run_dir)
    finally:
        gin.clear_config()
    keras_run(
        make_controller(),
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
    assert diagnostic in theirs.tags


def test_controller_state_is_saved_with_the_model(tmp_path):
    wrapped = keras_run(c.LossTrendController(window=10, max_lr=0.5), tmp_path / "k", 1)
    path = tf.train.Checkpoint(model=wrapped).save(str(tmp_path / "ckpt"))
    names = [n for n, _ in tf.train.list_variables(path)]
    assert any("controller/losses" in n for n in names), names
    assert any("ma_long/buffer" in n for n in names), names
    assert any("guard/skipped" in n for n in names), names


@pytest.mark.slow
def test_fit_logs_the_epoch_mean_of_the_batch_losses_and_compiled_metrics(tmp_path):
    """`History`, Keras's TensorBoard callback and `EarlyStopping` see the real loss:
    per epoch the mean of `loss/batch` (equal batches), not the 0 of an untouched loss
    tracker, on which `EarlyStopping(patience=1)` stopped this decreasing run after 2
    epochs."""
    epochs, per_epoch = 4, 25
    x, y = digit_batches(per_epoch)
    wrapped = controlled_mlp(c.ConstantController(0.1))
    wrapped.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    summaries = PerBatchSummaries(str(tmp_path / "ours"))
    history = wrapped.fit(
        tf.data.Dataset.from_tensor_slices((x, y)),
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[
            summaries,
            keras.callbacks.TensorBoard(str(tmp_path / "keras_tb")),
            keras.callbacks.EarlyStopping(monitor="loss", patience=1),
        ],
    )
    summaries.close()
    assert history.epoch == list(range(epochs))  # EarlyStopping did not fire
    batch_losses = Events(tmp_path / "ours").scalar("loss/batch").reshape(epochs, per_epoch)
    np.testing.assert_allclose(history.history["loss"], batch_losses.mean(axis=1), rtol=1e-5)
    assert np.all(np.diff(history.history["loss"]) < 0)
    keras_tb = Events(tmp_path / "keras_tb" / "train")
    np.testing.assert_allclose(keras_tb.values("epoch_loss"), history.history["loss"], rtol=1e-6)
    accuracy = history.history["accuracy"]
    assert np.all(np.diff(accuracy) > 0) and 0.7 < accuracy[-1] <= 1.0, accuracy


def test_fit_weights_the_loss_by_sample_weight():
    data, wrapped = small_controlled_model(c.ConstantController(0.5))
    before = [v.numpy() for v in wrapped.trainable_variables]
    history = wrapped.fit(
        data.x_train[:64], data.y_train[:64], sample_weight=np.zeros(64), batch_size=32, verbose=0
    )
    assert history.history["loss"] == [0.0]
    for a, b in zip(before, wrapped.trainable_variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())  # zero weight, zero update


class PicksOptimizer(c.ConstantController):
    """Refuses momentum SGD, as `HypergradientController` does, and warns once."""

    def check_optimizer(self, optimizer: keras.optimizers.Optimizer) -> None:
        if getattr(optimizer, "momentum", 0.0):
            raise ValueError("PicksOptimizer cannot be exact with Keras momentum SGD")

    def run_warnings(self, steps: int | None) -> list[str]:
        return ["PicksOptimizer: a warning about its arguments"]


def test_compile_asks_the_controller_to_check_the_optimizer():
    model = ControlledModel(keras.Sequential([keras.layers.Dense(1)]), PicksOptimizer(0.1))
    with pytest.warns(UserWarning, match="a warning about its arguments"):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    with pytest.raises(ValueError, match="momentum"):
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")


def small_controlled_model(controller: c.Controller | None = None):
    keras.utils.set_random_seed(0)
    data = digits()
    wrapped = ControlledModel(
        mlp(data.input_shape, data.num_classes, hidden=(8,)), controller or c.GradNormController()
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


# Saving. Train SAVE_AT batches, save, resume in a new object, train RESUME more.
SAVE_AT, RESUME = 60, 40


def loss_trend() -> c.Controller:
    return c.LossTrendController(initial_lr=0.1, window=16, min_lr=0.01, max_lr=0.5)


def composed() -> c.Controller:
    """State in a nested part (`parts.1`), a subclass of `Product` and a list argument;
    `MaxChange` reads the previous LR, i.e. the optimizer's restored LR variable."""
    return c.MaxChange(
        c.Chain(
            [
                c.CyclicalController(0.02, 0.2, cycle_length=25, nudge_below_loss=1.5),
                loss_trend(),
            ],
            boundaries=[50],
        ),
        max_change_ratio=0.2,
    )


class StateAfter(keras.callbacks.Callback):
    """Records the controller state (`controller_state()`) after batch `step`."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step
        self.values: dict[str, np.ndarray] = {}

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.step:
            self.values = {k: v.numpy() for k, v in self.model.controller_state().items()}


@pytest.mark.slow
@pytest.mark.parametrize("make_controller", [loss_trend, composed])
def test_training_resumed_from_a_keras_save_gives_the_uninterrupted_lrs(tmp_path, make_controller):
    x, y = digit_batches(SAVE_AT + RESUME)
    weights_file, keras_file = tmp_path / "at.weights.h5", tmp_path / "at.keras"
    saved = StateAfter(SAVE_AT)
    checkpoints = [
        keras.callbacks.ModelCheckpoint(weights_file, save_weights_only=True, save_freq=SAVE_AT),
        keras.callbacks.ModelCheckpoint(keras_file, save_freq=SAVE_AT),
    ]
    fit_batches(controlled_mlp(make_controller()), x, y, tmp_path / "whole", [*checkpoints, saved])
    whole = Events(tmp_path / "whole")
    assert np.ptp(whole.scalar("lr")[SAVE_AT:]) > 1e-3  # the controller keeps moving the LR
    assert saved.values["loss_ma_long.count"] == SAVE_AT

    from_weights = controlled_mlp(make_controller())
    from_weights.build((None, *x.shape[2:]))
    from_weights.optimizer.build(from_weights.trainable_variables)
    from_weights.load_weights(weights_file)
    resumed = {"weights.h5": from_weights, "keras": keras.models.load_model(keras_file)}
    for name, model in resumed.items():
        assert type(model.controller) is type(from_weights.controller)
        state = {k: v.numpy() for k, v in model.controller_state().items()}
        assert state.keys() == saved.values.keys(), name
        for key, value in saved.values.items():
            np.testing.assert_array_equal(state[key], value, err_msg=f"{name}: {key}")
        assert int(model.optimizer.iterations) == SAVE_AT

        fit_batches(model, x[SAVE_AT:], y[SAVE_AT:], tmp_path / name)
        events = Events(tmp_path / name)
        for tag in ("lr", "loss/batch", "loss/ma_short", "loss/ma_long"):
            np.testing.assert_array_equal(
                events.steps(tag), np.arange(SAVE_AT, SAVE_AT + RESUME), err_msg=tag
            )
            np.testing.assert_allclose(
                events.values(tag), whole.scalar(tag)[SAVE_AT:], rtol=1e-6, err_msg=f"{name}: {tag}"
            )


@pytest.mark.slow
def test_the_guides_keras_resume_recipe_logs_each_step_once(tmp_path):
    """Saved after 8 batches, the run logged 12 (as a process killed after batch 11
    leaves it); the model restored from the `.keras` file goes on from step 8."""
    data, wrapped = small_controlled_model()
    x, y = data.x_train[: 32 * 12], data.y_train[: 32 * 12]
    saved, first = tmp_path / "model.keras", PerBatchSummaries(str(tmp_path))
    checkpoint = keras.callbacks.ModelCheckpoint(saved, save_freq=8)
    fit = {"batch_size": 32, "verbose": 0, "shuffle": False}
    wrapped.fit(x, y, callbacks=[first, checkpoint], **fit)
    first.close()
    logged = Events(tmp_path).scalar("lr")

    model = keras.models.load_model(saved)
    with pytest.raises(ValueError, match=r"up to step 11.*next batch is step 8.*resume=True"):
        model.fit(x[:32], y[:32], callbacks=[PerBatchSummaries(str(tmp_path))], **fit)
    assert len(Events(tmp_path).steps("lr")) == 12  # refused before any batch
    again = PerBatchSummaries(str(tmp_path), resume=True)
    model.fit(x[32 * 8 :], y[32 * 8 :], callbacks=[again], **fit)
    again.close()
    np.testing.assert_allclose(Events(tmp_path).scalar("lr"), logged, rtol=1e-6)  # once each


def built(wrapped: ControlledModel) -> ControlledModel:
    wrapped.build((None, 8, 8, 1))
    wrapped.optimizer.build(wrapped.trainable_variables)
    return wrapped


@pytest.mark.slow
def test_loading_another_controllers_state_names_both_and_the_fix(tmp_path):
    path = tmp_path / "trend10.weights.h5"
    data, saver = small_controlled_model(c.LossTrendController(window=10, max_lr=0.5))
    saver.fit(data.x_train[:128], data.y_train[:128], batch_size=32, verbose=0)
    saver.save_weights(path)

    for other, expected in [
        (
            c.LossTrendController(window=20, max_lr=0.5),
            "this model: controller.count [], controller.losses [20]",
        ),
        (c.GradNormController(), "this model: loss_ma_long.buffer"),
    ]:
        _, loader = small_controlled_model(other)
        loader = built(loader)
        with pytest.raises(ValueError) as error:
            loader.load_weights(path)
        message = str(error.value)
        assert f"does not fit this model's {type(other).__name__}" in message
        assert "saved:      controller.count [], controller.losses [10]" in message
        assert expected in message
        assert "keras.models.load_model" in message and "skip_mismatch=True" in message
        # Nothing of the controller state was half-loaded.
        assert all(
            int(v.numpy()) == 0 for k, v in loader.controller_state().items() if k.endswith("count")
        )

    # The documented way out: the rest loads, the controller starts afresh.
    _, loader = small_controlled_model(c.GradNormController())
    loader = built(loader)
    with pytest.warns(UserWarning, match="could not be loaded"):
        loader.load_weights(path, skip_mismatch=True)
    for a, b in zip(loader.weights, saver.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(loader.optimizer.iterations) == 4


def test_state_keys_follow_the_structure_not_the_creation_order():
    plateau_first = c.Chain([c.PlateauController(), loss_trend()], boundaries=[50])
    trend = loss_trend()  # this time the second part's variables are created first
    trend_first = c.Chain([c.PlateauController(), trend], boundaries=[50])
    keys = [
        list(ControlledModel(keras.Sequential([keras.layers.Dense(1)]), ctrl).controller_state())
        for ctrl in (plateau_first, trend_first)
    ]
    assert (
        keys[0]
        == keys[1]
        == [
            "controller.parts.0.best",
            "controller.parts.0.cooldown_left",
            "controller.parts.0.lr",
            "controller.parts.0.num_bad",
            "controller.parts.1.count",
            "controller.parts.1.losses",
            "controller.parts.1.lr",
            "loss_ma_short.buffer",
            "loss_ma_short.count",
            "loss_ma_long.buffer",
            "loss_ma_long.count",
        ]
    )


def every_controller() -> list[c.Controller]:
    """One of each exported controller, with non-default arguments where it matters."""
    return [
        c.Chain([c.ConstantController(0.1), loss_trend()], boundaries=[3]),
        c.Clamp(c.PolyakController(max_lr=2.0), min_lr=0.05, max_lr=0.5),
        c.ConstantController(0.3),
        c.CosineCycleController(0.01, 0.2, cycle_length=4),
        c.CosineRestartsController(0.2, T_0=3, T_mult=2, eta_min=0.01),
        c.CyclicController(0.01, 0.2, step_size_up=2, step_size_down=3, mode="triangular2"),
        c.CyclicalController(0.02, 0.2, cycle_length=5, nudge_below_loss=2.5, nudge_factor=1.5),
        c.DAdaptSGDController(c=0.9, d0=1e-3, growth_rate=1.5),
        c.DecayFollowsLR(c.PolyakController(max_lr=2.0), weight_decay=0.01, power=2.0),
        c.DoGController(reps_rel=1e-4, c=0.9),
        c.DoWGController(init_estim_sq_dist=1e-2),
        c.GradNormController(base_lr=0.2, slope=0.1),
        c.HypergradientController(initial_lr=0.1, hyper_lr=0.01),
        c.LossNudgeFactor(below_loss=2.5, factor=2.0),
        loss_trend(),
        c.MaxChange(c.OneCycleController(0.5, total_steps=8), max_change_ratio=0.1),
        c.OneCycleController(0.5, total_steps=10, three_phase=True),
        c.PlateauController(initial_lr=0.2, monitor="loss", patience=1, factor=0.5),
        c.PlateauController(initial_lr=0.2, monitor="val_loss", patience=1, min_delta=0.1),
        c.PolyakController(c=0.3, max_lr=0.8),
        c.Product(c.ConstantController(0.1), c.LossNudgeFactor(2.5, 3.0)),
        c.ScheduleController(
            keras.optimizers.schedules.CosineDecay(0.2, 5, 0.1, warmup_target=0.3, warmup_steps=2)
        ),
        c.TimmCosineController(0.2, 3, 0.01, 2.0, 0.5, 3, 1, noise_range_t=(2, 6), noise_seed=3),
        c.Warmup(c.ConstantController(0.2), warmup_steps=4, shape="exponential"),
        c.WarmupCosineController(0.2, warmup_steps=2, decay_steps=6),
        c.WSDController(0.2, 2, 2, 3, "cosine", "1-sqrt", 0.1),
        c.InverseSqrtController(0.2, 2, 3, True, 1e-3),
        c.PolynomialDecayController(0.2, 2, 0.01, 2.0, True, 1),
        c.ExponentialDecayController(0.2, 2, 0.5, True, 1, 0.05),
        c.InverseTimeDecayController(0.2, 2, 0.5, True),
        c.PiecewiseConstantController([1, 3], [0.2, 0.1, 0.05], "next"),
        c.StepController(0.2, 2, 0.5),
        c.MultiStepController(0.2, [1, 3, 3], 0.5),
        c.NGNController(lr=0.7, lb=-0.1, momentum=0.5),
        c.AdaGradNormController(lr=0.4, b0=0.2),
    ]


def test_every_controller_is_rebuilt_from_its_config():
    examples = every_controller()
    exported = {
        cls
        for name in c.__all__
        if isinstance(cls := getattr(c, name), type) and issubclass(cls, c.Controller)
    }
    assert exported - {c.Controller} == {type(e) for e in examples}
    w = tf.Variable([1.0, -2.0])
    for original in examples:
        config = json.loads(json.dumps(serialize_controller(original)))
        rebuilt = deserialize_controller(config)
        assert type(rebuilt) is type(original)
        assert serialize_controller(rebuilt) == config
        original.build([w])
        rebuilt.build([w])
        for step, loss in enumerate([2.3, 2.0, 2.6, 1.9, 2.8, 1.7, 1.6]):
            signals = make_signals(step, loss, grads=[tf.constant([0.5, step - 2.0])], lr=0.1)
            np.testing.assert_allclose(
                rebuilt(signals).numpy(), original(signals).numpy(), err_msg=f"{config} {step}"
            )
            w.assign_sub([0.01, 0.02])


def test_the_config_records_the_gin_bound_arguments():
    config.parse([], ["LossTrendController.window = 7", "LossTrendController.max_lr = 0.3"])
    try:
        trend = c.LossTrendController()
    finally:
        gin.clear_config()
    rebuilt = deserialize_controller(serialize_controller(trend))
    assert (rebuilt.window, rebuilt.max_lr) == (7, 0.3)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.distributed
def test_fit_under_mirrored_strategy_matches_one_device(tmp_path):
    """`tests/keras_fit/keras_mirrored_run.py` (a fresh process: the CPU is split into 2 logical
    devices before TensorFlow starts) fits the same batches on one device and under
    MirroredStrategy: same LR, loss and gradient norm at every batch, same weights, one
    LR on both replicas, summaries written once; and a batch with a NaN skipped alike."""
    steps = 60
    proc = subprocess.run(
        [sys.executable, "-m", "tests.keras_fit.keras_mirrored_run", str(tmp_path), str(steps)],
        cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and report["iterations"] == steps
    single, mirrored = Events(tmp_path / "single"), Events(tmp_path / "mirrored")
    for tag in BATCH_TAGS:
        a, b = single.scalar(tag), mirrored.scalar(tag)  # steps 0..59, once each
        assert len(a) == len(b) == steps, tag
        np.testing.assert_allclose(b, a, rtol=1e-5, err_msg=tag)
    assert np.ptp(single.scalar("lr")) > 1e-4
    # fit's logged loss is the epoch's mean batch loss on one device and on two.
    for name, loss in report["epoch_loss"].items():
        assert loss == pytest.approx(float(single.scalar("loss/batch").mean()), rel=1e-5), name
    assert len(list((tmp_path / "mirrored").glob("events.out.tfevents.*"))) == 1
    assert report["weight_max_diff"] < 1e-5
    assert report["lr_copies"][0] == report["lr_copies"][1]
    assert report["lr_copies"][0] == pytest.approx(float(single.scalar("lr")[-1]), rel=1e-6)
    assert report["weight_copy_max_diff"] == 0.0
    # A Dropout model resumed from a .weights.h5 or .keras file: same weights and LR.
    assert report["dropout_resume"] == {"weights.h5": 0.0, "keras": 0.0}
    assert "steps_per_execution=1" in report["steps_per_execution_error"]
    assert "keras-team/keras#19246" in report["steps_per_execution_error"]
    # A NaN in one replica's slice: both replicas skip that batch, as one device does.
    nan = report["nan"]
    assert nan["finite"] and nan["weight_copy_max_diff"] == 0.0
    assert nan["weight_max_diff"] < 1e-5 and nan["single_skipped"] == 1
    assert nan["guard"]["guard.skipped"] == [1.0, 1.0] and nan["iterations"] == 9
    assert nan["guard"]["guard.first_nonfinite_step"] == [3.0, 3.0]
    np.testing.assert_array_equal(
        Events(tmp_path / "nan_mirrored").scalar("guard/skipped"), np.arange(10) >= 3
    )
    # Float16 loss scaling: the signals are the unscaled ones, as in float32 on one device.
    float16 = Events(tmp_path / "float16_mirrored")
    for tag in ("lr", "loss/batch", "grad/global_norm"):
        np.testing.assert_allclose(float16.scalar(tag)[:5], single.scalar(tag)[:5], rtol=5e-3)
    assert np.all(float16.scalar("precision/loss_scale") == 2.0**15)
    assert report["float16"] == {"optimizer": "SGD", "weight_copy_max_diff": 0.0}
    # Overflowed batches: skipped by the loss scale on both replicas, not by the guard,
    # and counted in the batch index.
    overflow, state = Events(tmp_path / "overflow_mirrored"), report["overflow"]["state"]
    overflowed = int(overflow.scalar("precision/overflow").sum())
    assert overflow.scalar("precision/overflow")[:20].all() and overflowed < 25
    assert state["loss_scale.overflows"] == [overflowed] * 2
    assert state["loss_scale.scale"] == [2.0 ** (40 - overflowed)] * 2
    assert state["guard.skipped"] == [0, 0] and report["overflow"]["iterations"] == 25 - overflowed
    assert report["overflow"]["finite"] and report["overflow"]["weight_copy_max_diff"] == 0.0


# Non-finite batches: the guard shared with the trainer.
def poisoned_batches(batches: int, bad: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """`batches` batches of 32 digits (stacked), one NaN pixel in each batch of `bad`."""
    x, y = digit_batches(batches)
    x, y = x[:, :32].copy(), y[:, :32]
    for batch in bad:
        x[batch, 5, 3, 3, 0] = np.nan
    return x, y


class WeightsAfterEachBatch(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append([v.numpy() for v in self.model.trainable_variables])


def test_fit_on_a_batch_with_a_nan_keeps_finite_weights(tmp_path):
    """The NaN batch's update is skipped (the weights do not move), later LRs are cut by
    `nonfinite_lr_factor`, `guard/skipped` and `guard/lr_rejected` are logged every batch
    at the batch index, which advances on the skipped batch while
    `optimizer.iterations` (updates applied) does not, and `fit`'s loss is Keras's: the
    mean over every batch, the skipped one included."""
    x, y = poisoned_batches(12, bad=[4])
    wrapped = ControlledModel(
        mlp((8, 8, 1), 10, hidden=(16,)), c.ConstantController(0.1), nonfinite_lr_factor=0.25
    )
    wrapped.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    summaries, weights = PerBatchSummaries(str(tmp_path)), WeightsAfterEachBatch()
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    history = wrapped.fit(ds, epochs=1, verbose=0, callbacks=[summaries, weights])
    summaries.close()
    events = Events(tmp_path)
    loss, norm = events.scalar("loss/batch"), events.scalar("grad/global_norm")
    # The gradient is NaN; the loss may be too (relu(NaN) is 0 on some CPUs).
    assert not np.isfinite(norm[4]) and np.all(np.isfinite(np.delete(norm, 4)))
    assert all(np.isfinite(w).all() for w in weights.weights[-1])
    for before, after in zip(weights.weights[3], weights.weights[4], strict=True):
        np.testing.assert_array_equal(before, after)  # no update at the NaN batch
    skipped = (np.arange(12) >= 4).astype(np.float32)
    np.testing.assert_array_equal(events.scalar("guard/skipped"), skipped)
    np.testing.assert_array_equal(events.scalar("guard/lr_rejected"), np.zeros(12))
    np.testing.assert_allclose(events.scalar("lr"), 0.1 * 0.25 ** np.r_[0, 0, 0, 0, 0, [1] * 7])
    assert int(wrapped.optimizer.iterations) == 11
    guard = {k: v.numpy() for k, v in wrapped.guard_state().items()}
    assert guard == {
        "guard.consecutive": 0,
        "guard.first_nonfinite_step": 4,
        "guard.lr_scale": 0.25,
        "guard.skipped": 1,
    }
    np.testing.assert_allclose(history.history["loss"], [loss.mean()], rtol=1e-6)


def test_fit_stops_after_max_consecutive_nonfinite_batches():
    x, y = poisoned_batches(10, bad=list(range(2, 10)))
    wrapped = ControlledModel(
        mlp((8, 8, 1), 10, hidden=(16,)), c.ConstantController(0.1), max_consecutive_nonfinite=3
    )
    wrapped.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=2,
    )
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    with pytest.warns(RuntimeWarning) as record:
        history = wrapped.fit(ds, epochs=3, verbose=0)
    (message,) = [str(w.message) for w in record if "ControlledModel:" in str(w.message)]
    assert message.startswith(
        "ControlledModel: the loss or gradient norm became NaN/Inf at step 2; 4 batches in "
        "a row were NaN/Inf and skipped (4 in all), so the run stopped. The model keeps "
        "the weights of the last good batch."
    ), message  # checked after each call of 2 batches: 4 in a row at the check
    assert "global_clipnorm" in message
    assert history.epoch == [0] and wrapped.stop_training
    assert int(wrapped.optimizer.iterations) == 2
    assert all(np.isfinite(v.numpy()).all() for v in wrapped.trainable_variables)


def guarded_model(**guard_args) -> ControlledModel:
    keras.utils.set_random_seed(0)
    wrapped = ControlledModel(
        mlp((8, 8, 1), 10, hidden=(8,)), c.LossTrendController(window=4, max_lr=0.5), **guard_args
    )
    wrapped.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return built(wrapped)


def test_guard_state_round_trips_through_weights_h5_and_keras(tmp_path):
    saver = guarded_model(max_consecutive_nonfinite=4, nonfinite_lr_factor=0.25)
    assert saver.get_config()["max_consecutive_nonfinite"] == 4
    assert saver.get_config()["nonfinite_lr_factor"] == 0.25
    x, y = poisoned_batches(6, bad=[2, 3])
    saver.fit(tf.data.Dataset.from_tensor_slices((x, y)), verbose=0)
    saved = {k: v.numpy() for k, v in saver.guard_state().items()}
    assert saved["guard.skipped"] == 2 and saved["guard.first_nonfinite_step"] == 2
    saver.save_weights(tmp_path / "m.weights.h5")
    saver.save(tmp_path / "m.keras")

    from_weights = guarded_model(max_consecutive_nonfinite=4, nonfinite_lr_factor=0.25)
    from_weights.load_weights(tmp_path / "m.weights.h5")
    from_keras = keras.models.load_model(tmp_path / "m.keras")
    assert (from_keras.guard.max_consecutive, from_keras.guard.lr_factor) == (4, 0.25)
    for loaded in (from_weights, from_keras):
        assert {k: v.numpy() for k, v in loaded.guard_state().items()} == saved
        assert int(loaded.optimizer.iterations) == 4


def test_a_weights_file_from_before_the_guard_loads_with_a_fresh_guard(tmp_path):
    """Files saved before the guard existed are these files without the `guard.*`
    entries (checked against one written by that code); they load, and the guard starts
    afresh, as that code never skipped a batch. A file with part of them is damaged."""
    import h5py

    old, damaged = tmp_path / "old.weights.h5", tmp_path / "damaged.weights.h5"
    saver = guarded_model()
    saver.guard.skipped.assign(3)
    for path, removed in ((old, saver.guard_state()), (damaged, ["guard.lr_scale"])):
        saver.save_weights(path)
        with h5py.File(path, "r+") as f:
            for key in removed:
                del f[f"vars/{key}"]

    loader = guarded_model()
    loader.guard.skipped.assign(5)
    loader.guard.lr_scale.assign(0.5)
    loader.load_weights(old)
    assert {k: float(v.numpy()) for k, v in loader.guard_state().items()} == {
        "guard.consecutive": 0,
        "guard.first_nonfinite_step": -1,
        "guard.lr_scale": 1.0,
        "guard.skipped": 0,
    }
    for a, b in zip(loader.weights, saver.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match=r"saved guard state .* damaged.*skip_mismatch=True"):
        guarded_model().load_weights(damaged)


def test_bad_guard_arguments_name_the_controlled_model():
    model = keras.Sequential([keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"^ControlledModel\.nonfinite_lr_factor must be in"):
        ControlledModel(model, c.ConstantController(0.1), nonfinite_lr_factor=2.0)
    with pytest.raises(ValueError, match=r"^ControlledModel\.max_consecutive_nonfinite must"):
        ControlledModel(model, c.ConstantController(0.1), max_consecutive_nonfinite=-1)
