"""The researcher's own workload through gin: a module imported by a gin file (from the
current directory) with its own model, per-example loss, metric and tf.data pipeline,
trained by `lrresearch train`; exact resume after SIGKILL with the pipeline's position
checkpointed; and the trainer's handling of model factories, losses and metrics."""

from __future__ import annotations

import os
import subprocess
import textwrap

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.cli import commands as cli
from lrresearch.config import parse as config
from lrresearch.training.trainer import Trainer
from lrresearch.workloads import data
from lrresearch.workloads import model_loss as workload
from lrresearch.workloads.inputs import make_inputs
from tests.support import BATCH_TAGS, Events, finish, kill_at_step, run_cli, start_cli

USER_MODULE = textwrap.dedent(
    '''
    """Someone's regression workload: shuffled tf.data input, own loss and metric."""
    import gin
    import keras
    import numpy as np
    import tensorflow as tf


    @gin.configurable
    def noisy_plane(n=1200, features=6, seed=3):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, features)).astype("float32")
        y = (x @ rng.normal(size=features) + 0.3 * np.sin(3 * x[:, 0]))[:, None]
        y = y.astype("float32")
        train = tf.data.Dataset.from_tensor_slices((x[:1000], y[:1000]))
        train = train.shuffle(300, seed=seed).map(lambda a, b: (a * 1.0, b))
        return train, tf.data.Dataset.from_tensor_slices((x[1000:], y[1000:]))


    @gin.configurable
    def two_layers(input_shape, width=16):
        return keras.Sequential(
            [keras.Input(input_shape), keras.layers.Dense(width, activation="tanh"),
             keras.layers.Dense(1)], name="two_layers")


    @gin.configurable
    def log_cosh(y_true, y_pred):
        return tf.reduce_mean(tf.math.log(tf.cosh(y_pred - y_true)), axis=-1)


    @gin.configurable
    def generated():
        def examples():
            for i in range(100):
                yield np.full(6, i, np.float32), np.float32([i])
        spec = (tf.TensorSpec([6], tf.float32), tf.TensorSpec([1], tf.float32))
        return tf.data.Dataset.from_generator(examples, output_signature=spec)
    '''
)

