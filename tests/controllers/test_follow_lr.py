"""`DecayFollowsLR`: the weight decay sequence against numpy over many steps (both powers,
the reference LR given, the known peak, the running maximum), in-graph and traced once,
its refusals, `get_config` and a checkpointed running maximum; and one short Trainer run
whose logged `optimizer/weight_decay` is recomputed from its logged `lr`."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import (
    Chain,
    Clamp,
    ConstantController,
    DecayFollowsLR,
    ExponentialDecayController,
    InverseSqrtController,
    LossNudgeFactor,
    MultiStepController,
    OneCycleController,
    PolyakController,
    Product,
    ScheduleController,
    Warmup,
    WarmupCosineController,
    WSDController,
)
from lrresearch.controllers.base import deserialize_controller, serialize_controller
from lrresearch.controllers.follow_lr import known_peak_lr
from lrresearch.controllers.signals import make_signals
from lrresearch.optimizers import Mechanic, Prodigy, ScheduleFreeAdamW
from tests.support import read_events, small_trainer

STEPS = 330  # past the schedules' horizon (decay_steps 300)
LOSSES = 2.0 + np.sin(np.arange(STEPS) / 7.0)  # crosses LossNudgeFactor's threshold


def schedule() -> WarmupCosineController:
    return WarmupCosineController(base_lr=0.03, warmup_steps=30, decay_steps=300)


def nudged() -> Product:
    """A rule whose peak no argument states: warmup-cosine x a loss nudge."""
    return Product(schedule(), LossNudgeFactor(below_loss=2.0, factor=1.5))


def outputs(controller, steps: int = STEPS, start: int = 0):
    """Every batch's output, from one traced function (traced once: asserted)."""

    @tf.function(autograph=False)
    def compute(t, loss):
        return controller.compute(make_signals(t, loss, 1.0))

    out = [compute(tf.constant(t, tf.int64), tf.constant(LOSSES[t], tf.float32))
           for t in range(start, steps)]  # fmt: skip
    assert compute.experimental_get_tracing_count() == 1
    return out


def decay_reference(lrs, weight_decay, power, reference=None):
    """numpy: `wd * (lr / ref) ** power` in float64, `ref` fixed or the running max of
    the LR so far (this one included); 0 / 0 counts as 0."""
    lrs = np.asarray(lrs, np.float64)
    refs = np.full_like(lrs, reference) if reference else np.maximum.accumulate(lrs)
    ratio = np.divide(lrs, refs, out=np.zeros_like(lrs), where=refs > 0)
    return weight_decay * ratio**power, refs


@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize(
    "make, reference_lr, expected_reference",
    [
        (schedule, None, 0.03),  # the known peak, base_lr
        (schedule, 0.05, 0.05),  # given
        (nudged, None, None),  # unknown: the running maximum
    ],
    ids=["known-peak", "given", "running-max"],
)
def test_weight_decay_follows_the_lr_as_numpy(power, make, reference_lr, expected_reference):
    wrapped = DecayFollowsLR(make(), weight_decay=0.05, power=power, reference_lr=reference_lr)
    got = outputs(wrapped)
    base = outputs(make())  # a fresh copy: the LR and its diagnostics pass through
    lrs = np.array([float(o.lr) for o in base])
    np.testing.assert_array_equal([float(o.lr) for o in got], lrs)
    assert all(o.momentum is None for o in got)
    for g, b in zip(got, base, strict=True):
        assert {k: float(v) for k, v in b.diagnostics.items()}.items() <= {
            k: float(v) for k, v in g.diagnostics.items()
        }.items()
    want, refs = decay_reference(lrs, 0.05, power, expected_reference)
    decay = np.array([float(o.weight_decay) for o in got])
    np.testing.assert_allclose(decay, want, rtol=2**-23, atol=0)  # one float32 rounding
    logged_refs = [float(o.diagnostics["decay/reference_lr"]) for o in got]
    np.testing.assert_allclose(logged_refs, refs, rtol=2**-24)
    assert decay[0] == 0.0 and decay[-1] == 0.0  # LR 0 at step 0 and past the horizon
    peak = int(np.argmax(lrs))
    assert decay[peak] == pytest.approx(0.05 * (lrs[peak] / refs[peak]) ** power, rel=1e-6)
    if expected_reference is None:  # the running max lags the nudged peaks: ratio 1 there
        assert np.all(decay <= np.float32(0.05)) and np.sum(decay == np.float32(0.05)) >= 29


def test_the_effective_decay_of_power_1_is_adamc_lr_squared_over_the_peak():
    wrapped = DecayFollowsLR(schedule(), weight_decay=0.1, power=1)
    for o in outputs(wrapped, 300)[::37]:
        lr, wd = float(o.lr), float(o.weight_decay)
        assert lr * wd == pytest.approx(0.1 * lr**2 / 0.03, rel=1e-6, abs=1e-12)


