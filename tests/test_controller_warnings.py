"""Settings that make a controller do nothing (or cost everything): refused at
construction, warned before the run (`run_warnings`) or from its state between compiled
calls (`state_warnings`)."""

from __future__ import annotations

import gin
import numpy as np
import pytest
import tensorflow as tf

from lrresearch import config
from lrresearch.controllers import (
    Chain,
    ConstantController,
    CyclicalController,
    GradNormController,
    LossTrendController,
    PlateauController,
    PolyakController,
    Product,
    Warmup,
    WarmupCosineController,
)
from lrresearch.controllers.compose import LossNudgeFactor
from lrresearch.signals import make_signals
from lrresearch.trainer import Trainer


@pytest.mark.parametrize("window", [100_001, 10_000_000, 1_000_000_000])
def test_loss_trend_refuses_a_window_whose_per_batch_cost_is_unreasonable(window):
    with pytest.raises(ValueError) as error:
        LossTrendController(window=window, max_lr=0.1)
    message = str(error.value)
    assert message.startswith(
        f"LossTrendController.window must be <= 100,000 batches, got {window:,}"
    )
    assert "ms per batch" in message and "use a window of at most" in message


def test_loss_trend_accepts_the_largest_window():
    controller = LossTrendController(window=100_000, max_lr=0.1)
    assert controller.losses.shape == (100_000,)


def test_loss_trend_warns_when_its_window_never_fills():
    controller = LossTrendController(initial_lr=0.002, window=500, max_lr=0.1)
    assert controller.run_warnings(steps=499) == [
        "LossTrendController.window = 500 never fills in Trainer.steps = 499 batches, so "
        "the LR stays at initial_lr = 0.002; lower the window"
    ]
    assert controller.run_warnings(steps=500) == []  # fills on the last batch
    assert controller.run_warnings(steps=None) == []  # unknown (Keras fit)


def test_loss_trend_window_equal_to_steps_really_moves_the_lr_on_the_last_batch():
    # The boundary of the warning: with window == steps the LR changes exactly once.
    controller = LossTrendController(initial_lr=0.01, window=5, max_lr=1.0)
    lrs = [float(controller(make_signals(t, 5.0 - t))) for t in range(5)]
    assert lrs[:4] == [pytest.approx(0.01)] * 4 and lrs[4] == pytest.approx(0.0105)


def test_plateau_warns_when_no_cut_fits_in_the_run():
    controller = PlateauController(initial_lr=0.1, patience=200)
    (warning,) = controller.run_warnings(steps=201)
    assert warning.startswith("PlateauController.patience = 200 leaves no room for a cut")
    assert "initial_lr = 0.1" in warning and "lower PlateauController.patience" in warning
    assert controller.run_warnings(steps=202) == []
    # The boundary is the rule's: on a flat metric the first cut is at batch patience + 1.
    flat = PlateauController(initial_lr=0.1, monitor="loss", patience=3)
    lrs = [float(flat(make_signals(t, 1.0))) for t in range(5)]
    assert lrs == [pytest.approx(0.1)] * 4 + [pytest.approx(0.05)]


def test_schedules_warn_when_the_warmup_outlasts_the_run():
    cosine = WarmupCosineController(base_lr=0.1, warmup_steps=100, decay_steps=2000)
    (warning,) = cosine.run_warnings(steps=100)
    assert warning.startswith("WarmupCosineController.warmup_steps = 100 is not over in")
    assert cosine.run_warnings(steps=101) == []
    warm = Warmup(ConstantController(0.1), warmup_steps=50, start_factor=0.0)
    (warning,) = warm.run_warnings(steps=26)
    assert "Warmup.warmup_steps = 50" in warning and "gets 0.5 of it" in warning
    assert warm.run_warnings(steps=51) == []


def test_chain_warns_about_a_boundary_beyond_the_run_and_forwards_its_parts():
    chain = Chain([LossTrendController(window=300, max_lr=0.1), ConstantController(0.01)], [1000])
    warnings = chain.run_warnings(steps=200)
    assert warnings[0].startswith("LossTrendController.window = 300 never fills")
    assert warnings[1].startswith("Chain.boundaries[0] = 1000 is not reached in Trainer.steps")
    assert "Chain.controllers[1] never sets the LR" in warnings[1]
    assert chain.run_warnings(steps=1001) == []


