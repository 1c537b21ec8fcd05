"""Composition and guards against numpy references, driven step by step."""

from __future__ import annotations

import math

import gin
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.config import parse as config
from lrresearch.controllers import (
    Chain,
    Clamp,
    ConstantController,
    CosineCycleController,
    CosineRestartsController,
    CyclicalController,
    CyclicController,
    LossNudgeFactor,
    LossTrendController,
    MaxChange,
    Product,
    Warmup,
)
from lrresearch.controllers.signals import make_signals
from lrresearch.training.trainer import Trainer
from tests.support import Events


def drive(controller, losses, norms=None, feedback=False):
    """Runs `controller` over the losses; with `feedback`, Signals.lr is the previous
    output (as in the trainer). Returns LRs and the diagnostics per step."""
    norms = np.ones_like(losses) if norms is None else norms
    previous = controller.initial_lr
    lrs, diags = [], []
    for t, (loss, norm) in enumerate(zip(losses, norms, strict=True)):
        out = controller.compute(
            make_signals(t, float(loss), float(norm), lr=previous if feedback else 0.0)
        )
        lrs.append(float(out.lr))
        diags.append({k: float(v) for k, v in out.diagnostics.items()})
        previous = lrs[-1]
    return np.array(lrs), diags


def cosine_cycle(t, lo, hi, length):
    return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * (t % length) / length))


