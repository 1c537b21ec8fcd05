"""The runnable examples under `examples/`, each trained from its gin file through the
real `lrresearch train` path (in-process `cli.main`, from the repository root, where the
gin file's `import examples.<module>` line finds the module).

Runs are trained once per module (200 batches each) and read back with TensorBoard's
own loader. Each example's run is then trained again from its own `config.gin` alone,
which must give the same `loss/batch` at every batch.
"""

from __future__ import annotations

import os
import pathlib

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.cli import commands as cli
from lrresearch.config import parse as config
from tests.support import BATCH_TAGS, REPO, Events, read_events

pytestmark = [pytest.mark.slow]

STEPS = 120
EXAMPLES = {"regression": "mae", "sequence": "accuracy"}  # example -> its eval metric


def train(gin_file: str | os.PathLike, logdir: pathlib.Path, run_name: str, *params: str) -> str:
    """`lrresearch train` in-process; returns the run directory (asserts exit 0)."""
    argv = ["train", f"--gin_file={gin_file}", f"--logdir={logdir}", f"--run_name={run_name}"]
    argv += [f"--gin_param={p}" for p in params] + ["--quiet"]
    gin.clear_config()
    try:
        code = cli.main(argv)
    finally:
        gin.clear_config()
    assert code == 0, f"lrresearch {' '.join(argv)} exited {code}"
    return str(logdir / run_name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Events]:
    """Per example: its gin file for STEPS batches (`<name>`), and the same again from
    that run's config.gin only (`<name>-again`)."""
    logdir = tmp_path_factory.mktemp("examples")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(REPO)
        events = {}
        # The regression shards go to this test's folder, not the system temp dir.
        folder = f"regression_data.folder = {str(logdir / 'regression_data')!r}"
        for name in EXAMPLES:
            params = [f"Trainer.steps = {STEPS}"] + [folder] * (name == "regression")
            run_dir = train(f"examples/{name}.gin", logdir, name, *params)
            again = train(os.path.join(run_dir, "config.gin"), logdir, f"{name}-again")
            events[name], events[f"{name}-again"] = read_events(run_dir), read_events(again)
    return events


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_logs_every_batch_tag_once_per_batch(runs, name):
    for tag in BATCH_TAGS:
        series = runs[name].scalar(tag)  # checks steps 0, 1, 2, ...
        assert len(series) == STEPS, tag
        assert np.isfinite(series).all(), tag


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_logs_eval_loss_and_its_metric(runs, name):
    for tag in ("eval/loss", f"eval/{EXAMPLES[name]}"):
        assert tag in runs[name].tags, f"{tag} not in {sorted(runs[name].tags)}"
        # At the end, logged at the last batch's index.
        assert runs[name].steps(tag)[-1] == STEPS - 1, tag
        assert np.isfinite(runs[name].values(tag)).all(), tag


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_loss_falls(runs, name):
    loss = runs[name].scalar("loss/batch")
    assert loss[-20:].mean() < loss[:20].mean(), (loss[:20].mean(), loss[-20:].mean())


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_config_gin_alone_reproduces_every_batch(runs, name):
    with open(os.path.join(runs[name].run_dir, "config.gin")) as f:
        assert f"import examples.{name}" in f.read()
    for tag in ("loss/batch", "lr"):
        np.testing.assert_array_equal(
            runs[f"{name}-again"].scalar(tag), runs[name].scalar(tag), err_msg=tag
        )


def test_regression_reaches_well_below_the_targets_variance(runs):
    """MSE starts near the target's variance (~0.7); STEPS batches take it below 0.3."""
    loss = runs["regression"].scalar("loss/batch")
    assert loss[:5].mean() > 0.4, loss[:5]
    assert loss[-20:].mean() < 0.3, loss[-20:]


def test_sequence_loss_is_the_mean_cross_entropy_over_all_tokens(tmp_path, monkeypatch):
    """`loss/batch` at step 0 equals numpy's mean next-token cross-entropy over every
    token of the first batch, from the model's own logits.

    One batch is trained: the warmup starts at LR 0 (checked), so Adam leaves the weights
    as they were and the run's checkpoint holds the weights that batch 0 saw.
    """
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    from examples.sequence import byte_gru, zen_windows

    run_dir = train("examples/sequence.gin", tmp_path, "one-batch", "Trainer.steps = 1")
    events = read_events(run_dir)
    assert events.scalar("lr")[0] == 0.0
    gin.clear_config()
    try:
        config.parse([os.path.join(run_dir, "config.gin")], [])
        seed = gin.query_parameter("Trainer.seed")
        batch_size = gin.query_parameter("Trainer.batch_size")
        # The trainer seeds TensorFlow before it builds the pipeline; its shuffle order
        # depends on that global seed.
        keras.utils.set_random_seed(seed)
        train_examples, _ = zen_windows()
        inputs, targets = next(iter(train_examples.batch(batch_size)))
        model = byte_gru(input_shape=tuple(inputs.shape[1:]))
    finally:
        gin.clear_config()
    checkpoint = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    tf.train.Checkpoint(model=model).read(
        checkpoint
    ).expect_partial().assert_existing_objects_matched()

    logits = model(inputs).numpy().astype(np.float64)  # [batch, time, 256]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    token_loss = -np.take_along_axis(log_probs, targets.numpy()[..., None], axis=-1)[..., 0]
    assert token_loss.shape == tuple(targets.shape)
    np.testing.assert_allclose(events.scalar("loss/batch")[0], token_loss.mean(), rtol=1e-5)
    np.testing.assert_allclose(token_loss.mean(), np.log(256), rtol=0.01)  # a uniform guess
