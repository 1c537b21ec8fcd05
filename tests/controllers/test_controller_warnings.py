"""Settings that make a controller do nothing (or cost everything): refused at
construction, warned before the run (`run_warnings`) or from its state between compiled
calls (`state_warnings`)."""

from __future__ import annotations

import gin
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.config import parse as config
from lrresearch.controllers import (
    Chain,
    ConstantController,
    CosineRestartsController,
    CyclicalController,
    GradNormController,
    InverseSqrtController,
    LossTrendController,
    MaxChange,
    MultiStepController,
    OneCycleController,
    PiecewiseConstantController,
    PlateauController,
    PolyakController,
    PolynomialDecayController,
    Product,
    Warmup,
    WarmupCosineController,
    WSDController,
)
from lrresearch.controllers.compose import LossNudgeFactor
from lrresearch.controllers.signals import make_signals
from lrresearch.training.trainer import Trainer
from tests.support import GIN_DIR, read_events


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
    assert cosine.run_warnings(steps=2000) == []
    warm = Warmup(ConstantController(0.1), warmup_steps=50, start_factor=0.0)
    (warning,) = warm.run_warnings(steps=26)
    assert "Warmup.warmup_steps = 50" in warning and "gets 0.5 of it" in warning
    assert warm.run_warnings(steps=51) == []
    rsqrt = InverseSqrtController(peak_lr=0.1, warmup_steps=100)
    (warning,) = rsqrt.run_warnings(steps=100)
    assert warning.startswith("InverseSqrtController.warmup_steps = 100 is not over in")
    assert rsqrt.run_warnings(steps=101) == []


def test_piecewise_and_multistep_warn_about_changes_the_run_never_reaches():
    """A Keras boundary's new value starts one batch after it; optax's and PyTorch's at it."""
    keras_like = PiecewiseConstantController([500, 1999], [0.1, 0.01, 0.001])
    (warning,) = keras_like.run_warnings(steps=2000)
    assert warning == (
        "PiecewiseConstantController.boundaries[1] = 1999 is not reached in Trainer.steps "
        "= 2000 batches, so the LR never changes there; lower it or raise Trainer.steps"
    )
    optax_like = PiecewiseConstantController([500, 1999], [0.1, 0.01, 0.001], "next")
    assert optax_like.run_warnings(steps=2000) == []
    milestones = MultiStepController(milestones=[500, 2000, 2500])
    warnings = milestones.run_warnings(steps=2000)
    assert [w.split(" is ")[0] for w in warnings] == [
        "MultiStepController.milestones[1] = 2000",
        "MultiStepController.milestones[2] = 2500",
    ]
    chained = Chain([ConstantController(0.1), MultiStepController(milestones=[500])], [1600])
    chained.set_run_length(2000)  # the part runs 400 batches of its own
    assert "in Chain.controllers[1]'s span = 400 batches" in chained.run_warnings(2000)[0]


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


@pytest.mark.slow
def test_polyak_state_warning_appears_in_a_compiled_run_stuck_at_lr_zero(polyak_runs):
    stuck = polyak_runs["stuck"]
    assert float(stuck.optimizer.learning_rate.numpy()) == 0.0
    (warning,) = stuck.controller.state_warnings()
    assert "f_star = 10" in warning and "lower PolyakController.f_star" in warning
    assert int(stuck.controller.zero_lr_batches.numpy()) == 60
    assert polyak_runs["healthy"].controller.state_warnings() == []
    assert int(polyak_runs["healthy"].controller.zero_lr_batches.numpy()) == 0


@pytest.mark.slow
def test_polyak_counters_are_checkpointed(polyak_runs, tmp_path):
    controller = polyak_runs["stuck"].controller
    path = tf.train.Checkpoint(controller=controller).save(str(tmp_path / "ckpt"))
    fresh = PolyakController(f_star=10.0)
    tf.train.Checkpoint(controller=fresh).restore(path).assert_existing_objects_matched()
    assert int(fresh.zero_lr_streak.numpy()) == 60
    assert fresh.state_warnings() == controller.state_warnings()


def warmup_cosine_lrs(steps, base_lr, warmup, decay_steps):
    """optax's warmup_cosine_decay_schedule (init_lr = end_lr = 0) in numpy float64."""
    t = np.arange(steps, dtype=np.float64)
    span = decay_steps - warmup
    cosine = 0.5 * base_lr * (1 + np.cos(np.pi * np.clip(t - warmup, 0, span) / span))
    return np.where(t < warmup, base_lr * t / warmup, cosine).astype(np.float32)


@pytest.mark.parametrize(
    ("controller", "binding"),
    [
        (lambda: WarmupCosineController(0.1, 10, 2000), "WarmupCosineController.decay_steps"),
        (lambda: OneCycleController(0.1, 2000), "OneCycleController.total_steps"),
        (lambda: WSDController(0.1, 100, 1500, 400), "WSDController.warmup_steps + stable"),
        (lambda: PolynomialDecayController(0.1, 2000), "PolynomialDecayController.decay_steps"),
        (lambda: MaxChange(Warmup(OneCycleController(0.1, 2000)), 0.1), "OneCycleController"),
    ],
)
def test_a_schedule_that_ends_before_the_run_or_is_cut_by_it_warns(controller, binding):
    (ends,) = controller().run_warnings(steps=3000)
    assert ends.startswith(f"{binding}") and "ends before Trainer.steps = 3000" in ends
    assert "the last 1,000 batches train at" in ends and "= None (the r" in ends
    (cut,) = controller().run_warnings(steps=1800)
    assert "is cut by Trainer.steps = 1800: the run stops 200 batches before" in cut
    assert controller().run_warnings(steps=2000) == []