def test_a_refused_lr_gives_a_nan_decay_and_leaves_the_running_max():
    class Given(ConstantController):
        def compute(self, signals):
            return super().compute(signals)._replace(lr=tf.cast(signals.loss, tf.float32))

    wrapped = DecayFollowsLR(Given(), weight_decay=0.02)
    assert wrapped.reference_lr == 0.01  # ConstantController's: Given subclasses it
    never = LossNudgeFactor(below_loss=-1.0)  # a factor of 1, which hides the peak
    running = DecayFollowsLR(Product(Given(), never), weight_decay=0.02)
    assert running.reference_lr is None
    for lr, want, ref in [(0.5, 0.02, 0.5), (np.nan, np.nan, 0.5), (-1.0, np.nan, 0.5),
                          (np.inf, np.nan, 0.5), (0.25, 0.01, 0.5)]:  # fmt: skip
        out = running.compute(make_signals(0, lr, 1.0))
        np.testing.assert_allclose(float(out.weight_decay), want, rtol=1e-7)
        assert float(running.running_max_lr) == ref


def test_momentum_of_the_wrapped_controller_passes_through():
    cycling = OneCycleController(max_lr=0.1, total_steps=50, cycle_momentum=True)
    wrapped = DecayFollowsLR(
        OneCycleController(max_lr=0.1, total_steps=50, cycle_momentum=True), weight_decay=0.01
    )
    assert wrapped.optimizer_hyperparameters == {"momentum", "weight_decay"}
    assert DecayFollowsLR(schedule(), 0.01).optimizer_hyperparameters == {"weight_decay"}
    for t in (0, 10, 30, 49):
        want = cycling.compute(make_signals(t, 1.0)).momentum
        assert float(wrapped.compute(make_signals(t, 1.0)).momentum) == float(want)


def test_known_peaks_of_the_built_ins_and_their_wrappers():
    assert known_peak_lr(schedule()) == 0.03
    assert known_peak_lr(WSDController(peak_lr=0.2)) == 0.2
    assert known_peak_lr(Warmup(OneCycleController(max_lr=0.4))) == 0.4
    assert known_peak_lr(Clamp(schedule(), max_lr=0.02)) == 0.02
    assert known_peak_lr(Chain([ConstantController(0.1), schedule()], [5])) == 0.1
    assert known_peak_lr(Chain([PolyakController(), schedule()], [5])) is None
    assert known_peak_lr(nudged()) is None
    assert known_peak_lr(InverseSqrtController(peak_lr=0.3)) == 0.3
    assert known_peak_lr(ExponentialDecayController(0.2, decay_rate=0.5)) == 0.2
    assert known_peak_lr(ExponentialDecayController(0.2, decay_rate=2.0)) is None
    assert known_peak_lr(MultiStepController(0.4, milestones=[10], gamma=0.1)) == 0.4
    schedules = keras.optimizers.schedules
    warm = schedules.CosineDecay(0.0, 100, warmup_target=0.2, warmup_steps=10)
    assert known_peak_lr(ScheduleController(warm)) == 0.2
    assert (
        known_peak_lr(ScheduleController(schedules.PiecewiseConstantDecay([5], [0.1, 0.3]))) == 0.3
    )

    class Own(schedules.ExponentialDecay):  # a subclass may compute anything
        pass

    assert known_peak_lr(ScheduleController(Own(0.1, 10, 0.5))) is None


def test_the_running_max_is_a_variable_updated_in_graph():
    wrapped = DecayFollowsLR(nudged(), weight_decay=0.05, power=2)
    got = [float(o.weight_decay) for o in outputs(wrapped)]  # one trace, every batch
    lrs = [float(o.lr) for o in outputs(nudged())]
    np.testing.assert_allclose(got, decay_reference(lrs, 0.05, 2)[0], rtol=2**-23)
    assert float(wrapped.running_max_lr) == pytest.approx(max(lrs), rel=2**-24)
    assert max(lrs) > 0.03  # a nudge above the schedule's peak raised the reference


def test_a_checkpointed_running_max_resumes_exactly(tmp_path):
    def fresh():
        return DecayFollowsLR(nudged(), weight_decay=0.05)

    whole = [float(o.weight_decay) for o in outputs(fresh())]
    first = fresh()
    outputs(first, 120)  # past the warmup and a nudged peak
    path = tf.train.Checkpoint(controller=first).save(str(tmp_path / "ckpt"))
    resumed = fresh()
    tf.train.Checkpoint(controller=resumed).restore(path).assert_consumed()
    assert float(resumed.running_max_lr) == float(first.running_max_lr) > 0.03
    rest = [float(o.weight_decay) for o in outputs(resumed, start=120)]
    assert rest == whole[120:]


