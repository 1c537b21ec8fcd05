"""What else moves per batch: the optimizer's momentum and weight decay set by a
controller (`ControllerOutput.momentum`, `.weight_decay`; `optimizer/<name>` tags) and
the update-to-weight ratio (`update/ratio/<variable>`), against numpy."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import (
    Chain,
    ConstantController,
    Controller,
    ControllerOutput,
    CyclicController,
    OneCycleController,
    Product,
    Warmup,
)
from lrresearch.controllers.compose import LossNudgeFactor
from lrresearch.controllers.signals import make_signals
from lrresearch.optimizers import MomentumSGD
from lrresearch.step.batch import OptimizerHyperparameters, set_lr
from lrresearch.training.trainer import Trainer
from tests.support import read_events, small_trainer

GRADS = np.array([[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0], [2.0, 2.0], [0.1, -0.3]], np.float32)
W0 = np.array([1.0, 2.0], np.float32)


class WeightDecaySchedule(Controller):
    """A test controller: LR 0.1, weight decay 0.01 * (step + 1)."""

    optimizer_hyperparameters = frozenset({"weight_decay"})

    def __init__(self):
        super().__init__(name="wd")
        self.initial_lr = 0.1

    def compute(self, signals):
        wd = 0.01 * tf.cast(signals.step + 1, tf.float32)
        return ControllerOutput(tf.constant(0.1), {}, weight_decay=wd)


def run_updates(optimizer, controller, steps: int = 5):  # len(GRADS)
    """Weights after each of `steps` batches of GRADS, with the controller setting LR
    and momentum / weight decay in one traced function."""
    w = tf.Variable(W0)
    optimizer.build([w])
    controller.check_optimizer(optimizer)
    hyper = OptimizerHyperparameters(optimizer, controller.optimizer_hyperparameters)

    @tf.function
    def batch(t, g):
        signals = make_signals(t, 1.0, 1.0)
        set_lr(controller, signals, optimizer.learning_rate, 1.0, hyper)
        optimizer.apply([g], [w])
        return w.read_value()

    out = [batch(tf.constant(t, tf.int64), GRADS[t]).numpy() for t in range(steps)]
    assert batch.experimental_get_tracing_count() == 1
    return np.array(out), hyper


def lrs_and_momenta(controller, steps: int = 5):  # len(GRADS)
    outs = [controller.compute(make_signals(t, 1.0, 1.0)) for t in range(steps)]
    return [float(o.lr) for o in outs], [float(o.momentum) for o in outs]


CYCLIC = dict(base_lr=0.05, max_lr=0.5, step_size_up=2, cycle_momentum=True)


@pytest.mark.parametrize("nesterov", [False, True])
def test_keras_sgd_uses_the_momentum_set_for_each_batch(nesterov):
    ctrl = CyclicController(**CYCLIC)
    opt = keras.optimizers.SGD(0.05, momentum=0.9, nesterov=nesterov)
    got, hyper = run_updates(opt, ctrl)
    lrs, mus = lrs_and_momenta(ctrl)
    assert len(set(mus)) > 2
    w, m, expected = W0.astype(np.float64), np.zeros(2), []
    for g, lr, mu in zip(GRADS, lrs, mus, strict=True):  # Keras's rule, written out
        m = mu * m - lr * g
        w = w + (mu * m - lr * g if nesterov else m)
        expected.append(w)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)  # float32 weights ~1
    assert float(hyper.variables_by_name["momentum"].numpy()) == pytest.approx(mus[-1])


def test_momentum_sgd_and_adam_use_the_momentum_set_for_each_batch():
    ctrl = OneCycleController(max_lr=0.5, total_steps=5, pct_start=0.4, cycle_momentum=True)
    lrs, mus = lrs_and_momenta(ctrl)
    got, _ = run_updates(MomentumSGD(0.1, momentum=0.9), ctrl)
    w, buf, expected = W0.astype(np.float64), np.zeros(2), []
    for g, lr, mu in zip(GRADS, lrs, mus, strict=True):  # PyTorch's SGD
        buf = mu * buf + g
        w = w - lr * buf
        expected.append(w)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)  # float32 weights ~1

    got, _ = run_updates(keras.optimizers.Adam(0.1), ctrl)
    w, m, v, expected = W0.astype(np.float64), np.zeros(2), np.zeros(2), []
    for t, (g, lr, b1) in enumerate(zip(GRADS, lrs, mus, strict=True), start=1):
        m = b1 * m + (1 - b1) * g  # beta_1 of this batch, also in the bias correction
        v = 0.999 * v + 0.001 * g * g
        alpha = lr * np.sqrt(1 - 0.999**t) / (1 - b1**t)
        w = w - alpha * m / (np.sqrt(v) + 1e-7)
        expected.append(w)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_adamw_uses_the_weight_decay_set_for_each_batch():
    ctrl = WeightDecaySchedule()
    got, hyper = run_updates(keras.optimizers.AdamW(0.1), ctrl)
    w, m, v, expected = W0.astype(np.float64), np.zeros(2), np.zeros(2), []
    for t, g in enumerate(GRADS, start=1):
        w = w - w * 0.01 * t * 0.1  # Keras: decoupled decay, before the Adam step
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - 0.1 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-7)
        expected.append(w)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert set(hyper.summaries()) == {"optimizer/weight_decay"}


@pytest.mark.parametrize(
    "optimizer",
    [keras.optimizers.SGD(0.1), MomentumSGD(0.1, momentum=0.0), keras.optimizers.RMSprop()],
    ids=["sgd", "MomentumSGD-0", "rmsprop"],
)
def test_cycle_momentum_refuses_an_optimizer_without_momentum(optimizer):
    for ctrl, owner in (
        (OneCycleController(cycle_momentum=True), "OneCycleController"),
        (Warmup(CyclicController(cycle_momentum=True)), "CyclicController"),
    ):
        with pytest.raises(ValueError, match=rf"{owner}\.cycle_momentum = True needs"):
            ctrl.check_optimizer(optimizer)
    OneCycleController().check_optimizer(optimizer)  # not cycling: anything goes


def test_composites_pass_the_momentum_on_or_refuse_to_mix():
    ctrl = OneCycleController(total_steps=100, cycle_momentum=True)
    expected = float(ctrl.compute(make_signals(10, 1.0, 1.0)).momentum)
    for wrapped in (
        Warmup(ctrl, warmup_steps=5),
        Product(ctrl, LossNudgeFactor()),
        Chain([OneCycleController(total_steps=5, cycle_momentum=True), ctrl], [5]),
    ):
        assert wrapped.optimizer_hyperparameters == {"momentum"}
        out = wrapped.compute(make_signals(10 if not isinstance(wrapped, Chain) else 15, 1.0, 1.0))
        assert float(out.momentum) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"Chain\.controllers must all set the same"):
        Chain([ConstantController(), ctrl], [5])
    with pytest.raises(ValueError, match=r"Product\.factor must set the LR factor only"):
        Product(ConstantController(), ctrl)


# -- in the trainer -------------------------------------------------------------------


def make_trainer(**kwargs) -> Trainer:
    return small_trainer(**{"steps": 12, "steps_per_loop": 6, "grad_norm_every": 4, **kwargs})


@pytest.mark.slow
def test_trainer_logs_the_cycled_momentum_every_batch_and_only_then(tmp_path):
    ctrl = CyclicController(base_lr=0.01, max_lr=0.1, step_size_up=3, cycle_momentum=True)
    trainer = make_trainer(controller=ctrl, optimizer="momentum")
    events = read_events(trainer.fit(logdir=str(tmp_path), run_name="m", quiet=True).run_dir)
    expected = [float(ctrl.compute(make_signals(t, 1.0, 1.0)).momentum) for t in range(12)]
    np.testing.assert_allclose(events.scalar("optimizer/momentum"), expected, rtol=2**-24)
    assert "optimizer/weight_decay" not in events.tags
    assert all(f.experimental_get_tracing_count() == 1 for f in trainer.loops.values())
    plain = make_trainer(controller=CyclicController(), optimizer="momentum", steps=2)
    tags = read_events(plain.fit(logdir=str(tmp_path), run_name="p", quiet=True).run_dir).tags
    assert not {t for t in tags if t.startswith("optimizer/")}


def ratio(before, after):
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    norm = np.linalg.norm(before)
    return 0.0 if norm == 0 else np.linalg.norm(after - before) / norm


def run_blocks(trainer, logdir, blocks, poison_block=None):
    """`blocks` compiled calls of 4 batches (one `grad_norm_every` each), with the
    weights read before and after the first batch of every call."""
    trainer.build()
    writer = tf.summary.create_file_writer(str(logdir))
    weights = []
    with trainer.logging_to(writer):
        for block in range(blocks):
            trainer.poison.assign(block == poison_block)
            before = [v.numpy() for v in trainer.variables]
            trainer.run_steps(1)
            weights.append((before, [v.numpy() for v in trainer.variables]))
            trainer.run_steps(3)
    writer.close()
    return read_events(logdir), weights


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_update_ratio_is_the_applied_update_over_the_weights(tmp_path, optimizer):
    poison = tf.Variable(False, trainable=False)

    def loss(y, logits):
        ce = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return ce * tf.where(poison, np.nan, 1.0)  # (a tf.where of ce would NaN its grad)

    lr = 0.05
    trainer = make_trainer(controller=ConstantController(lr=lr), optimizer=optimizer, loss=loss)
    trainer.poison = poison
    events, weights = run_blocks(trainer, tmp_path, blocks=3, poison_block=1)
    names = trainer.variable_names
    for name in names:
        np.testing.assert_array_equal(events.steps(f"update/ratio/{name}"), [0, 4, 8])
    for block, (before, after) in enumerate(weights):
        for i, name in enumerate(names):
            got = events.values(f"update/ratio/{name}")[block]
            if block == 1:  # the guard skipped the batch: no update
                assert got == 0.0
                continue
            # From the weights read before and after the batch.
            assert got == pytest.approx(ratio(before[i], after[i]), rel=1e-5, abs=2**-23)
            if optimizer == "sgd":
                # SGD's exact formula ||lr * g|| / ||w||; the applied update differs from
                # it by the float32 rounding of w - lr * g, at most 2**-24 ||w|| per batch.
                grad_norm = events.values(f"grad/norm/{name}")[block]
                norm = np.linalg.norm(before[i].astype(np.float64))
                applied_lr = events.scalar("lr")[4 * block]  # skipped batches scale it
                formula = 0.0 if norm == 0 else applied_lr * grad_norm / norm
                assert abs(got - formula) <= 2**-23 + 1e-5 * formula, name
    assert events.values("guard/skipped")[-1] == 4  # the poisoned call's 4 batches