@pytest.mark.parametrize(
    ("make", "binding", "length"),
    [
        (
            lambda: WarmupCosineController(0.1, 10),
            "WarmupCosineController.decay_steps",
            "decay_steps",
        ),
        (lambda: OneCycleController(0.1), "OneCycleController.total_steps", "total_steps"),
        (lambda: WSDController(0.1, 100), "WSDController.stable_steps", "stable_steps"),
        (
            lambda: PolynomialDecayController(0.1),
            "PolynomialDecayController.decay_steps",
            "decay_steps",
        ),
    ],
)
def test_a_schedule_length_left_at_none_is_the_run_length(make, binding, length):
    controller = make()
    with pytest.raises(ValueError, match=rf"^{binding} must be a number of batches when the run"):
        controller(make_signals(0, 1.0))  # alone, or under Keras fit: no run length
    chained = Chain([ConstantController(0.1), controller], [500])
    assert list(chained.set_run_length(3000)) == [binding]
    assert getattr(controller, length) == (2500 if length != "stable_steps" else 2000)
    assert chained.run_warnings(3000) == []
    with pytest.raises(ValueError, match=rf"^{binding} must be a number of batches"):
        make().set_run_length(None)


@pytest.mark.slow
def test_warmup_cosine_gin_decays_over_trainer_steps_and_follows_them_on_resume(tmp_path, capsys):
    """The shipped warmup_cosine.gin: its LR sequence is optax's with decay_steps =
    Trainer.steps; a resume that raises Trainer.steps stretches the schedule (the LR
    jumps, with a warning naming the binding) and config.gin records the new length."""
    base = [
        "Trainer.steps_per_loop = 4",
        "Trainer.checkpoint_every = 4",
        "Trainer.histogram_every = 0",
        "Trainer.eval_every = 0",
        "mlp.hidden = (8,)",
        "WarmupCosineController.warmup_steps = 3",
    ]
    for steps, resume in ((8, False), (12, True)):
        config.parse(
            [str(GIN_DIR / "strategies" / "warmup_cosine.gin")], [*base, f"Trainer.steps = {steps}"]
        )
        try:
            trainer = Trainer()
            assert trainer.run_length_bindings == {"WarmupCosineController.decay_steps": steps}
            assert trainer.controller.decay_steps == steps
            trainer.fit(logdir=str(tmp_path), run_name="cosine", resume=resume)
        finally:
            gin.clear_config()
        out = capsys.readouterr()
        assert "warning: WarmupCosineController" not in out.err  # no run_warnings
    lr = read_events(tmp_path / "cosine").scalar("lr")
    np.testing.assert_allclose(lr[:8], warmup_cosine_lrs(8, 0.1, 3, 8), rtol=2**-23)
    np.testing.assert_allclose(lr[8:], warmup_cosine_lrs(12, 0.1, 3, 12)[8:], rtol=2**-23)
    assert "Trainer.steps: 8 -> 12" in out.out
    assert (
        "warning: WarmupCosineController.decay_steps = None follows the run's length "
        "(Trainer.steps: 8 -> 12): from step 8 on" in out.out
    )
    assert "--gin_param='WarmupCosineController.decay_steps = 8'" in out.out
    saved = (tmp_path / "cosine" / "config.gin").read_text()
    assert "\nTrainer.steps = 12\n" in saved and "Trainer.steps = 8\n" not in saved
    assert saved.startswith(
        "# Resumed at step 8 with bindings that differ (before -> after):\n"
        "#   Trainer.steps: 8 -> 12\n"
    )


def test_the_resume_warning_suggests_the_lengths_the_run_began_with():
    """WSD's stable_steps follows the run as its rest, not as Trainer.steps itself."""
    from types import SimpleNamespace

    from lrresearch.training import resume

    trainer = SimpleNamespace(controller=Chain([ConstantController(0.1), WSDController()], [500]))
    trainer.run_length_bindings = trainer.controller.set_run_length(3000)
    said = []
    resume._warn_stretched(trainer, ["Trainer.steps: 2000 -> 3000"], 1000, said.append)
    (warning,) = said
    assert warning.startswith("warning: WSDController.stable_steps = None follows the run's")
    assert warning.endswith("resume with --gin_param='WSDController.stable_steps = 1000'")
    assert trainer.controller.parts[1].stable_steps == 2000  # the copy left it alone


def test_cosine_restarts_warns_when_the_run_cuts_a_cycle():
    sgdr = CosineRestartsController(base_lr=0.1, T_0=250, T_mult=2)  # ends 250, 750, 1750
    (warning,) = sgdr.run_warnings(2000)
    last = 0.05 * (1 + np.cos(np.pi * 249 / 2000))  # batch 1999, 249 into cycle 3
    assert warning == (
        "CosineRestartsController's cycle 3 (batches 1750 to 3749) is cut by Trainer.steps "
        f"= 2000: the run stops at LR {last:.3g}, not at eta_min = 0; end the run at a "
        "cycle's end (Trainer.steps = 1750 or 3750) or change T_0 or T_mult"
    )
    assert sgdr.run_warnings(1750) == sgdr.run_warnings(3750) == sgdr.run_warnings(None) == []
    assert CosineRestartsController(T_0=500).run_warnings(2000) == []  # T_mult = 1
    assert "(batches 2000 to 2499)" in CosineRestartsController(T_0=500).run_warnings(2100)[0]
    chained = Chain([ConstantController(0.1), CosineRestartsController(T_0=500)], [100])
    chained.set_run_length(1100)  # the part's own span: 1,000 batches, two whole cycles
    assert chained.run_warnings(1100) == []


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