def test_seed_cyclical_is_a_product_of_cosine_and_nudge():
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.5, 1.5, 400)
    composed = Product(CosineCycleController(1e-3, 1e-2, 150), LossNudgeFactor(1.0, 1.01))
    seed = CyclicalController(min_lr=1e-3, max_lr=1e-2, cycle_length=150)
    got, diags = drive(composed, losses)
    expected = np.array(
        [
            cosine_cycle(t, 1e-3, 1e-2, 150) * (1.01 if loss < 1.0 else 1.0)
            for t, loss in enumerate(losses)
        ]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(drive(seed, losses)[0], expected, rtol=1e-6)
    assert {"base", "factor"} <= set(diags[0])
    np.testing.assert_allclose(
        [d["factor"] for d in diags], np.where(losses < 1.0, 1.01, 1.0), rtol=1e-7
    )


def test_chain_switches_at_boundaries_with_relative_steps():
    parts = [
        ConstantController(0.05),
        CosineRestartsController(base_lr=0.1, T_0=40),
        ConstantController(0.001),
    ]
    chain = Chain(parts, [100, 250])
    got, diags = drive(chain, np.ones(320))
    expected = [
        0.05
        if t < 100
        else (0.1 * (1 + math.cos(math.pi * ((t - 100) % 40) / 40)) / 2 if t < 250 else 0.001)
        for t in range(320)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal([d["part"] for d in diags], [0] * 100 + [1] * 150 + [2] * 70)
    assert chain.initial_lr == 0.05


@pytest.mark.parametrize("shape,start", [("linear", 0.0), ("linear", 0.1), ("exponential", 0.01)])
def test_warmup_ramps_any_controller(shape, start):
    inner = CyclicController(base_lr=0.01, max_lr=0.1, step_size_up=30)
    warm = Warmup(inner, warmup_steps=50, start_factor=start, shape=shape)
    got, diags = drive(warm, np.ones(200))
    base, _ = drive(CyclicController(base_lr=0.01, max_lr=0.1, step_size_up=30), np.ones(200))
    p = np.minimum(np.arange(200) / 50, 1.0)
    factor = start + (1 - start) * p if shape == "linear" else start ** (1 - p)
    np.testing.assert_allclose(got, base * factor, rtol=1e-5)
    np.testing.assert_allclose([d["factor"] for d in diags], factor, rtol=1e-5)
    assert warm.initial_lr == pytest.approx(0.01 * start)


def test_clamp_bounds_and_flags():
    rng = np.random.default_rng(1)
    norms = rng.uniform(0, 30, 300)
    from lrresearch.controllers import GradNormController

    clamp = Clamp(GradNormController(), min_lr=0.03, max_lr=0.09)
    got, diags = drive(clamp, np.ones(300), norms)
    raw = np.where(norms < 1e-3, 0.11, np.maximum(0.01, 0.1 - 0.005 * norms))
    np.testing.assert_allclose(got, np.clip(raw, 0.03, 0.09), rtol=1e-6)
    np.testing.assert_array_equal(
        [d["clamped"] for d in diags], ((raw < 0.03) | (raw > 0.09)).astype(float)
    )


def test_max_change_limits_each_batch_relative_to_the_applied_lr():
    steps = 300
    inner = CyclicController(base_lr=0.001, max_lr=0.1, step_size_up=20)
    limited = MaxChange(inner, max_change_ratio=0.05)
    got, _ = drive(limited, np.ones(steps), feedback=True)
    proposals, _ = drive(
        CyclicController(base_lr=0.001, max_lr=0.1, step_size_up=20), np.ones(steps)
    )
    previous, expected = limited.initial_lr, []
    for proposed in proposals:
        previous = float(np.clip(proposed, previous / 1.05, previous * 1.05))
        expected.append(previous)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    ratios = np.array(got[1:]) / np.array(got[:-1])
    assert ratios.max() <= 1.05 * (1 + 1e-6) and ratios.min() >= 1 / 1.05 * (1 - 1e-6)


def test_wrapped_state_is_checkpointed(tmp_path):
    losses = np.random.default_rng(2).uniform(0.5, 1.5, 200)
    a = Warmup(LossTrendController(window=10, max_lr=1.0), warmup_steps=20)
    drive(a, losses[:120])
    path = tf.train.Checkpoint(controller=a).save(str(tmp_path / "ckpt"))
    b = Warmup(LossTrendController(window=10, max_lr=1.0), warmup_steps=20)
    tf.train.Checkpoint(controller=b).restore(path).assert_consumed()
    rest = [float(a.compute(make_signals(t, float(x))).lr) for t, x in enumerate(losses[120:], 120)]
    again = [
        float(b.compute(make_signals(t, float(x))).lr) for t, x in enumerate(losses[120:], 120)
    ]
    np.testing.assert_allclose(again, rest, rtol=1e-7)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: Product(ConstantController(), 3.0), "Product.factor"),
        (lambda: Chain([ConstantController()], []), "Chain.controllers"),
        (lambda: Chain([ConstantController(), ConstantController()], [5, 6]), "Chain.boundaries"),
        (lambda: Chain([ConstantController()] * 3, [9, 4]), "Chain.boundaries"),
        (lambda: Warmup(ConstantController(), warmup_steps=0), "Warmup.warmup_steps"),
        (
            lambda: Warmup(ConstantController(), start_factor=0.0, shape="exponential"),
            "Warmup.start_factor",
        ),
        (lambda: Clamp(ConstantController(), min_lr=0.2, max_lr=0.1), "Clamp.min_lr"),
        (lambda: MaxChange(ConstantController(), max_change_ratio=0), "MaxChange.max_change"),
    ],
)
def test_bad_compositions_name_the_parameter(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_composed_controller_from_gin_logs_its_parts(tmp_path):
    config.parse(
        [],
        [
            "Trainer.controller = @Warmup()",
            "Warmup.controller = @OneCycleController()",
            "Warmup.warmup_steps = 10",
            "OneCycleController.total_steps = 40",
            "Trainer.steps = 40",
            "Trainer.steps_per_loop = 8",
            "Trainer.histogram_every = 0",
            "mlp.hidden = (8,)",
        ],
    )
    try:
        result = Trainer().fit(logdir=str(tmp_path), quiet=True)
    finally:
        gin.clear_config()
    events = Events(result.run_dir)
    for tag in ("controller/base", "controller/factor", "controller/base/phase"):
        assert len(events.scalar(tag)) == 40, tag
    lr, base, factor = (events.scalar(t) for t in ("lr", "controller/base", "controller/factor"))
    np.testing.assert_allclose(lr, base * factor, rtol=1e-6)
