"""Compares `TimmCosineController` with timm's own `CosineLRScheduler`, and our host
copy of torch's CPU random draws with torch's; writes docs/parity/timm.md.

Needs timm and torch, neither an lrresearch dependency: install them beside, never
into, lrresearch's venv, e.g. `pip install --no-deps --target /tmp/ref_timm timm` and
torch in /tmp/numerics_refpkgs, then from the repository root:

    PYTHONPATH=.:/tmp/ref_timm:/tmp/numerics_refpkgs python tools/check_timm_reference.py

Only timm's `timm/scheduler/` is loaded (timm's package `__init__` imports torchvision).
The LR of batch `t` is timm's `optimizer.param_groups[0]["lr"]` after the optimizer's
construction (t = 0) or after `scheduler.step_update(num_updates=t)` (t >= 1), as timm's
`train.py` steps it; ours is `controller.compute(signals at step t)` in one traced
`tf.function`. Exits 1 when a relative difference exceeds one float32 rounding
(2**-24) or when a noise or generator check fails.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Checked before TensorFlow loads (seconds): said at once, in one line.
if importlib.util.find_spec("timm") is None or importlib.util.find_spec("torch") is None:
    sys.exit(
        "tools/check_timm_reference.py needs timm and torch, not lrresearch dependencies, "
        f"and this Python ({sys.executable}) misses one: `pip install --no-deps --target "
        "/tmp/ref_timm timm` (and torch likewise), then `PYTHONPATH=.:/tmp/ref_timm:"
        "/tmp/numerics_refpkgs python tools/check_timm_reference.py`"
    )

import numpy as np
import tensorflow as tf

from lrresearch.controllers import TimmCosineController
from lrresearch.controllers.signals import make_signals
from lrresearch.controllers.torch_random import TorchCPUGenerator

# torch imports triton (a GPU compiler, unused here), whose extension segfaulted on
# import (torch 2.14) in a process that had loaded TensorFlow: hide it.
sys.modules.setdefault("triton", None)
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measured_page import run_and_write  # noqa: E402

FLOAT32_ROUNDING = 2.0**-24
INTRO = (
    "`TimmCosineController` against timm's `CosineLRScheduler(t_in_epochs=False)`, "
    "every batch, relative difference of the LR (ours is float32: one rounding is "
    "5.96e-8). The noise is torch's own stream: `torch.Generator().manual_seed("
    "noise_seed + t)` is reproduced bit for bit on the host (`lrresearch/controllers/"
    "torch_random.py`, numpy's legacy MT19937 seeding is torch's), so the noisy "
    "settings match timm draw for draw too; the noise checks below say so step by step."
)


def load_cosine_scheduler() -> type:
    """timm's `CosineLRScheduler`, loading only `timm/scheduler/`."""
    root = importlib.util.find_spec("timm").submodule_search_locations[0]
    package = types.ModuleType("timm_scheduler_only")
    package.__path__ = [os.path.join(root, "scheduler")]
    sys.modules["timm_scheduler_only"] = package
    return importlib.import_module("timm_scheduler_only.cosine_lr").CosineLRScheduler


def timm_lrs(scheduler_class: type, base_lr: float, steps: int, **kwargs) -> np.ndarray:
    """timm's LR of batches 0..steps-1, stepped as timm's `train.py` steps it."""
    noise_type = kwargs.pop("noise_type", "normal")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base_lr)
    scheduler = scheduler_class(optimizer, t_in_epochs=False, **kwargs)
    scheduler.noise_type = noise_type  # Scheduler's; CosineLRScheduler does not pass it
    lrs = []
    for t in range(steps):
        if t:
            scheduler.step_update(num_updates=t)
        lrs.append(optimizer.param_groups[0]["lr"])
    return np.array(lrs)


