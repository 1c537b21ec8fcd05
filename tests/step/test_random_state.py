"""Random layers resume exactly: a trainer restored from a checkpoint draws the random
numbers the uninterrupted one draws (`lrresearch.step.random_state`), for every Keras random
layer, `keras.random` with a `SeedGenerator` and `tf.random.Generator`, with and
without XLA; a checkpoint without that state restores with a warning."""

from __future__ import annotations

import functools
import os
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import GradNormController
from lrresearch.step import random_state
from lrresearch.training import resume
from lrresearch.training.trainer import Trainer
from tests.support import REPO, USER_CODE, Events, kill_at_step, small_trainer, start_cli

STEPS, CUT = 8, 3  # batches in all, and where the run is checkpointed and restored


class NoisyScale(keras.layers.Layer):
    """A user layer: `keras.random.normal` with a `SeedGenerator` created in `build`."""

    def build(self, input_shape):
        self.generator = keras.random.SeedGenerator(7)

    def call(self, x, training=False):
        if not training:
            return x
        return x * (1.0 + 0.1 * keras.random.normal(keras.ops.shape(x), seed=self.generator))


class GeneratorNoise(keras.layers.Layer):
    """A user layer holding a `tf.random.Generator`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tf_generator = tf.random.Generator.from_seed(11)

    def call(self, x, training=False):
        return x + 0.1 * self.tf_generator.normal(tf.shape(x)) if training else x


class NoisyLoss(keras.losses.Loss):
    """A loss holding a `tf.random.Generator` (outside the model, so not checkpointed
    with it): cross-entropy on randomly jittered logits."""

    def __init__(self):
        super().__init__(name="noisy_ce")
        self.generator = tf.random.Generator.from_seed(5)

    def call(self, y_true, y_pred):
        y_pred = y_pred + 0.5 * self.generator.normal(tf.shape(y_pred))
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)


LAYERS = {
    "augmentation": lambda: [
        keras.layers.RandomFlip(),
        keras.layers.RandomContrast(0.3),
        keras.layers.RandomBrightness(0.2, value_range=(0, 1)),
    ],
    # Their image transform has no XLA kernel (TF's ImageProjectiveTransformV3).
    "geometric_augmentation": lambda: [
        keras.layers.RandomTranslation(0.2, 0.2),
        keras.layers.RandomRotation(0.1),
        keras.layers.RandomZoom(0.2),
    ],
    "spatial_dropout": lambda: [keras.layers.SpatialDropout2D(0.3)],
    "gaussian_noise": lambda: [keras.layers.GaussianNoise(0.3)],
    "gaussian_dropout": lambda: [keras.layers.GaussianDropout(0.3)],
    "alpha_dropout": lambda: [keras.layers.AlphaDropout(0.3)],
    "dropout": lambda: [keras.layers.Dropout(0.3)],
    "keras_random": lambda: [NoisyScale()],
    "tf_random_generator": lambda: [GeneratorNoise()],
}


def random_model(input_shape, num_classes, kinds=tuple(LAYERS)):
    """A small CNN on 8x8x1 digits with the random layers of `kinds` (image layers
    before the convolution, the rest after the dense layer), and BatchNorm."""
    image_kinds = ("augmentation", "geometric_augmentation", "spatial_dropout")
    inputs = keras.Input(input_shape)
    x = inputs
    for kind in (k for k in kinds if k in image_kinds):
        for layer in LAYERS[kind]():
            x = layer(x)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.BatchNormalization()(keras.layers.Dense(16, activation="relu")(x))
    for kind in (k for k in kinds if k not in image_kinds):
        for layer in LAYERS[kind]():
            x = layer(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def make_trainer(kinds, jit_compile=False, loss=None) -> Trainer:
    return small_trainer(
        build=True,
        steps=STEPS,
        controller=GradNormController(base_lr=0.1, slope=0.02),
        batch_size=32,
        steps_per_loop=4,
        jit_compile=jit_compile,
        loss=loss,
        deterministic=True,
        model=functools.partial(random_model, kinds=kinds),
    )


def lrs_and_weights(trainer: Trainer, steps: int) -> tuple[list[float], list[np.ndarray]]:
    """Trains `steps` batches one call each; the LR after each, and the final weights."""
    lrs = []
    for _ in range(steps):
        trainer.run_steps(1)
        lrs.append(trainer.current_lr())
    return lrs, [v.numpy() for v in trainer.model.variables]


def assert_resumes_exactly(kinds, tmp_path, jit_compile=False) -> None:
    """Trains STEPS batches, checkpointing after CUT; a fresh trainer restored from that
    checkpoint trains the rest to the same LRs and weights, bit for bit. Each trainer
    has its own `NoisyLoss`: its generator is part of the trainer's state."""
    straight = make_trainer(kinds, jit_compile, NoisyLoss())
    straight.run_steps(CUT)
    path = straight.checkpoint.save(str(tmp_path / "ckpt"))
    later_lrs, weights = lrs_and_weights(straight, STEPS - CUT)
    resumed = make_trainer(kinds, jit_compile, NoisyLoss())
    status, warning = random_state.restore(resumed.checkpoint, path)
    status.assert_consumed()
    resumed.after_restore()
    assert warning is None
    resumed_lrs, resumed_weights = lrs_and_weights(resumed, STEPS - CUT)
    np.testing.assert_array_equal(resumed_lrs, later_lrs)
    assert len(set(later_lrs)) > 1  # the LR followed the (random) gradients
    # In-graph: the restored state is read by the one loop, traced once.
    assert [loop.experimental_get_tracing_count() for loop in resumed.loops.values()] == [1]
    for a, b in zip(weights, resumed_weights, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_each_random_layer_has_its_state_found(kind):
    model = random_model((8, 8, 1), 10, (kind,))
    # Keras's own list of a layer's seed generators; the tf.random.Generator by name.
    expected = [
        generator.state
        for layer in model.layers
        for generator in [*layer._seed_generators, *[getattr(layer, "tf_generator", None)]]
        if generator is not None
    ]
    assert len(expected) == len(LAYERS[kind]())  # one generator per random layer
    assert [id(s) for s in random_state.find_states(model)] == [id(s) for s in expected]


@pytest.mark.slow
def test_every_random_layer_and_a_loss_generator_resume_exactly(tmp_path):
    # One model holds them all: a generator left out of the checkpoint changes the rest.
    assert_resumes_exactly(tuple(LAYERS), tmp_path)


@pytest.mark.slow
def test_random_layers_resume_exactly_under_xla(tmp_path):
    # Small: XLA compiles for ~10 s per trainer here; the state update is the same.
    assert_resumes_exactly(("dropout", "tf_random_generator"), tmp_path, jit_compile=True)


def test_the_loss_generator_is_in_the_checkpoint():
    loss = NoisyLoss()
    trainer = make_trainer(("dropout",), loss=loss)
    states = getattr(trainer.checkpoint, random_state.ENTRY).seed_states
    assert [id(s) for s in states] == [
        id(trainer.model.layers[-2].seed_generator.state),
        id(loss.generator.state),
    ]


def test_a_model_without_randomness_checkpoints_as_before():
    trainer = make_trainer(())
    assert not hasattr(trainer.checkpoint, random_state.ENTRY)


def test_an_old_checkpoint_without_random_state_resumes_with_a_warning(tmp_path):
    old = make_trainer(("dropout",))
    old.run_steps(CUT)
    # A run directory whose checkpoint is as earlier versions wrote it: every entry but
    # the random state (root names unchanged), at step CUT.
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.gin").write_text("")
    children = tf.train.TrackableView(old.checkpoint).children(old.checkpoint)
    entries = {k: v for k, v in children.items() if k != random_state.ENTRY}
    tf.train.CheckpointManager(tf.train.Checkpoint(**entries), run_dir / "checkpoints", 1).save(CUT)
    resumed, said = make_trainer(("dropout",)), []
    assert resume.resume(resumed, str(run_dir), "", said.append, chief=True) == CUT
    assert resumed.next_step == CUT
    [warning] = [line for line in said if line.startswith("warning:")]
    assert warning.startswith(f"warning: resume: ckpt-{CUT} was written before")
    assert "1 random generator(s)" in warning and "restart from the seed" in warning
    for a, b in zip(resumed.model.trainable_variables, old.model.trainable_variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The new checkpoints hold the random state again.
    assert random_state.holds_entry(resumed.checkpoint.save(str(tmp_path / "new")))


# A user's package (tests/config/user_code/user_pkg) with issue 22's model: tf.data text
# input, BatchNorm, Dropout, one logit per example.
USER_RUN = """import user_pkg.workload
Trainer.model = @dropout_logit
Trainer.dataset = @digit_strings
Trainer.loss = @logit_cross_entropy
Trainer.controller = @GradNormController()
GradNormController.slope = 0.05
Trainer.steps = 300
Trainer.batch_size = 32
Trainer.checkpoint_every = 100
Trainer.steps_per_loop = 10
Trainer.log_every = 10
Trainer.eval_every = 0
Trainer.histogram_every = 0
Trainer.deterministic = True
"""


def start(gin_file, logdir, run_name, *extra) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(USER_CODE), str(REPO)]))
    return start_cli(
        "train", f"--gin_file={gin_file}", f"--logdir={logdir}", f"--run_name={run_name}",
        *extra, env=env, stderr=subprocess.PIPE,
    )  # fmt: skip


