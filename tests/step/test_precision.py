"""Mixed precision: the controllers see the unscaled loss and gradient norm, and a
batch whose float16 gradients overflow is the loss scale's business (skipped, scale
halved), not a bad batch for the non-finite guard."""

from __future__ import annotations

import gin
import numpy as np
import pytest

from lrresearch.config import parse as config
from lrresearch.logs import summaries
from lrresearch.training.trainer import Trainer
from tests.support import Events

PARAMS = [
    "Trainer.steps = 30",
    "Trainer.steps_per_loop = 10",
    "Trainer.histogram_every = 0",
    "Trainer.eval_every = 0",
    "Trainer.deterministic = True",
    "mlp.hidden = (32,)",
]


def trainer(policy: str, *extra: str) -> Trainer:
    config.parse([], [*PARAMS, f"Trainer.mixed_precision = '{policy}'", *extra])
    try:
        return Trainer()
    finally:
        gin.clear_config()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("precision")
    out = {}
    for policy in ("off", "mixed_bfloat16", "mixed_float16"):
        t = trainer(policy)
        result = t.fit(logdir=str(logdir), run_name=policy, quiet=True)
        out[policy] = (t, Events(result.run_dir))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "rtol"), [("mixed_float16", 5e-3), ("mixed_bfloat16", 3e-2)])
def test_controllers_see_the_unscaled_loss_and_gradient_norm(runs, policy, rtol):
    reference, low = runs["off"][1], runs[policy][1]
    for tag in ("grad/global_norm", "loss/batch", "lr"):
        np.testing.assert_allclose(low.scalar(tag)[:5], reference.scalar(tag)[:5], rtol=rtol)
    assert runs[policy][0].model.layers[1].compute_dtype == policy.split("_")[1]
    if policy == "mixed_float16":  # the norm is ~1, the loss scale 2**15: unscaled
        assert float(runs[policy][0].loss_scale.scale.numpy()) == 2.0**15
        assert np.all(low.scalar("grad/global_norm") < 100)


@pytest.fixture(scope="module")
def overflow_run(tmp_path_factory):
    """A float16 run whose first batches overflow: the scale starts at 2**40, far above
    float16's 65504, and halves until the scaled gradients fit."""
    t = trainer("mixed_float16")
    t.build()
    t.loss_scale.scale.assign(2.0**40)
    logdir = tmp_path_factory.mktemp("overflow")
    t.fit(logdir=str(logdir), run_name="overflow", quiet=True)
    return t, Events(logdir / "overflow")


def test_float16_overflow_is_handled_by_the_loss_scale_not_the_guard(overflow_run):
    t, events = overflow_run
    skipped, norm = events.scalar("guard/skipped"), events.scalar("grad/global_norm")
    overflowed = int((~np.isfinite(norm)).sum())
    assert overflowed >= 1 and np.all(~np.isfinite(norm[:overflowed]))  # the first ones
    assert np.all(skipped == 0)  # the guard did not count them
    assert float(t.loss_scale.scale.numpy()) == 2.0 ** (40 - overflowed)
    assert int(t.optimizer.iterations.numpy()) == 30 - overflowed  # their updates skipped
    assert np.all(np.isfinite(events.scalar("loss/batch")))
    assert all(np.isfinite(v.numpy()).all() for v in t.model.trainable_variables)
    assert t.train_loop.experimental_get_tracing_count() == 1


def test_loss_scale_is_logged_every_batch_and_halves_after_each_overflow(overflow_run):
    t, events = overflow_run
    scale = events.scalar("precision/loss_scale").astype(np.float64)  # one per step 0..29
    overflow = events.scalar("precision/overflow")
    assert len(scale) == len(overflow) == 30
    overflowed = int((~np.isfinite(events.scalar("grad/global_norm"))).sum())
    np.testing.assert_array_equal(overflow, np.arange(30) < overflowed)
    # The scale each batch used: 2**40 at step 0, halved after every overflowed batch.
    want = 2.0 ** (40 - np.minimum(np.arange(30), overflowed))
    np.testing.assert_array_equal(scale, want)
    assert scale[-1] == float(t.loss_scale.scale.numpy())
    for tag in ("precision/loss_scale", "precision/overflow"):  # TensorBoard's hover text
        assert events.acc.SummaryMetadata(tag).summary_description == summaries.DESCRIPTIONS[tag]


@pytest.mark.slow
def test_precision_tags_only_with_float16_loss_scaling(runs):
    assert np.all(runs["mixed_float16"][1].scalar("precision/loss_scale") == 2.0**15)
    assert np.all(runs["mixed_float16"][1].scalar("precision/overflow") == 0)
    for policy in ("off", "mixed_bfloat16"):
        assert not {t for t in runs[policy][1].tags if t.startswith("precision/")}


def test_an_unknown_policy_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"Trainer\.mixed_precision must be one of 'off'"):
        trainer("float8")