GIN = textwrap.dedent(
    """
    import user_workload
    Trainer.dataset = @noisy_plane
    Trainer.model = @two_layers
    Trainer.loss = @log_cosh
    Trainer.metrics = ['mae']
    Trainer.batch_size = 32
    Trainer.steps = 750
    Trainer.steps_per_loop = 10
    Trainer.log_every = 100
    Trainer.eval_every = 125
    Trainer.checkpoint_every = 250
    Trainer.histogram_every = 0
    Trainer.deterministic = True
    Trainer.controller = @GradNormController()
    GradNormController.base_lr = 0.2
    GradNormController.slope = 0.05
    GradNormController.low_norm_threshold = 0.05
    GradNormController.low_norm_lr = 0.15
    GradNormController.min_lr = 0.02
    """
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder holding the user's module and gin file, used as the current directory."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "user_workload.py").write_text(USER_MODULE)
    (folder / "experiment.gin").write_text(GIN)
    return folder


def train(folder, *flags, popen=False):
    if popen:
        return start_cli("train", "--logdir=runs", *flags, cwd=folder)
    return run_cli("train", "--logdir=runs", *flags, cwd=folder)


@pytest.fixture(scope="module")
def runs(workspace):
    """The run whole (`full`); killed at step 350 and resumed (`cut`); and trained again
    from `full`'s config.gin (`again`). Two at a time (2 cores; deterministic runs)."""
    whole = start_cli("train", "--logdir=runs", "--gin_file=experiment.gin", "--run_name=full",
                      cwd=workspace, stderr=subprocess.PIPE)  # fmt: skip
    kill_at_step(train(workspace, "--gin_file=experiment.gin", "--run_name=cut", popen=True), 350)
    full = finish(whole)
    assert full.returncode == 0, full.stderr
    again = start_cli("train", "--logdir=runs", "--gin_file=runs/full/config.gin",
                      "--run_name=again", cwd=workspace, stderr=subprocess.PIPE)  # fmt: skip
    resumed = train(workspace, "--gin_file=experiment.gin", "--run_name=cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed at step 250)" in resumed.stdout
    again = finish(again)
    assert again.returncode == 0, again.stderr
    return {name: Events(workspace / "runs" / name) for name in ("full", "cut", "again")}


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_batch_tag_has_one_point_per_batch(runs):
    events = runs["full"]
    for tag in (*BATCH_TAGS, "guard/skipped", "guard/lr_rejected", "controller/low_norm"):
        assert len(events.scalar(tag)) == 750, tag
    assert {"eval/loss", "eval/mae"} <= events.tags
    assert len(events.values("eval/mae")) == 6
    loss = events.scalar("loss/batch")
    assert loss[-100:].mean() < 0.5 * loss[:100].mean()


@pytest.mark.slow
@pytest.mark.subprocess
def test_lr_is_the_gradient_norm_rule_of_the_logged_norms(runs):
    events = runs["full"]
    norm = events.scalar("grad/global_norm").astype(np.float64)
    want = np.where(norm < 0.05, 0.15, np.maximum(0.02, 0.2 - 0.05 * norm))
    np.testing.assert_allclose(events.scalar("lr"), want, rtol=1e-6)
    assert (norm < 0.05).any() or len(np.unique(np.round(want, 4))) > 20  # the rule moved


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkilled_run_resumes_to_the_uninterrupted_series(runs):
    for tag in ("lr", "loss/batch", "grad/global_norm", "loss/ma_long"):
        np.testing.assert_array_equal(runs["cut"].scalar(tag), runs["full"].scalar(tag), tag)
    np.testing.assert_array_equal(runs["cut"].values("eval/mae"), runs["full"].values("eval/mae"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_runs_config_gin_reproduces_it(workspace, runs):
    assert (
        (workspace / "runs" / "full" / "config.gin").read_text().startswith("import user_workload")
    )
    for tag in ("lr", "loss/batch"):
        np.testing.assert_array_equal(runs["again"].scalar(tag), runs["full"].scalar(tag), tag)


@pytest.mark.slow
def test_a_pipeline_that_cannot_be_checkpointed_is_refused_before_training(
    workspace, monkeypatch, capsys
):
    monkeypatch.chdir(workspace)  # the user's module is found in the working directory
    code = cli.main(["train", "--logdir=runs", "--gin_file=experiment.gin", "--run_name=gen",
                     "--gin_param=Trainer.dataset = @generated"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "position cannot be checkpointed" in err
    assert "from_generator" in err and "Traceback" not in err
    assert not (workspace / "runs" / "gen" / "checkpoints").exists()


def test_mean_loss_is_over_every_token_of_the_batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=(3, 5))
    loss_fn, _ = workload.per_example_loss(
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    got = float(workload.mean_loss(loss_fn, tf.constant(labels), tf.constant(logits)))
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    want = -np.take_along_axis(log_softmax, labels[..., None], -1).mean()
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize(
    ("spec", "name"),
    [("mse", "mean_squared_error"), (keras.losses.Huber, "huber_loss"),
     (keras.losses.Huber(delta=0.5), "huber_loss")],
)  # fmt: skip
def test_keras_losses_give_per_example_values(spec, name):
    loss_fn, loss_name = workload.per_example_loss(spec)
    values = loss_fn(tf.zeros([4, 2]), tf.ones([4, 2]))
    assert values.shape == (4,) and loss_name == name


def test_model_factory_gets_only_the_arguments_it_takes():
    seen = {}

    def no_arguments():
        seen["called"] = True
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])

    assert workload.build_model(no_arguments, (3,), 2).output_shape == (None, 2)

    def positional(shape, classes):  # the earlier convention, other names
        return keras.Sequential([keras.Input(shape), keras.layers.Dense(classes)])

    assert workload.build_model(positional, (3,), 4).output_shape == (None, 4)
    with pytest.raises(ValueError, match=r"needs the class count \(num_classes\)"):
        workload.build_model(lambda input_shape, num_classes: None, (3,), None)
    with pytest.raises(ValueError, match=r"must return a keras.Model"):
        workload.build_model(lambda: "model", (3,), None)


def test_metrics_are_named_as_written_and_unknown_ones_refused():
    names = [m.name for m in workload.make_metrics(["accuracy", "mae"], default_loss=False)]
    assert names == ["accuracy", "mae"]
    assert [m.name for m in workload.make_metrics(None, default_loss=True)] == ["accuracy"]
    assert workload.make_metrics(None, default_loss=False) == []
    with pytest.raises(ValueError, match="unknown Keras metric 'nope'"):
        workload.make_metrics(["nope"], default_loss=False)


def test_a_dataset_functions_info_is_the_inputs_info_with_scalar_values():
    def arrays():
        return data.synthetic(num_examples=200)

    def pipeline():
        x = np.zeros((64, 3), np.float32)
        return tf.data.Dataset.from_tensor_slices((x, x[:, :1]))

    arrays.info = lambda: {"source": "test", "version": 2}
    pipeline.info = lambda: {"files": ("a", "b"), "exact": True}
    assert make_inputs(arrays, 16, 0).info == {"source": "test", "version": 2}
    assert make_inputs(pipeline, 16, 0).info == {"files": "('a', 'b')", "exact": True}
    assert make_inputs(lambda: data.synthetic(num_examples=200), 16, 0).info == {}


def test_tf_data_loop_is_traced_once_with_no_python_op(tmp_path):
    def pipeline():
        x = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
        return tf.data.Dataset.from_tensor_slices((x, x.sum(1, keepdims=True))).shuffle(64, seed=1)

    def model(input_shape):
        return keras.Sequential([keras.Input(input_shape), keras.layers.Dense(1)])

    config.parse([], [])
    try:
        trainer = Trainer(steps=60, steps_per_loop=20, dataset=pipeline, model=model,
                          loss="mse", histogram_every=0, eval_every=0)  # fmt: skip
        trainer.fit(logdir=str(tmp_path), run_name="traced", quiet=True)
    finally:
        gin.clear_config()
    loop = trainer.train_loop
    assert loop.experimental_get_tracing_count() == 1
    graph = loop.get_concrete_function(tf.TensorSpec([], tf.int64)).graph
    ops = {op.type for op in graph.get_operations()}
    for function in graph._functions.values():  # the while body
        ops |= {node.op for node in function.definition.node_def}
    assert "IteratorGetNext" in ops
    assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
    assert os.path.isdir(tmp_path / "traced" / "checkpoints")


def test_the_output_check_accepts_outputs_the_loss_takes_and_names_those_it_cannot():
    import types

    from lrresearch.workloads.models import mlp

    def inputs(y_shape, y_dtype):
        specs = (tf.TensorSpec((4,), tf.float32), tf.TensorSpec(y_shape, y_dtype))
        return types.SimpleNamespace(example_spec=specs, name="data")

    model = mlp((4,), 3, hidden=(2,))
    mse, _ = workload.per_example_loss("mse")
    cross_entropy, name = workload.per_example_loss(None)
    workload.check_output_fits(model, mse, "mse", inputs((3,), tf.float32))
    workload.check_output_fits(model, cross_entropy, name, inputs((), tf.int32))  # class ids
    with pytest.raises(ValueError, match=r"mlp outputs shape \(3,\) per example, the labels of "
                       r"data have shape \(2,\) \(int32\), and sparse_categorical"):  # fmt: skip
        workload.check_output_fits(model, cross_entropy, name, inputs((2,), tf.int32))
