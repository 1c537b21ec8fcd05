"""Every exported controller and wrapper compiles under XLA and gives the same LRs.

Each case runs a fresh controller over `STEPS` batches of synthetic signals inside ONE
`tf.function` (an AutoGraph `tf.range` loop, i.e. a `tf.while_loop`, as the trainer's
multi-step loop), once with `jit_compile=True` and once without, and compares the LR,
momentum / weight-decay and diagnostics sequences. Under XLA it also checks the loop
compiles once: its HLO after the run (the controller's variables changed) is the HLO
before it, so no variable's value is a compile-time constant (reading `var[i]` with a
tensor `i` makes it one, and XLA then recompiles the loop on every call). As in the
trainer, `Signals.lr` is the previously applied LR, and a non-finite LR is rejected (the
previous one is kept), the step is a variable and the first batch runs before the loop.

Tolerance, float32 (unit roundoff 6e-8): XLA fuses and reorders float32 arithmetic
(`a * b + c` may become an FMA, reductions may be reassociated), so bitwise equality
is not guaranteed. Measured over these cases, LRs (and momentum / weight decay) agree
to within 1e-7 relative (most bit for bit): they are compared with `rtol=1e-6`.
Diagnostics that are differences or dot products (`LossTrendController`'s trend,
`HypergradientController`'s hypergradient) cancel, so their relative error near 0 is
larger (up to 6e-5 measured, 1.2e-6 absolute): they are compared with `rtol=1e-5` and
an absolute tolerance of 1e-5 times the largest magnitude in that series. Feedback
(`Signals.lr`, the hypergradient's weights) does not make the differences compound over
`STEPS` batches because every rule here is clipped or contractive. Non-finite values
must match exactly (NaN where NaN, the same infinities).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch import controllers as ctl
from lrresearch.controllers.signals import MovingAverage, Signals

STEPS = 200
LR_RTOL = 1e-6  # lr, momentum, weight_decay
# DoG and DoWG read ||x - x_0|| off weights their own LRs moved, a float32 sum XLA
# reduces in another order.
LR_RTOL_BY_CASE = {"DoGController": 1e-5, "DoWGController": 1e-5, "DAdaptSGDController": 1e-5}
DIAG_RTOL = 1e-5  # diagnostics; atol = DIAG_RTOL * max |series|
# Controllers that do not compile under XLA, with the exact XLA error. Empty: all do.
NOT_XLA: dict[str, str] = {}

Factory = Callable[[], ctl.Controller]

# One case per standalone controller, plus wrappers around simple bases; parameters
# chosen so each rule moves (cycles, cuts, restarts, clips) within `STEPS` batches.
CASES: dict[str, Factory] = {
    "ConstantController": lambda: ctl.ConstantController(lr=0.01),
    # c = 0.5: at c = 1 DoG's step reaches the edge of stability of this quadratic,
    # where the iterates oscillate and amplify any rounding difference exponentially.
    "DoGController": lambda: ctl.DoGController(reps_rel=1e-3, c=0.5),
    "DoWGController": lambda: ctl.DoWGController(),
    "DAdaptSGDController": lambda: ctl.DAdaptSGDController(d0=1e-3),
    "NGNController": lambda: ctl.NGNController(lr=2.0, lb=0.4, momentum=0.5),
    "AdaGradNormController": lambda: ctl.AdaGradNormController(lr=0.5, b0=0.0),
    "PolyakController-smoothed": lambda: ctl.PolyakController(
        max_lr=None, smoothing=2.0, smoothing_batches=10
    ),
    "WSDController": lambda: ctl.WSDController(0.1, 20, 100, 60, "cosine", "1-sqrt", 0.05),
    "CosineCycleController": lambda: ctl.CosineCycleController(1e-3, 1e-2, 40),
    "CosineRestartsController": lambda: ctl.CosineRestartsController(
        base_lr=0.1, T_0=20, T_mult=2, eta_min=1e-3
    ),
    "CyclicController": lambda: ctl.CyclicController(
        base_lr=1e-3,
        max_lr=6e-3,
        step_size_up=15,
        step_size_down=25,
        mode="exp_range",
        gamma=0.99,
        cycle_momentum=True,
    ),
    "CyclicController-triangular2": lambda: ctl.CyclicController(
        base_lr=1e-3, max_lr=6e-3, step_size_up=10, mode="triangular2"
    ),
    "CyclicalController": lambda: ctl.CyclicalController(1e-3, 1e-2, 40, 1.0, 1.01),
    "GradNormController": lambda: ctl.GradNormController(low_norm_threshold=0.3),
    "HypergradientController": lambda: ctl.HypergradientController(
        initial_lr=0.05, hyper_lr=1e-3, max_lr=1.0
    ),
    "LossTrendController": lambda: ctl.LossTrendController(initial_lr=1e-3, window=10, max_lr=1e-2),
    "OneCycleController": lambda: ctl.OneCycleController(
        max_lr=0.1, total_steps=STEPS, three_phase=True, cycle_momentum=True
    ),
    "OneCycleController-linear": lambda: ctl.OneCycleController(
        max_lr=0.1, total_steps=STEPS, anneal_strategy="linear"
    ),
    "PlateauController": lambda: ctl.PlateauController(
        initial_lr=0.1, monitor="loss_ma_long", patience=10, cooldown=5, min_lr=1e-3
    ),
    "PlateauController-loss": lambda: ctl.PlateauController(
        initial_lr=0.1, monitor="loss", patience=5, min_lr=1e-3
    ),
    "PolyakController": lambda: ctl.PolyakController(c=0.5, f_star=0.6, max_lr=1.0),
    "TimmCosineController": lambda: ctl.TimmCosineController(
        0.1, 30, 1e-3, 1.5, 0.7, 4, 10, 1e-3, True, 1.5, noise_range_t=(20, 150)
    ),
    "WarmupCosineController": lambda: ctl.WarmupCosineController(
        base_lr=0.1, warmup_steps=20, decay_steps=STEPS, init_lr=1e-3, end_lr=1e-3
    ),
    "Product(CosineCycle, LossNudgeFactor)": lambda: ctl.Product(
        ctl.CosineCycleController(1e-3, 1e-2, 40), ctl.LossNudgeFactor(1.0, 1.01)
    ),
    "Chain(Warmup(Constant), CosineRestarts, Polyak)": lambda: ctl.Chain(
        [
            ctl.Warmup(ctl.ConstantController(0.05), warmup_steps=30, shape="exponential"),
            ctl.CosineRestartsController(base_lr=0.1, T_0=15),
            ctl.PolyakController(max_lr=0.5),
        ],
        boundaries=[50, 120],
    ),
    # The schedule families (decay.py, steps.py) in turn, each moving within its span.
    "Chain(InverseSqrt, Polynomial, Exponential, InverseTime, Piecewise, Step, MultiStep)": (
        lambda: ctl.Chain(
            [
                ctl.InverseSqrtController(0.1, 10, 5, True, 1e-8),
                ctl.PolynomialDecayController(0.1, 7, 1e-3, 2.0, True, 3),
                ctl.ExponentialDecayController(0.1, 5, 0.7, True, 4, 0.02),
                ctl.InverseTimeDecayController(0.1, 3, 0.5, False),
                ctl.PiecewiseConstantController([5, 12], [0.1, 0.05, 0.01], "next"),
                ctl.StepController(0.1, 4, 0.8),
                ctl.MultiStepController(0.1, [3, 9, 9], 0.5),
            ],
            boundaries=[40, 60, 80, 100, 120, 140],
        )
    ),
    # A Keras schedule (its warmup branch is a `tf.cond`) run as a controller.
    "ScheduleController": lambda: ctl.ScheduleController(
        keras.optimizers.schedules.CosineDecay(
            1e-3, 150, alpha=0.1, warmup_target=0.1, warmup_steps=30
        )
    ),
    "Warmup(Polyak)": lambda: ctl.Warmup(ctl.PolyakController(max_lr=0.5), warmup_steps=40),
    "Clamp(LossTrend)": lambda: ctl.Clamp(
        ctl.LossTrendController(initial_lr=1e-3, window=5, max_lr=1e-2), min_lr=5e-4, max_lr=2e-3
    ),
    "MaxChange(CosineRestarts)": lambda: ctl.MaxChange(
        ctl.CosineRestartsController(base_lr=0.1, T_0=20), max_change_ratio=0.05
    ),
    "DecayFollowsLR(Product(CosineCycle, LossNudgeFactor))": lambda: ctl.DecayFollowsLR(
        ctl.Product(ctl.CosineCycleController(1e-3, 1e-2, 40), ctl.LossNudgeFactor(1.0, 1.5)),
        weight_decay=0.05,
        power=2,
    ),  # the running max of the LR, a variable
    "Clamp(MaxChange(Product(Plateau, LossNudgeFactor)))": lambda: ctl.Clamp(
        ctl.MaxChange(
            ctl.Product(
                ctl.PlateauController(initial_lr=0.1, patience=5, monitor="loss_ma_short"),
                ctl.LossNudgeFactor(0.9, 1.05),
            ),
            max_change_ratio=0.1,
        ),
        min_lr=1e-3,
        max_lr=0.1,
    ),
}


def exported_controllers() -> set[str]:
    """Names of every controller class in `lrresearch.controllers.__all__` (the set
    `lrresearch list controllers` / `wrappers` enumerate)."""
    return {
        name
        for name in ctl.__all__
        if isinstance(getattr(ctl, name), type)
        and issubclass(getattr(ctl, name), ctl.Controller)
        and getattr(ctl, name) is not ctl.Controller
    }


def covered(controller: ctl.Controller) -> set[str]:
    """Class names of `controller` and every controller nested in it."""
    parts = [controller, *controller.submodules]
    return {type(m).__name__ for m in parts if isinstance(m, ctl.Controller)}


def synthetic_signals(steps: int) -> dict[str, np.ndarray]:
    """Loss, grad norm and loss moving averages per batch: a decaying noisy loss with
    plateaus, one NaN and one +Inf batch, and grad norms spanning 0 to large."""
    rng = np.random.default_rng(0)
    t = np.arange(steps)
    loss = (0.5 + np.exp(-t / 60.0) + 0.3 * np.sin(t / 7.0) ** 2) * rng.uniform(0.8, 1.2, steps)
    loss[60:90] = loss[60]  # a plateau, for the plateau / trend rules
    loss[37], loss[141] = np.nan, np.inf
    norm = rng.lognormal(0.0, 1.0, steps)
    norm[[5, 77]] = 0.0
    norm[100:110] = 1e-3
    ma_short, ma_long = np.empty(steps), np.empty(steps)
    short = long = None
    for i, value in enumerate(loss):
        if np.isfinite(value):
            short = value if short is None else 0.7 * short + 0.3 * value
            long = value if long is None else 0.95 * long + 0.05 * value
        ma_short[i], ma_long[i] = short, long
    arrays = {"loss": loss, "norm": norm, "ma_short": ma_short, "ma_long": ma_long}
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def quadratic() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(A, b, w0)` of `0.5 w'Aw - b'w` for the hypergradient rule, which reads the
    weights' change; the loop takes SGD steps on it."""
    rng = np.random.default_rng(1)
    q = rng.normal(size=(6, 6))
    a = q @ q.T / 6 + 0.1 * np.eye(6)
    return a.astype(np.float32), rng.normal(size=6).astype(np.float32), np.ones(6, np.float32)


