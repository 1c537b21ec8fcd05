"""Non-finite guard: NaN/Inf batches are skipped in-graph, later LRs are cut, and a run
that keeps diverging stops with a checkpoint of the last good state."""

from __future__ import annotations

import os

import gin
import numpy as np
import pytest
import tensorflow as tf
from conftest import Events

from lrresearch import config
from lrresearch.controllers import ConstantController
from lrresearch.data import digits
from lrresearch.trainer import NonFiniteLossError, Trainer


def small_trainer(**kwargs) -> Trainer:
    config.parse([], ["mlp.hidden = (16,)"])
    try:
        return Trainer(histogram_every=0, eval_every=0, **kwargs)
    finally:
        gin.clear_config()


def test_nan_batches_are_skipped_and_later_lrs_cut(tmp_path):
    data = digits()
    x = data.x_train[:320].copy()
    x[7, 0, 0, 0] = np.nan  # one poisoned example: one NaN batch per epoch
    poisoned = data._replace(x_train=x, y_train=data.y_train[:320])
    trainer = small_trainer(
        steps=100,
        batch_size=32,
        steps_per_loop=10,
        controller=ConstantController(0.05),
        dataset=poisoned,
        nonfinite_lr_factor=0.9,
        max_consecutive_nonfinite=3,
    )
    with gin.unlock_config():
        result = trainer.fit(logdir=str(tmp_path), run_name="nan", quiet=True)
    events = Events(result.run_dir)
    loss, norm, skipped, lr = (
        events.scalar(t) for t in ("loss/batch", "grad/global_norm", "guard/skipped", "lr")
    )
    # A NaN input makes the gradient NaN; whether the loss is NaN too depends on the
    # CPU (relu(NaN) is 0 on this AVX-512 machine's vectorized path, NaN elsewhere).
    bad = ~np.isfinite(loss) | ~np.isfinite(norm)
    assert bad.sum() == 10  # one per epoch of 10 batches
    np.testing.assert_array_equal(skipped, np.cumsum(bad))
    np.testing.assert_allclose(lr, 0.05 * 0.9 ** (skipped - bad), rtol=1e-5)
    assert all(np.isfinite(v.numpy()).all() for v in trainer.model.trainable_variables)
    assert np.isfinite(result.eval_loss)


def test_diverging_run_stops_with_last_good_checkpoint(tmp_path):
    trainer = small_trainer(
        steps=300,
        steps_per_loop=10,
        log_every=10,
        controller=ConstantController(1e30),
        max_consecutive_nonfinite=3,
    )
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(logdir=str(tmp_path), run_name="boom", quiet=True)
    events = Events(tmp_path / "boom")
    loss = events.values("loss/batch")
    first_bad = int(np.flatnonzero(~np.isfinite(loss))[0])
    assert f"at step {first_bad};" in str(info.value)
    assert "in a row" in str(info.value)
    assert len(loss) < 300  # it stopped early
    latest = tf.train.latest_checkpoint(os.path.join(tmp_path, "boom", "checkpoints"))
    reader = tf.train.load_checkpoint(latest)
    names = [
        n
        for n in reader.get_variable_to_shape_map()
        if n.startswith("optimizer/_trainable_variables/")
    ]
    assert names and all(np.isfinite(reader.get_tensor(n)).all() for n in names)


def test_a_logdir_that_cannot_be_created_is_a_clear_error(tmp_path, capsys):
    from lrresearch import cli

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["train", f"--logdir={blocker}/runs", "--gin_param=Trainer.steps=5"]) == 2
    err = capsys.readouterr().err
    assert "cannot create logdir" in err and "--logdir" in err


def test_bad_guard_settings_name_the_parameter():
    with pytest.raises(ValueError, match=r"Trainer\.nonfinite_lr_factor"):
        small_trainer(nonfinite_lr_factor=0.0)
    with pytest.raises(ValueError, match=r"Trainer\.max_consecutive_nonfinite"):
        small_trainer(max_consecutive_nonfinite=-1)
