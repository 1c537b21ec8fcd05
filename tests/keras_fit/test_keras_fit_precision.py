"""`ControlledModel` under Keras's mixed precision policies: as the trainer does it, the
controllers see the unscaled loss and gradients, and a batch whose float16 gradients
overflow is the loss scale's business (skipped, scale halved, still a batch), not a bad
batch for the non-finite guard."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch import controllers as c
from lrresearch.keras_fit import ControlledModel, PerBatchSummaries
from lrresearch.step import precision
from lrresearch.workloads.data import BatchSampler, digits
from lrresearch.workloads.models import mlp
from tests.support import Events

BATCHES = 30


@keras.saving.register_keras_serializable(package="tests")
class CountingTraces(ControlledModel):
    """Counts the Python runs of `train_step`: one per trace of Keras's train function
    (with `steps_per_execution` = 1)."""

    traces = 0

    def train_step(self, data):
        self.traces += 1
        return super().train_step(data)


def controlled(policy: str, controller: c.Controller, **compile_args) -> CountingTraces:
    """The trainer's test MLP (seed 0, hidden (32,)) around `controller`, built and
    compiled under the dtype policy `policy` ("off" is float32), SGD at 0.1."""
    keras.utils.set_random_seed(0)
    data = digits()
    with precision.policy(policy):
        model = CountingTraces(mlp(data.input_shape, data.num_classes, hidden=(32,)), controller)
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            **compile_args,
        )
    return model


class WeightsAfterEachBatch(keras.callbacks.Callback):
    def __init__(self, model: keras.Model):
        super().__init__()
        self.weights = [[v.numpy() for v in model.trainable_variables]]

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append([v.numpy() for v in self.model.trainable_variables])

    def update_norms(self) -> np.ndarray:
        """||w_after - w_before|| over all variables, per batch."""
        pairs = zip(self.weights[:-1], self.weights[1:], strict=True)
        return np.array(
            [np.sqrt(sum(np.sum((b - a) ** 2) for a, b in zip(*p, strict=True))) for p in pairs]
        )


def fit(model: ControlledModel, logdir) -> tuple[Events, WeightsAfterEachBatch]:
    """One epoch over `BATCHES` batches of 64 digits, in `Trainer(seed=0)`'s order."""
    data = digits()
    sampler = BatchSampler(data.x_train, data.y_train, 64, 0)
    batches = [sampler.next() for _ in range(BATCHES)]
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    weights, summaries = WeightsAfterEachBatch(model), PerBatchSummaries(str(logdir))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[summaries, weights])
    summaries.close()
    return Events(logdir), weights


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same batches under each policy, with an LR that follows the gradient norm."""
    logdir = tmp_path_factory.mktemp("keras_precision")
    out = {}
    for policy in ("off", "mixed_float16", "mixed_bfloat16"):
        model = controlled(policy, c.GradNormController(slope=0.05))
        out[policy] = (model, *fit(model, logdir / policy))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "rtol"), [("mixed_float16", 5e-3), ("mixed_bfloat16", 3e-2)])
def test_fit_under_mixed_precision_sees_and_applies_the_unscaled_gradients(runs, policy, rtol):
    (_, events, weights), (model, low, low_weights) = runs["off"], runs[policy]
    for tag in ("loss/batch", "grad/global_norm", "lr"):
        np.testing.assert_allclose(low.scalar(tag)[:5], events.scalar(tag)[:5], rtol=rtol)
    # The weights move by the same amount: not divided by the loss scale (2**15).
    np.testing.assert_allclose(
        low_weights.update_norms()[:5], weights.update_norms()[:5], rtol=2 * rtol
    )
    assert model.inner.layers[1].compute_dtype == policy.split("_")[1]
    assert type(model.optimizer) is keras.optimizers.SGD  # the LossScaleOptimizer's inner
    assert model.traces == 1 and int(model.optimizer.iterations.numpy()) == BATCHES


@pytest.mark.slow
def test_precision_tags_only_with_float16_loss_scaling(runs):
    model, events, _ = runs["mixed_float16"]
    assert np.all(events.scalar("precision/loss_scale") == 2.0**15)
    assert np.all(events.scalar("precision/overflow") == 0)
    assert float(model.loss_scale.scale.numpy()) == 2.0**15
    for policy in ("off", "mixed_bfloat16"):
        assert runs[policy][0].loss_scale is None
        assert not {t for t in runs[policy][1].tags if t.startswith("precision/")}


@pytest.fixture(scope="module")
def overflow_run(tmp_path_factory):
    """A float16 fit whose first batches overflow: the scale starts at 2**40, far above
    float16's 65504, and halves until the scaled gradients fit. The LR is a warmup,
    0.001 * batch index, so it shows the index the controller sees."""
    controller = c.WarmupCosineController(base_lr=0.1, warmup_steps=100, decay_steps=200)
    model = controlled("mixed_float16", controller)
    model.loss_scale.scale.assign(2.0**40)
    events, _ = fit(model, tmp_path_factory.mktemp("keras_overflow"))
    return model, events


def test_fit_overflow_is_skipped_by_the_loss_scale_not_the_guard(overflow_run):
    model, events = overflow_run
    overflow = events.scalar("precision/overflow").astype(bool)  # one per batch 0..29
    overflowed = int(overflow.sum())
    assert overflow[:20].all() and overflowed < BATCHES  # 2**40 / 2**20 does not fit
    np.testing.assert_array_equal(~np.isfinite(events.scalar("grad/global_norm")), overflow)
    assert np.all(events.scalar("guard/skipped") == 0)  # the guard did not count them
    # The scale each batch used: 2**40 at batch 0, halved after every overflowed batch.
    want = 2.0 ** (40 - np.concatenate([[0], np.cumsum(overflow)[:-1]]))
    np.testing.assert_array_equal(events.scalar("precision/loss_scale").astype(np.float64), want)
    assert float(model.loss_scale.scale.numpy()) == 2.0 ** (40 - overflowed)
    # Their updates were skipped, yet the batch index advanced through them.
    assert int(model.optimizer.iterations.numpy()) == BATCHES - overflowed
    assert int(model.loss_scale.overflows.numpy()) == overflowed
    np.testing.assert_allclose(events.scalar("lr"), 0.001 * np.arange(BATCHES), rtol=1e-6)
    assert np.all(np.isfinite(events.scalar("loss/batch")))
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)
    assert model.traces == 1


def built(model: ControlledModel) -> ControlledModel:
    model.build((None, 8, 8, 1))
    model.optimizer.build(model.trainable_variables)
    return model


def test_the_loss_scale_is_saved_with_the_weights_and_the_model(overflow_run, tmp_path):
    model, _ = overflow_run
    model.save_weights(tmp_path / "run.weights.h5")
    model.save(tmp_path / "run.keras")
    saved = {k: v.numpy() for k, v in model.loss_scale_state().items()}
    assert saved["loss_scale.overflows"] >= 20
    controller = c.WarmupCosineController(base_lr=0.1, warmup_steps=100, decay_steps=200)
    from_weights = built(controlled("mixed_float16", controller))
    from_weights.load_weights(tmp_path / "run.weights.h5")
    from_keras = keras.models.load_model(tmp_path / "run.keras")  # float32 global policy
    for loaded in (from_weights, from_keras):
        assert {k: v.numpy() for k, v in loaded.loss_scale_state().items()} == saved
        assert type(loaded.optimizer) is keras.optimizers.SGD
    # A float32 model loads the same weights and has no loss scale to restore.
    float32 = built(controlled("off", c.WarmupCosineController(warmup_steps=100, decay_steps=200)))
    float32.load_weights(tmp_path / "run.weights.h5")
    assert float32.loss_scale is None


def test_the_wrapped_models_policy_decides_loss_scaling():
    with precision.policy("mixed_float16"):
        inner = mlp((8,), 3, hidden=(4,))
    model = ControlledModel(inner, c.ConstantController())  # wrapped under float32
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    assert model.loss_scale is not None and model.dtype_policy.name == "mixed_float16"


def test_compile_checks_the_optimizer_inside_the_loss_scale_optimizer():
    # HypergradientController refuses Keras's momentum SGD, also when compile wraps it.
    with precision.policy("mixed_float16"):
        model = ControlledModel(mlp((8,), 3, hidden=(4,)), c.HypergradientController())
        with pytest.raises(ValueError, match="momentum > 0 under HypergradientController"):
            model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    # A static loss_scale_factor would divide every update: refused, naming the fix.
    model = ControlledModel(mlp((8,), 3, hidden=(4,)), c.ConstantController())
    with pytest.raises(ValueError, match=r"loss_scale_factor must be None.*'mixed_float16'"):
        model.compile(optimizer=keras.optimizers.SGD(0.1, loss_scale_factor=128.0), loss="mse")