def test_products_and_wrappers_forward_the_warnings_of_their_parts():
    trend = LossTrendController(window=300, max_lr=0.1)
    product = Product(trend, LossNudgeFactor())
    warm = Warmup(Product(ConstantController(0.1), PolyakController()), warmup_steps=10)
    assert product.run_warnings(steps=100) == trend.run_warnings(steps=100) != []
    assert CyclicalController().run_warnings(steps=10) == []
    assert GradNormController().run_warnings(steps=1) == []
    polyak = warm.base.factor
    polyak.zero_lr_streak.assign(PolyakController.ZERO_LR_STREAK)
    assert warm.state_warnings() == polyak.state_warnings() != []


def polyak_warnings_after(losses, f_star):
    controller = PolyakController(f_star=f_star, max_lr=1.0)
    for t, loss in enumerate(losses):
        controller.compute(make_signals(t, loss, 1.0))
    return controller.state_warnings(), controller


def test_polyak_warns_after_50_batches_in_a_row_at_or_below_f_star():
    losses = np.r_[np.full(10, 3.0), np.full(49, 1.0), 2.0, np.full(50, 1.0)]
    early, controller = polyak_warnings_after(losses[:59], f_star=1.0)
    assert early == []  # 49 in a row: not yet
    assert int(controller.zero_lr_batches.numpy()) == 49
    (warning,), controller = polyak_warnings_after(losses, f_star=1.0)
    assert warning == (
        "PolyakController: the batch loss was <= f_star = 1 on 50 or more batches in a "
        "row, so the LR was 0 and the weights did not move; lower PolyakController.f_star "
        "(a lower bound of the loss: 0 for cross-entropy and squared error)"
    )
    assert int(controller.zero_lr_batches.numpy()) == 99
    # NaN losses do not count (the guard handles them) and break the streak.
    assert polyak_warnings_after(np.tile([1.0, np.nan], 60), f_star=1.0)[0] == []


@pytest.fixture(scope="module")
def polyak_runs(tmp_path_factory):
    """Two compiled trainer runs: f_star above the loss (the LR is 0 throughout), and 0."""
    trainers = {}
    for name, f_star in (("stuck", 10.0), ("healthy", 0.0)):
        config.parse(
            [],
            [
                "Trainer.controller = @PolyakController()",
                f"PolyakController.f_star = {f_star}",
                "Trainer.steps = 60",
                "Trainer.steps_per_loop = 30",
                "Trainer.histogram_every = 0",
                "Trainer.eval_every = 0",
                "mlp.hidden = (8,)",
            ],
        )
        try:
            trainers[name] = Trainer()
            trainers[name].fit(logdir=str(tmp_path_factory.mktemp(name)), quiet=True)
        finally:
            gin.clear_config()
    return trainers


def test_polyak_state_warning_appears_in_a_compiled_run_stuck_at_lr_zero(polyak_runs):
    stuck = polyak_runs["stuck"]
    assert float(stuck.optimizer.learning_rate.numpy()) == 0.0
    (warning,) = stuck.controller.state_warnings()
    assert "f_star = 10" in warning and "lower PolyakController.f_star" in warning
    assert int(stuck.controller.zero_lr_batches.numpy()) == 60
    assert polyak_runs["healthy"].controller.state_warnings() == []
    assert int(polyak_runs["healthy"].controller.zero_lr_batches.numpy()) == 0


def test_polyak_counters_are_checkpointed(polyak_runs, tmp_path):
    controller = polyak_runs["stuck"].controller
    path = tf.train.Checkpoint(controller=controller).save(str(tmp_path / "ckpt"))
    fresh = PolyakController(f_star=10.0)
    tf.train.Checkpoint(controller=fresh).restore(path).assert_existing_objects_matched()
    assert int(fresh.zero_lr_streak.numpy()) == 60
    assert fresh.state_warnings() == controller.state_warnings()


# -- Parameter-free controllers on an optimizer that is not their method ---------------


def _optimizers():
    import keras

    from lrresearch.optimizers import MomentumSGD

    return {
        "sgd": keras.optimizers.SGD(),
        "torch sgd": MomentumSGD(momentum=0.0),
        "keras momentum": keras.optimizers.SGD(momentum=0.9),
        "torch momentum": MomentumSGD(momentum=0.9),
        "nesterov": keras.optimizers.SGD(momentum=0.9, nesterov=True),
        "adam": keras.optimizers.Adam(),
        "sgd with weight decay": keras.optimizers.SGD(weight_decay=1e-4),
    }