def run(factory: Factory, jit: bool, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drives a fresh controller over `data` in one compiled loop; returns the per-step
    `lr` (and `momentum`, `weight_decay`, `diag/<name>`) arrays."""
    controller = factory()
    a, b, w0 = quadratic()
    w = tf.Variable(w0, name="w")
    needs_grads = hasattr(controller, "watched") or hasattr(controller, "steps")  # weight state
    if needs_grads:
        controller.build([w])
    steps = len(data["loss"])
    names: list[str] = []  # filled while tracing: diagnostics, momentum, weight decay

    def one_step(
        step: tf.Tensor, previous: tf.Tensor, row: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One batch: the controller's LR, the LR applied (guarded), the extras."""
        grads: tuple[tf.Tensor, ...] = ()
        loss, norm = row["loss"], row["norm"]
        if needs_grads:
            g = tf.linalg.matvec(a, w) - b
            loss = 0.5 * tf.tensordot(w, tf.linalg.matvec(a, w), 1) - tf.tensordot(b, w, 1)
            grads, norm = (g,), tf.norm(g)
        signals = Signals(step, loss, norm, row["ma_short"], row["ma_long"], previous, grads)
        out = controller.compute(signals)
        extra = {"momentum": out.momentum, "weight_decay": out.weight_decay}
        values = {f"diag/{k}": v for k, v in out.diagnostics.items()}
        values.update({k: v for k, v in extra.items() if v is not None})
        names[:] = sorted(values)
        lr = tf.cast(out.lr, tf.float32)
        applied = tf.where(tf.math.is_finite(lr), lr, previous)  # the trainer's guard
        if needs_grads:
            w.assign_sub(applied * g)
        stacked = tf.stack([tf.cast(values[k], tf.float32) for k in names] or [0.0])
        return lr, applied, stacked

    step_variable = tf.Variable(0, dtype=tf.int64)  # the trainer's step is a variable

    @tf.function(jit_compile=jit, autograph=True)
    def loop(columns: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        lrs = tf.TensorArray(tf.float32, size=steps)
        extras = tf.TensorArray(tf.float32, size=steps)

        def batch(i, previous, lrs, extras):
            row = {k: v[i] for k, v in columns.items()}
            step = step_variable.read_value()
            lr, previous, stacked = one_step(step, previous, row)
            step_variable.assign_add(1)
            return previous, lrs.write(i, lr), extras.write(i, stacked)

        # As in the trainer's loop, the first batch is outside the while loop.
        previous = tf.constant(controller.initial_lr, tf.float32)
        previous, lrs, extras = batch(0, previous, lrs, extras)
        for i in tf.range(1, steps):
            previous, lrs, extras = batch(i, previous, lrs, extras)
        return lrs.stack(), extras.stack()

    columns = {k: tf.constant(v) for k, v in data.items()}
    ir_before = loop.experimental_get_compiler_ir(columns)(stage="hlo") if jit else None
    lrs, extras = loop(columns)
    if jit:  # no variable's value is baked into the program (`var[i]` would be)
        assert loop.experimental_get_compiler_ir(columns)(stage="hlo") == ir_before, (
            "XLA would compile this loop again for the controller's new state: index "
            "variables with tf.gather, not var[i] or tf.slice"
        )
    result = {"lr": lrs.numpy()}
    result.update({k: extras.numpy()[:, j] for j, k in enumerate(names)})
    return result


def test_every_exported_controller_has_an_xla_case() -> None:
    """A new controller or wrapper fails here until it has a case (or a NOT_XLA entry)."""
    seen = set().union(*(covered(factory()) for factory in CASES.values()))
    missing = exported_controllers() - seen - set(NOT_XLA)
    assert not missing, f"add XLA cases for {sorted(missing)} to CASES"


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.split("-")[0] not in NOT_XLA])
def test_xla_gives_the_same_lr_sequence(case: str) -> None:
    data = synthetic_signals(STEPS)
    eager_graph = run(CASES[case], jit=False, data=data)
    xla = run(CASES[case], jit=True, data=data)
    assert sorted(xla) == sorted(eager_graph)
    for key, expected in eager_graph.items():
        if key.startswith("diag/"):
            finite = np.abs(expected[np.isfinite(expected)])
            rtol, atol = DIAG_RTOL, DIAG_RTOL * (finite.max() if finite.size else 0.0)
        else:
            rtol, atol = LR_RTOL_BY_CASE.get(case, LR_RTOL), 0.0
        np.testing.assert_allclose(
            xla[key], expected, rtol=rtol, atol=atol, err_msg=f"{case}: {key}"
        )
    lr = eager_graph["lr"]
    # The case exercises its rule: the LR is not constant (except for the constant one).
    if case != "ConstantController":
        assert np.unique(lr[np.isfinite(lr)]).size > 3, f"{case}: the LR barely moved"


