"""`Trainer.polynomial_averaging`: the average against a numpy transcription of the DoG
authors' `PolynomialDecayAverager` (formll/dog, `src/dog/averager.py`) over the
trainer's own batches; evaluation on the average; checkpoints that resume exactly."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import DoGController
from lrresearch.step.averaging import PolynomialAverager
from lrresearch.training.trainer import Trainer
from lrresearch.workloads import model_loss as workload
from tests.support import small_trainer

GAMMA = 3.0


def make_trainer(**kwargs) -> Trainer:
    args = dict(
        steps=40, controller=DoGController(), steps_per_loop=1, polynomial_averaging=GAMMA,
        model=_model,
    )  # fmt: skip
    return small_trainer(build=True, **{**args, **kwargs})


def _model(input_shape, num_classes: int):
    import keras

    layers = keras.layers
    return keras.Sequential([
        keras.Input(input_shape), layers.Flatten(), layers.Dense(8, activation="relu"),
        layers.BatchNormalization(), layers.Dense(num_classes),
    ])  # fmt: skip


def weights(trainer: Trainer) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in trainer.model.variables]


@pytest.fixture(scope="module")
def stepped():
    """A trainer stepped one batch at a time, its weights after every batch."""
    trainer = make_trainer()
    history = []
    for _ in range(15):
        trainer.run_steps(1)
        history.append(weights(trainer))
    return trainer, history


def test_average_matches_the_authors_averager(stepped):
    trainer, history = stepped
    average = [w.astype(np.float64) for w in history[0]]  # t = 1: the first iterate
    for t, current in enumerate(history[1:], start=2):
        weight = (GAMMA + 1) / (GAMMA + t)
        average = [a * (1 - weight) + w * weight for a, w in zip(average, current, strict=True)]
    ours = [a.numpy() for a in trainer.averager.average]
    assert len(ours) == 8  # two kernels and biases, Batch Norm's four (moving statistics too)
    for a, b in zip(ours, average, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    assert not np.allclose(ours[0], history[-1][0])  # the average is not the last iterate


def test_evaluation_uses_the_average_and_leaves_the_weights(stepped):
    trainer, _ = stepped
    before = weights(trainer)
    evals = {k: float(v) for k, v in trainer.evaluate().items()}
    np.testing.assert_array_equal(weights(trainer)[0], before[0])  # bit for bit
    for v, a in zip(trainer.model.variables, trainer.averager.average, strict=True):
        v.assign(a)
    t = trainer
    manual = workload.evaluate(t.model, t.loss_fn, t.metrics, t.eval_dataset)
    assert evals["loss"] == pytest.approx(float(manual["loss"]), rel=1e-6)
    for v, w in zip(trainer.model.variables, before, strict=True):
        v.assign(w)


@pytest.mark.slow
def test_a_checkpoint_holds_the_average_and_resumes_exactly(tmp_path):
    a = make_trainer()
    a.run_steps(10)
    with a.eval_weights():
        path = a.checkpoint.save(str(tmp_path / "ckpt"))
    a.run_steps(10)
    b = make_trainer()
    b.checkpoint.restore(path).assert_consumed()
    b.after_restore()
    b.run_steps(10)
    for x, y in zip(weights(a), weights(b), strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.averager.average, b.averager.average, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    # The checkpoint's model is the average (what to evaluate or deploy).
    reader = tf.train.load_checkpoint(path)
    saved = reader.get_tensor("averaging/average/0/.ATTRIBUTES/VARIABLE_VALUE")
    live = a.model.variables[0].numpy()
    assert saved.shape == live.shape


@pytest.mark.parametrize("gamma", [-1.0, float("nan"), "8"])
def test_bad_gamma_names_the_binding(gamma):
    with pytest.raises(ValueError, match=r"Trainer\.polynomial_averaging"):
        PolynomialAverager(gamma, [])