def final_state(run_dir) -> dict[str, np.ndarray]:
    """The model's and the random streams' values in the run's newest checkpoint."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(f"{run_dir}/checkpoints"))
    names = [
        n for n in reader.get_variable_to_shape_map() if n.startswith(("model/", "random_state/"))
    ]
    return {n: reader.get_tensor(n) for n in names}


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_user_dropout_model_killed_and_resumed_through_the_cli_equals_an_uninterrupted_run(
    tmp_path,
):
    gin_file = tmp_path / "user.gin"
    gin_file.write_text(USER_RUN)
    full = start(gin_file, tmp_path, "full")  # alongside the killed run: 2 cores
    cut = start(gin_file, tmp_path, "cut")
    assert kill_at_step(cut, 150) < 300
    out, err = full.communicate(timeout=300)
    assert full.returncode == 0, err[-3000:]
    resumed = start(gin_file, tmp_path, "cut", "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert "resumed at step 100)" in out and "warning" not in out + err
    whole, again = Events(tmp_path / "full"), Events(tmp_path / "cut")
    for tag in ("lr", "loss/batch", "grad/global_norm"):
        np.testing.assert_array_equal(again.scalar(tag), whole.scalar(tag), err_msg=tag)
    assert len(np.unique(whole.scalar("lr")[100:])) > 100  # the LR follows the masks
    expected, got = final_state(tmp_path / "full"), final_state(tmp_path / "cut")
    assert any(n.startswith("random_state/") for n in expected)
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