def test_the_harness_really_compiles_with_xla() -> None:
    """`jit_compile=True` is enforced (no silent fallback to TF kernels): an op XLA has
    no kernel for fails to compile in the same kind of loop."""

    @tf.function(jit_compile=True)
    def loop(x: tf.Tensor) -> tf.Tensor:
        for _ in tf.range(3):
            x += tf.strings.length(tf.strings.as_string(x))
        return x

    with pytest.raises(tf.errors.InvalidArgumentError, match="AsString"):
        loop(tf.constant(1))


@pytest.mark.parametrize("kind", ["window", "ema"])
def test_loss_moving_average_compiles_with_xla(kind: str) -> None:
    """The trainer's `MovingAverage` (which feeds `Signals.loss_ma_*`) also compiles,
    once, and matches, NaN/Inf batches included."""
    losses = tf.constant(synthetic_signals(STEPS)["loss"])

    def averages(jit: bool) -> np.ndarray:
        average = MovingAverage(window=7, kind=kind)

        @tf.function(jit_compile=jit)
        def loop(values: tf.Tensor) -> tf.Tensor:
            out = tf.TensorArray(tf.float32, size=STEPS)
            # As in the trainer's loop, the first batch is outside the while loop.
            out = out.write(0, average.update(values[0]))
            for i in tf.range(1, STEPS):
                out = out.write(i, average.update(values[i]))
            return out.stack()

        if not jit:
            return loop(losses).numpy()
        ir_before = loop.experimental_get_compiler_ir(losses)(stage="hlo")
        result = loop(losses).numpy()
        # Compiled once: the average's state is not baked into the program.
        assert loop.experimental_get_compiler_ir(losses)(stage="hlo") == ir_before
        return result

    np.testing.assert_allclose(averages(True), averages(False), rtol=LR_RTOL)