@pytest.mark.parametrize("name", ["DoGController", "DoWGController"])
def test_dog_and_dowg_warn_on_an_optimizer_that_is_not_plain_sgd(name):
    from lrresearch import controllers

    optimizers = _optimizers()
    warned = {}
    for kind, optimizer in optimizers.items():
        controller = getattr(controllers, name)()
        controller.check_optimizer(optimizer)  # never refused: a variant one may study
        warned[kind] = controller.run_warnings(None)
    assert warned["sgd"] == warned["torch sgd"] == []
    method = name.removesuffix("Controller")
    assert warned["keras momentum"] == [
        f"{method} with Trainer.optimizer = Keras's SGD(momentum=0.9) is not {method}: its "
        "step sizes enter the velocity (m = mu*m - lr*g), so each update mixes the step "
        "sizes of past batches instead of the gradient itself (the method's update, which "
        f"has no momentum or weight decay); for {method} set `Trainer.optimizer = 'sgd'`"
    ]
    assert "scales the momentum buffer" in warned["torch momentum"][0]
    assert "its step size scales Adam's update" in warned["adam"][0]
    for kind in ("nesterov", "sgd with weight decay"):
        assert warned[kind][0].endswith("set `Trainer.optimizer = 'sgd'`"), kind


def test_dadapt_sgd_refuses_an_optimizer_whose_weights_leave_its_path():
    from lrresearch.controllers import DAdaptSGDController

    optimizers = _optimizers()
    for kind in ("sgd", "torch sgd"):
        DAdaptSGDController().check_optimizer(optimizers[kind])  # accepted
    DAdaptSGDController(momentum=0.9).check_optimizer(optimizers["keras momentum"])
    with pytest.raises(ValueError) as error:
        DAdaptSGDController().check_optimizer(optimizers["keras momentum"])
    assert str(error.value).startswith(
        "Trainer.optimizer must be Keras's SGD with momentum 0.0 (no Nesterov, no weight "
        "decay) under DAdaptSGDController(momentum=0.0), got Keras's SGD(momentum=0.9): "
    )
    assert str(error.value).endswith(
        "set `DAdaptSGDController.momentum = 0.9` for the authors' DAdaptSGD(momentum=0.9), "
        "or `Trainer.optimizer = 'sgd'` for momentum 0.0"
    )
    for kind in ("torch momentum", "nesterov", "adam", "sgd with weight decay"):
        with pytest.raises(ValueError, match=r"use `Trainer.optimizer = 'sgd'`; for Adam"):
            DAdaptSGDController().check_optimizer(optimizers[kind])
    with pytest.raises(ValueError, match=r"@keras.optimizers.SGD with SGD.momentum = 0.9`"):
        DAdaptSGDController(momentum=0.9).check_optimizer(optimizers["torch momentum"])


def test_mechanic_warns_that_keras_momentum_is_not_the_authors_torch_sgd():
    import warnings

    from lrresearch.optimizers import Mechanic, MomentumSGD

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Mechanic(base_optimizer="sgd")
        Mechanic(base_optimizer=MomentumSGD)
        assert caught == []
        Mechanic(base_optimizer="momentum")
    (warning,) = caught
    assert str(warning.message) == (
        "Mechanic.base_optimizer = 'momentum' is Keras's SGD(momentum=0.9), whose velocity "
        "holds the LR (m = mu*m - lr*g), not the torch.optim.SGD(momentum=0.9) of the "
        "authors' mechanize (buf = mu*buf + g): once the LR changes per batch the two "
        "differ (docs/parity/mechanic.md); for the authors' form set "
        "`Mechanic.base_optimizer = @MomentumSGD` with `MomentumSGD.momentum = 0.9`"
    )


def test_a_trainer_of_dog_on_adam_warns_and_of_dadapt_sgd_on_momentum_refuses():
    """The trainer calls `check_optimizer` once the optimizer exists, before the run
    prints `run_warnings` (each distinct one once)."""

    def trainer(*bindings):
        config.parse([], ["Trainer.steps = 4", "mlp.hidden = (4,)", *bindings])
        try:
            built = Trainer()
            built.build()
            return built
        finally:
            gin.clear_config()

    with pytest.raises(ValueError, match=r"DAdaptSGDController\.momentum = 0\.9"):
        trainer("Trainer.controller = @DAdaptSGDController()", "Trainer.optimizer = 'momentum'")
    dog = trainer("Trainer.controller = @DoGController()", "Trainer.optimizer = 'adam'")
    assert dog.controller.run_warnings(dog.steps) == [
        "DoG with Trainer.optimizer = Adam is not DoG: its step size scales Adam's "
        "update instead of the gradient itself (the method's update, which has no momentum "
        "or weight decay); for DoG set `Trainer.optimizer = 'sgd'`"
    ]
