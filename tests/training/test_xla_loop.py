"""`Trainer.jit_compile`: the XLA-compiled loop trains the run the ordinary loop trains.

Same data in the same order (the in-memory sampler's permutations are drawn ahead of
each call, `lrresearch.workloads.xla_sampler`), same per-batch log (the block of rows), the loop
compiled once, and a `tf.data` input compiled per batch. Tolerance: XLA fuses and
reorders float32 arithmetic, so values agree to float32 rounding compounded over the
run's batches, not bit for bit (rtol 1e-4 over 60 batches; measured ~1e-6).
"""

from __future__ import annotations

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.config import parse as config
from lrresearch.controllers import ConstantController
from lrresearch.training.trainer import Trainer
from tests.support import read_events, train

PARAMS = {
    "Trainer.steps": 60,
    "Trainer.steps_per_loop": 25,
    "Trainer.histogram_every": 20,
    "Trainer.eval_every": 0,
    "Trainer.checkpoint_every": 0,
    "Trainer.log_every": 60,
    "mlp.hidden": (16,),
    "Trainer.controller": "@LossTrendController()",  # a window of losses in a variable
    "LossTrendController.window": 6,
    "LossTrendController.initial_lr": 0.1,
    "LossTrendController.max_lr": 0.5,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("xla")
    return {
        jit: train(logdir, params={**PARAMS, "Trainer.jit_compile": jit}, run_name=f"jit-{jit}")
        for jit in (False, True)
    }


@pytest.mark.slow
def test_xla_run_logs_the_same_batches_and_values(runs):
    plain, xla = runs[False].events, runs[True].events
    assert xla.tags == plain.tags
    assert runs[True].events.hparams()["jit_compile"] is True
    for tag in sorted(plain.tags_of("scalars")):
        np.testing.assert_array_equal(xla.steps(tag), plain.steps(tag), err_msg=tag)
        np.testing.assert_allclose(
            xla.values(tag), plain.values(tag), rtol=1e-4, atol=1e-6, err_msg=tag
        )
    assert len(np.unique(plain.scalar("lr"))) > 3  # the rule moved the LR
    np.testing.assert_array_equal(plain.steps("lr"), np.arange(60))
    for tag in plain.tags_of("histograms"):  # computed in the compiled loop, both ways
        np.testing.assert_array_equal(xla.steps(tag), [0, 20, 40], err_msg=tag)
        got, want = xla.values(tag), plain.values(tag)
        np.testing.assert_allclose(got[..., :2], want[..., :2], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(got[..., 2].sum(-1), want[..., 2].sum(-1))


@pytest.mark.slow
def test_xla_loop_is_compiled_once(runs):
    """The loop's XLA program does not depend on any variable's value (a `var[i]` read
    would make it a compile-time constant: one compilation per call)."""
    trainer = runs[True].trainer
    # The loop the run called: each call stops at a cadence (`Cadences.next_boundary`),
    # so every call of this run starts on a histogram batch.
    loop = trainer.loops[(trainer.cadences.groups_due(0), trainer.call_capacity, True)]
    assert loop.experimental_get_tracing_count() == 1
    n = tf.constant(5, tf.int64)
    loop.prepare()
    before = loop.experimental_get_compiler_ir(n)(stage="hlo")
    with trainer.logging_to(tf.summary.create_noop_writer()):
        trainer.run_steps(12)  # the same loop again (step 60: histograms due)
    loop.prepare()
    assert loop.experimental_get_compiler_ir(n)(stage="hlo") == before


def test_tf_data_input_compiles_each_batch(tmp_path):
    """A `tf.data` iterator cannot be inside XLA: each batch's step is compiled."""

    def pipeline():
        rng = np.random.default_rng(0)
        x = rng.normal(size=(256, 4)).astype("float32")
        y = (x @ np.arange(1.0, 5.0, dtype="float32")).astype("float32")
        return tf.data.Dataset.from_tensor_slices((x, y))

    def model(input_shape):
        return keras.Sequential([keras.Input(input_shape), keras.layers.Dense(1)])

    losses = {}
    for jit in (False, True):
        config.parse([], [])
        try:
            trainer = Trainer(steps=20, steps_per_loop=10, dataset=pipeline, model=model,
                              loss="mse", histogram_every=0, eval_every=0, jit_compile=jit,
                              controller=ConstantController(0.01))  # fmt: skip
            result = trainer.fit(logdir=str(tmp_path), run_name=f"data-{jit}", quiet=True)
        finally:
            gin.clear_config()
        losses[jit] = read_events(result.run_dir).scalar("loss/batch")
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    assert losses[True][-1] < losses[True][0]


def test_jit_compile_under_a_strategy_is_refused():
    with pytest.raises(ValueError, match=r"Trainer.jit_compile = True is not supported"):
        Trainer(jit_compile=True, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
