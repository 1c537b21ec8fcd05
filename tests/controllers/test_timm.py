"""`TimmCosineController` against a numpy re-implementation of timm's `CosineLRScheduler`
stepped per update, written here with the cycles found by summing their lengths (timm
uses a float log); the noise against torch's own draws, copied as constants; and a
noisy run SIGKILLed and resumed through the CLI.

`tools/check_timm_reference.py` compares with timm and torch themselves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import TimmCosineController
from lrresearch.controllers.signals import make_signals
from lrresearch.controllers.torch_random import TorchCPUGenerator, timm_noise, timm_noise_table
from tests.support import Events, kill_at_step, start_cli

FLOAT32_ROUNDING = 2.0**-24


DIAGNOSTICS = ("cycle", "warmup", "noise")


def ours(controller, steps: int, jit_compile: bool = False) -> tuple[np.ndarray, dict]:
    """The LR (float32) and diagnostics of batches 0..steps-1: the step traced once and
    run over every batch in one call (`tf.map_fn`)."""

    def batch(t):
        output = controller.compute(make_signals(t, 1.0))
        return tf.stack([output.lr, *(output.diagnostics[n] for n in DIAGNOSTICS)])

    run = tf.function(lambda ts: tf.map_fn(batch, ts, fn_output_signature=tf.float32))
    run = tf.function(run, jit_compile=True) if jit_compile else run
    rows = run(tf.range(steps, dtype=tf.int64)).numpy()
    assert run.experimental_get_tracing_count() == 1
    return rows[:, 0].astype(np.float64), dict(zip(DIAGNOSTICS, rows[:, 1:].T, strict=True))


def reference(steps: int, base_lr: float, t_initial: int, **kwargs) -> np.ndarray:
    """timm's LR of batches 0..steps-1 (float64), with the cycles' starts summed."""
    lr_min, m = kwargs.get("lr_min", 0.0), kwargs.get("cycle_mul", 1.0)
    decay, limit = kwargs.get("cycle_decay", 1.0), kwargs.get("cycle_limit", 1)
    warmup, init = kwargs.get("warmup_t", 0), kwargs.get("warmup_lr_init", 0.0)
    prefix, k = kwargs.get("warmup_prefix", False), kwargs.get("k_decay", 1.0)
    lengths = [t_initial * m**i for i in range(limit)]
    starts = np.concatenate([[0.0], np.cumsum(lengths)])  # cycle i: [starts[i], starts[i+1])
    lrs = []
    for t in range(steps):
        if t < warmup:
            lrs.append(init + (base_lr - init) * t / warmup)
            continue
        u = t - warmup if prefix else t
        i = int(np.searchsorted(starts, u, side="right")) - 1
        if i >= limit:
            lrs.append(lr_min)
            continue
        progress = ((u - starts[i]) / lengths[i]) ** k
        peak = base_lr * decay**i
        lrs.append(lr_min + (peak - lr_min) * (1 + math.cos(math.pi * progress)) / 2)
    lrs[0] = init if warmup else base_lr  # the LR timm sets at construction
    return np.array(lrs)


def assert_within_one_rounding(got: np.ndarray, expected: np.ndarray) -> None:
    relative = np.abs(got - expected) / np.maximum(np.abs(expected), 1e-300)
    worst = int(np.argmax(relative))
    assert relative[worst] <= FLOAT32_ROUNDING, (worst, got[worst], expected[worst])


SETTINGS = [
    dict(t_initial=300),
    dict(t_initial=40, lr_min=1e-3, cycle_limit=4, cycle_decay=0.5),
    dict(t_initial=16, cycle_mul=2.0, cycle_limit=4),  # boundaries at 16, 48, 112; then lr_min
    dict(t_initial=37, cycle_mul=1.5, cycle_limit=5, cycle_decay=0.8, lr_min=2e-3),
    dict(t_initial=120, cycle_mul=0.5, cycle_limit=3),  # 120 + 60 + 30 batches, then lr_min
    dict(t_initial=100, k_decay=2.0, cycle_limit=2, warmup_t=30, warmup_lr_init=1e-3),
    dict(t_initial=50, k_decay=0.5, cycle_limit=3, warmup_t=25, warmup_prefix=True),
]


@pytest.mark.parametrize(
    "kwargs", SETTINGS, ids=lambda k: ",".join(f"{a}={v}" for a, v in k.items())
)
def test_timm_cosine_matches_timms_rule_over_every_cycle_and_past_the_last(kwargs):
    steps = 400
    controller = TimmCosineController(base_lr=0.2, **kwargs)
    lrs, diagnostics = ours(controller, steps)
    assert_within_one_rounding(lrs, reference(steps, 0.2, **kwargs))
    warmup = kwargs.get("warmup_t", 0)
    np.testing.assert_array_equal(diagnostics["warmup"], np.arange(steps) < warmup)
    assert not diagnostics["noise"].any()


def test_batch_zero_trains_at_the_lr_timm_sets_at_construction():
    no_warmup = TimmCosineController(base_lr=0.3, t_initial=10, lr_min=0.1)
    warmup = TimmCosineController(base_lr=0.3, t_initial=10, warmup_t=4, warmup_lr_init=0.01)
    for controller, first in ((no_warmup, 0.3), (warmup, 0.01)):
        assert controller.initial_lr == first
        assert float(controller.compute(make_signals(0, 1.0)).lr) == np.float32(first)
    # The warmup reaches base_lr at warmup_t, where the cosine starts (no prefix: 4 in).
    at_end = float(warmup.compute(make_signals(4, 1.0)).lr)
    assert at_end == pytest.approx(0.3 * (1 + math.cos(math.pi * 4 / 10)) / 2, rel=1e-7)


def test_cycle_index_follows_timms_float_log_at_an_inexact_boundary():
    # Cycle 5 of t_initial=5, cycle_mul=3 starts at 605 exactly, but timm's
    # math.log(1 + 605 / 5 * 2, 3) is 4.999999999999999: batch 605 ends cycle 4 at lr_min.
    assert math.floor(math.log(1 + 605 / 5 * 2, 3)) == 4
    controller = TimmCosineController(base_lr=1.0, t_initial=5, cycle_mul=3.0, cycle_limit=9)
    controller.set_run_length(2000)
    lrs, diagnostics = ours(controller, 700)
    assert lrs[605] == 0.0 and diagnostics["cycle"][605] == 4
    assert lrs[606] == pytest.approx(0.5 * (1 + math.cos(math.pi / 1215)), rel=1e-7)
    assert diagnostics["cycle"][606] == 5


def test_timm_cosine_under_xla_equals_the_plain_function():
    kwargs = dict(t_initial=30, cycle_mul=1.5, cycle_limit=3, noise_range_t=(10, 60))
    plain, _ = ours(TimmCosineController(**kwargs), 120)
    compiled, _ = ours(TimmCosineController(**kwargs), 120, jit_compile=True)
    np.testing.assert_array_equal(compiled, plain)


def test_the_host_generator_draws_what_torch_draws():
    # torch 2.14: torch.Generator().manual_seed(s), then torch.randn(1) / torch.rand(1).
    zero = TorchCPUGenerator(0)
    assert [zero.randn() for _ in range(5)] == [
        1.5409960746765137, -0.293428897857666, -2.1787893772125244,
        0.5684312582015991, -1.0845223665237427,
    ]  # fmt: skip
    one = TorchCPUGenerator(1)
    assert [one.rand() for _ in range(3)] == [
        0.7576315999031067, 0.2793108820915222, 0.40306925773620605,
    ]  # fmt: skip
    wrapped = TorchCPUGenerator(2**32 + 7)  # torch seeds mt19937 with the low 32 bits
    assert [wrapped.randn(), wrapped.randn()] == [-0.1467950940132141, 0.7861412763595581]


def test_normal_noise_is_redrawn_until_below_noise_pct():
    # Seed 0's draws are 1.54, -0.29, ...: with noise_pct 0.5 the first is rejected.
    assert timm_noise(0, 0.5, 1.0, "normal") == -0.293428897857666
    assert timm_noise(0, 2.0, 0.5, "normal") == 1.5409960746765137 * 0.5
    assert timm_noise(1, 0.4, 1.0, "uniform") == 2 * (0.7576315999031067 - 0.5) * 0.4


def test_noise_is_timms_draw_inside_the_window_only():
    window, seed = (40, 250), 5
    kwargs = dict(base_lr=0.1, t_initial=300, cycle_limit=2, noise_pct=0.3, noise_std=0.5)
    noisy = TimmCosineController(**kwargs, noise_range_t=window, noise_seed=seed)
    noisy.set_run_length(300)
    lrs, diagnostics = ours(noisy, 300)
    clean, _ = ours(TimmCosineController(**kwargs), 300)
    t = np.arange(300)
    inside = (t >= window[0]) & (t < window[1])
    draws = timm_noise_table(window[0], window[1], seed, 0.3, 0.5, "normal")
    np.testing.assert_array_equal(diagnostics["noise"][inside], draws.astype(np.float32))
    assert not diagnostics["noise"][~inside].any()
    np.testing.assert_array_equal(lrs[~inside], clean[~inside])
    expected = reference(300, 0.1, 300, cycle_limit=2)
    expected[inside] = expected[inside] + expected[inside] * draws
    assert_within_one_rounding(lrs, expected)
    assert np.all(np.abs(draws) < 0.3) and (lrs[inside] != clean[inside]).all()


def test_noise_is_a_function_of_seed_and_step_alone():
    def noise(seed, window=10, steps=80):
        controller = TimmCosineController(t_initial=100, noise_range_t=window, noise_seed=seed)
        controller.set_run_length(steps)
        return ours(controller, steps)[1]["noise"]

    first = noise(3)
    np.testing.assert_array_equal(noise(3), first)
    assert (noise(1000)[10:] != first[10:]).all()
    # Batch t draws from noise_seed + t, as in timm: seed 4 is seed 3 one batch on.
    np.testing.assert_array_equal(noise(4)[10:-1], first[11:])
    # Batch 0 trains at the construction LR, never noisy; the open window ends with the run.
    assert noise(3, window=0)[0] == 0.0 and (noise(3, window=0)[1:] != 0).all()
    np.testing.assert_array_equal(noise(3, steps=120)[:80], first)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(t_initial=0), "TimmCosineController.t_initial must be an int >= 1, got 0"),
        (dict(cycle_mul=0.0), "TimmCosineController.cycle_mul must be > 0"),
        (dict(cycle_limit=0), "TimmCosineController.cycle_limit must be an int >= 1"),
        (dict(lr_min=-1e-3), "TimmCosineController.lr_min must be >= 0"),
        (dict(warmup_t=2.5), "TimmCosineController.warmup_t must be an int >= 0"),
        (dict(k_decay=0), "TimmCosineController.k_decay must be > 0"),
        (dict(noise_range_t=(5, 5)), "noise_range_t = (start, end) needs start < end"),
        (dict(noise_range_t=(1, 2, 3)), "noise_range_t must be None, a batch index or a pair"),
        (dict(noise_range_t=-1), "TimmCosineController.noise_range_t must be >= 0"),
        (dict(noise_type="gumbel"), "TimmCosineController.noise_type must be one of"),
        (dict(noise_seed=-1), "TimmCosineController.noise_seed must be an int >= 0"),
        (dict(warmup_prefix=1), "TimmCosineController.warmup_prefix must be True or False"),
    ],
)
def test_bad_arguments_name_the_binding(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TimmCosineController(**kwargs)


def test_unknown_run_length_names_the_binding_and_the_fix():
    with pytest.raises(ValueError, match=r"TimmCosineController\.t_initial must be a number"):
        TimmCosineController().compute(make_signals(3, 1.0))
    open_window = TimmCosineController(t_initial=100, noise_range_t=20)
    with pytest.raises(ValueError, match=r"noise_range_t = \(20, <end batch>\)"):
        open_window.compute(make_signals(3, 1.0))


def test_the_noise_is_drawn_up_to_the_run_end_and_a_window_too_long_to_draw_is_refused():
    cut = TimmCosineController(t_initial=10, noise_range_t=(5, 10**12))
    cut.set_run_length(50)
    assert cut._noise_range() == (5, 50)
    endless = TimmCosineController(t_initial=10, noise_range_t=0)
    with pytest.raises(ValueError, match=r"noise_range_t spans 2,999,999 noisy batches"):
        endless.set_run_length(3_000_000)


def test_t_initial_none_takes_the_run_after_a_warmup_prefix_and_warns_on_a_cut_schedule():
    controller = TimmCosineController(warmup_t=20, warmup_prefix=True)
    assert controller.set_run_length(200) == {"TimmCosineController.t_initial": 180}
    assert controller.run_warnings(200) == []
    assert controller.schedule_length() == 200
    cut = TimmCosineController(t_initial=300)
    cut.set_run_length(200)
    [warning] = cut.run_warnings(200)
    assert "TimmCosineController.t_initial = 300 is cut by Trainer.steps = 200" in warning
    late = TimmCosineController(t_initial=200, noise_range_t=(250, 300), warmup_t=250)
    late.set_run_length(200)
    assert [w.split(" ")[0] for w in late.run_warnings(200)] == [
        "TimmCosineController.warmup_t",
        "TimmCosineController.noise_range_t",
    ]


NOISY_RUN = [
    "Trainer.controller = @TimmCosineController()",
    "TimmCosineController.base_lr = 0.05",
    "TimmCosineController.t_initial = 25",
    "TimmCosineController.cycle_limit = 3",
    "TimmCosineController.warmup_t = 5",
    "TimmCosineController.noise_range_t = 10",
    "TimmCosineController.noise_pct = 0.5",
    "Trainer.steps = 60",
    "Trainer.checkpoint_every = 20",
    "Trainer.steps_per_loop = 5",
    "Trainer.log_every = 5",
    "Trainer.eval_every = 0",
    "Trainer.histogram_every = 0",
    "mlp.hidden = (8,)",
]


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_noisy_run_killed_and_resumed_through_the_cli_logs_the_lr_of_an_uninterrupted_one(
    tmp_path,
):
    def start(*extra):
        flags = [f"--gin_param={p}" for p in NOISY_RUN]
        return start_cli("train", f"--logdir={tmp_path}", "--run_name=cut", *flags, *extra)

    assert kill_at_step(start(), 25) < 60  # after the checkpoint at 20
    resumed = start("--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resumed at step" in out, out[-2000:]
    uninterrupted = TimmCosineController(
        base_lr=0.05, t_initial=25, cycle_limit=3, warmup_t=5, noise_range_t=10, noise_pct=0.5
    )
    uninterrupted.set_run_length(60)
    expected, diagnostics = ours(uninterrupted, 60)
    events = Events(tmp_path / "cut")
    np.testing.assert_array_equal(events.steps("lr"), np.arange(60))
    np.testing.assert_array_equal(events.scalar("lr"), expected.astype(np.float32))
    np.testing.assert_array_equal(events.scalar("controller/noise"), diagnostics["noise"])
    assert (diagnostics["noise"][10:] != 0).all()