def our_lrs(base_lr: float, steps: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Our LR and noise diagnostic of batches 0..steps-1, traced once."""
    controller = TimmCosineController(base_lr=base_lr, **kwargs)
    controller.set_run_length(steps)
    compute = tf.function(lambda t: controller.compute(make_signals(t, 1.0)))
    outputs = [compute(tf.constant(t, tf.int64)) for t in range(steps)]
    assert compute.experimental_get_tracing_count() == 1
    lrs = np.array([float(o.lr) for o in outputs])
    noise = np.array([float(o.diagnostics["noise"]) for o in outputs])
    return lrs, noise


# (name, base_lr, steps, CosineLRScheduler arguments): none is a test's setting.
SETTINGS = [
    ("one cycle", 0.4, 3000, dict(t_initial=2500, lr_min=2e-4)),
    ("cycle_mul 1, cycle_limit 3, past the last", 0.1, 3500, dict(t_initial=900, cycle_limit=3)),
    (
        "cycle_mul 2, cycle_limit 3, past the last",
        0.05,
        3000,
        dict(t_initial=300, cycle_mul=2.0, cycle_limit=3),
    ),
    ("cycle_mul 2, cycle_limit 1", 0.05, 1200, dict(t_initial=500, cycle_mul=2.0)),
    (
        "cycle_mul 3 (float log boundaries), cycle_limit 7",
        0.2,
        3300,
        dict(t_initial=3, cycle_mul=3.0, cycle_limit=7),
    ),
    (
        "cycle_mul 1.7, cycle_decay 0.6, lr_min > 0",
        0.3,
        4000,
        dict(t_initial=211, cycle_mul=1.7, cycle_decay=0.6, cycle_limit=6, lr_min=3e-3),
    ),
    (
        "cycle_mul 0.6, cycle_limit 4 (timm raises from 1750)",
        0.1,
        1750,
        dict(t_initial=700, cycle_mul=0.6, cycle_limit=4),
    ),
    (
        "cycle_decay 0.3, cycle_limit 5",
        1.0,
        2600,
        dict(t_initial=450, cycle_decay=0.3, cycle_limit=5),
    ),
    ("k_decay 2", 0.1, 2100, dict(t_initial=2000, k_decay=2.0, lr_min=1e-4)),
    (
        "k_decay 0.5, cycles",
        0.1,
        2100,
        dict(t_initial=333, k_decay=0.5, cycle_limit=4, cycle_decay=0.8),
    ),
    ("warmup, no prefix", 0.2, 2000, dict(t_initial=1800, warmup_t=250, warmup_lr_init=1e-5)),
    (
        "warmup with prefix, cycles",
        0.2,
        2500,
        dict(
            t_initial=400,
            warmup_t=137,
            warmup_lr_init=2e-3,
            warmup_prefix=True,
            cycle_mul=1.5,
            cycle_limit=3,
            lr_min=1e-4,
        ),
    ),
    (
        "noise normal, window (pair)",
        0.1,
        2500,
        dict(t_initial=2200, noise_range_t=(300, 1900), noise_seed=1234),
    ),
    (
        "noise normal std 0.5 pct 0.3, open window, cycles",
        0.1,
        2500,
        dict(
            t_initial=600,
            cycle_limit=4,
            cycle_decay=0.9,
            noise_range_t=250,
            noise_pct=0.3,
            noise_std=0.5,
            noise_seed=0,
        ),
    ),
    (
        "noise uniform, warmup prefix",
        0.1,
        2500,
        dict(
            t_initial=2000,
            warmup_t=100,
            warmup_prefix=True,
            noise_range_t=(0, 2200),
            noise_type="uniform",
            noise_pct=0.4,
            noise_seed=99,
        ),
    ),
]


def compare_settings(scheduler_class: type) -> bool:
    """One line per setting: the largest relative and absolute differences."""
    ok = True
    print(f"{'setting':54} {'steps':>6} {'max rel diff':>13} {'max abs diff':>13}")
    for name, base_lr, steps, kwargs in SETTINGS:
        theirs = timm_lrs(scheduler_class, base_lr, steps, **kwargs)
        ours, _ = our_lrs(base_lr, steps, **kwargs)
        absolute = np.abs(ours - theirs)
        relative = np.max(absolute / np.maximum(np.abs(theirs), 1e-300))
        ok &= bool(relative <= FLOAT32_ROUNDING)
        flag = "" if relative <= FLOAT32_ROUNDING else "  FAIL"
        print(f"{name:54} {steps:>6} {relative:>13.3g} {absolute.max():>13.3g}{flag}")
    return ok


def noise_checks(scheduler_class: type) -> bool:
    """(a) the window, (b) the bound, (c) the draws' distribution, against timm."""
    ok = True
    steps, window = 10000, (1000, 9000)
    print(f"\nNoise over {steps:,} batches, noise_range_t = {window}, t_initial = {steps}:")
    draws = (("normal", 0.67, 1.0), ("normal", 0.2, 0.3), ("uniform", 0.5, 1.0))
    for noise_type, pct, std in draws:
        kwargs = dict(t_initial=steps, noise_range_t=window, noise_pct=pct, noise_std=std)
        kwargs |= dict(noise_type=noise_type, noise_seed=7)
        clean_kwargs = {**kwargs, "noise_range_t": None}
        theirs = timm_lrs(scheduler_class, 0.1, steps, **kwargs)
        clean = timm_lrs(scheduler_class, 0.1, steps, **clean_kwargs)
        ours, noise = our_lrs(0.1, steps, **kwargs)
        ours_clean, _ = our_lrs(0.1, steps, **clean_kwargs)
        t = np.arange(steps)
        inside = (t >= max(window[0], 1)) & (t < window[1])
        differs = ours != ours_clean
        window_ok = np.array_equal(differs, inside & (noise != 0)) and not differs[~inside].any()
        multiplier = ours[inside] / ours_clean[inside] - 1
        bound_ok = bool(np.all(np.abs(noise[inside]) <= np.float32(pct)))  # float32 diagnostic
        theirs_multiplier = theirs[inside] / clean[inside] - 1
        ks = _ks_statistic(multiplier, theirs_multiplier)
        same = np.max(np.abs(ours - theirs) / theirs)
        print(
            f"  {noise_type:7} pct {pct} std {std}: (a) noisy exactly in the window: "
            f"{window_ok}; (b) max |lr/lr_clean - 1| = {np.abs(multiplier).max():.4f} < {pct}: "
            f"{bound_ok}; (c) multiplier mean {multiplier.mean():+.4f} (timm "
            f"{theirs_multiplier.mean():+.4f}), std {multiplier.std():.4f} (timm "
            f"{theirs_multiplier.std():.4f}), KS statistic {ks:.2g}; max rel diff to "
            f"timm's noisy LR {same:.3g}"
        )
        ok &= window_ok and bound_ok and ks < 0.02 and same <= FLOAT32_ROUNDING
    return ok


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (the largest gap of the two CDFs)."""
    values = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), values, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), values, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def generator_checks() -> bool:
    """Our host copy of torch's CPU generator against torch, over many seeds."""
    seeds = [*range(0, 3000), 2**32 - 1, 2**32 + 5, 123456789012]
    mismatches = 0
    for seed in seeds:
        theirs, ours = torch.Generator().manual_seed(seed), TorchCPUGenerator(seed)
        normals = [torch.randn(1, generator=theirs).item() for _ in range(5)]
        mismatches += normals != [ours.randn() for _ in range(5)]
        uniforms = [torch.rand(1, generator=theirs).item() for _ in range(3)]
        mismatches += uniforms != [ours.rand() for _ in range(3)]
    print(
        f"\nGenerator: torch.Generator().manual_seed(s), 5 randn then 3 rand draws, for "
        f"{len(seeds):,} seeds (0..2999 and three >= 2**32): {mismatches} differ from ours"
    )
    return mismatches == 0


def main() -> int:
    scheduler_class = load_cosine_scheduler()
    print(f"timm {importlib.metadata.version('timm')}, torch {torch.__version__}\n")
    ok = compare_settings(scheduler_class)
    ok &= noise_checks(scheduler_class)
    ok &= generator_checks()
    print("\nall within bounds" if ok else "\nFAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_and_write(main, "docs/parity/timm.md", "timm parity", INTRO))