def test_get_config_round_trips_and_takes_the_optimizer_decay_again():
    original = DecayFollowsLR(Warmup(schedule(), warmup_steps=5), power=2, reference_lr=0.04)
    config = serialize_controller(original)
    assert config["config"]["weight_decay"] is None and config["config"]["power"] == 2
    rebuilt = deserialize_controller(config)
    assert serialize_controller(rebuilt) == config
    for c in (original, rebuilt):
        c.check_optimizer(keras.optimizers.AdamW(weight_decay=0.02))
    for t in (0, 10, 100, 299):
        s = make_signals(t, 1.0)
        assert float(rebuilt.compute(s).weight_decay) == float(original.compute(s).weight_decay)
    assert float(rebuilt.compute(make_signals(30, 1.0)).weight_decay) == pytest.approx(
        0.02 * (0.03 / 0.04) ** 2, rel=1e-6
    )


REFUSED = {
    "adam": (keras.optimizers.Adam, r"Adam has none \(weight_decay = None\); use Trainer"),
    "sgd": (keras.optimizers.SGD, r"keras\.optimizers\.SGD\.weight_decay = 0\.0 with Decay"),
    "mechanic": (lambda: Mechanic(1.0, base_optimizer="adamw"), r"Mechanic has none"),
    "adamw-0": (
        lambda: keras.optimizers.AdamW(weight_decay=0.0),
        r"weight_decay = None takes the optimizer's, and keras\.optimizers\.AdamW\.weight_",
    ),
    "prodigy-0": (Prodigy, r"and Prodigy\.weight_decay = 0, so the decay would stay 0"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_an_optimizer_without_a_decay_to_set_is_refused_naming_the_fix(case):
    make, message = REFUSED[case]
    with pytest.raises(ValueError, match=message):
        DecayFollowsLR(schedule()).check_optimizer(make())


def test_a_zero_decay_is_set_when_the_wrapper_gives_the_coefficient():
    for optimizer in (keras.optimizers.AdamW(weight_decay=0.0), ScheduleFreeAdamW()):
        wrapped = DecayFollowsLR(schedule(), weight_decay=0.01)
        wrapped.check_optimizer(optimizer)
        assert float(wrapped.compute(make_signals(30, 1.0)).weight_decay) == pytest.approx(0.01)
    taken = DecayFollowsLR(schedule())
    taken.check_optimizer(keras.optimizers.SGD(weight_decay=0.003))
    assert float(taken.compute(make_signals(30, 1.0)).weight_decay) == pytest.approx(0.003)


def test_bad_arguments_name_the_binding():
    for kwargs, message in [
        ({"controller": 0.1}, r"DecayFollowsLR\.controller must be a controller"),
        ({"weight_decay": -0.1}, r"DecayFollowsLR\.weight_decay must be >= 0"),
        ({"power": 0}, r"DecayFollowsLR\.power must be > 0"),
        ({"reference_lr": 0.0}, r"DecayFollowsLR\.reference_lr must be > 0"),
        ({"controller": DecayFollowsLR(schedule())}, r"sets it already; wrap its LR controller"),
    ]:
        with pytest.raises(ValueError, match=message):
            DecayFollowsLR(**{"controller": schedule(), **kwargs})
    with pytest.raises(ValueError, match=r"used alone, bind DecayFollowsLR\.weight_decay"):
        DecayFollowsLR(schedule()).compute(make_signals(0, 1.0))


@pytest.mark.slow
def test_the_trainer_logs_the_decay_it_applies_every_batch(tmp_path):
    wrapped = DecayFollowsLR(
        WarmupCosineController(base_lr=0.01, warmup_steps=3), power=2, reference_lr=0.02
    )
    trainer = small_trainer(
        steps=12, steps_per_loop=6, controller=wrapped, optimizer=keras.optimizers.AdamW
    )
    events = read_events(trainer.fit(logdir=str(tmp_path), run_name="d", quiet=True).run_dir)
    lrs = events.scalar("lr")
    want = 0.004 * (np.asarray(lrs, np.float64) / 0.02) ** 2  # AdamW's default 0.004
    np.testing.assert_allclose(events.scalar("optimizer/weight_decay"), want, rtol=2**-23)
    assert len(lrs) == 12 and lrs[0] == 0.0 and max(lrs) == pytest.approx(0.01)
    assert all(f.experimental_get_tracing_count() == 1 for f in trainer.loops.values())


def test_controlled_model_refuses_it_naming_the_fix():
    from lrresearch.keras_fit import ControlledModel

    model = ControlledModel(keras.Sequential([keras.layers.Dense(1)]), DecayFollowsLR(schedule()))
    with pytest.raises(ValueError, match=r"\['weight_decay'\].*unwrap DecayFollowsLR"):
        model.compile(optimizer=keras.optimizers.AdamW(0.1), loss="mse")
