"""Compares the PyTorch-semantics controllers with PyTorch's own schedulers.

Needs `torch` (not a dependency of lrresearch: `pip install torch`). For each
configuration, the LR of batch `t` is PyTorch's `optimizer.param_groups[0]["lr"]` after
`t` calls of `scheduler.step()`, and ours is `controller.compute(signals at step t)`;
with `cycle_momentum`, likewise the momentum (SGD's `momentum`, Adam's `betas[0]`).
Prints the largest relative difference per configuration and exits 1 above 1e-6.

Run: `python tools/check_torch_parity.py`, with torch found on `PYTHONPATH` (e.g.
`pip install --target /tmp/refpkgs torch`, then `PYTHONPATH=/tmp/refpkgs:.`).
"""

from __future__ import annotations

import importlib.util
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Checked before TensorFlow loads (seconds): said at once, in one line.
if importlib.util.find_spec("torch") is None:
    sys.exit(
        "tools/check_torch_parity.py needs torch, not an lrresearch dependency, and this "
        f"Python ({sys.executable}) finds none: install it beside, never into, "
        "lrresearch's venv and point PYTHONPATH at it, e.g. `pip install --target "
        "/tmp/refpkgs torch` then `PYTHONPATH=/tmp/refpkgs:. python tools/check_torch_parity.py`"
    )

import numpy as np
import tensorflow as tf

from lrresearch.controllers import (
    CosineRestartsController,
    CyclicController,
    OneCycleController,
)
from lrresearch.controllers.signals import make_signals

# torch's schedulers import triton (a GPU compiler, unused here), whose extension
# segfaulted on import (torch 2.14) in a process that had loaded TensorFlow: hide it.
sys.modules.setdefault("triton", None)
import torch  # noqa: E402

TOLERANCE = 1e-6


from measured_page import run_and_write  # noqa: E402

INTRO = (
    "Our PyTorch-semantics controllers against torch.optim.lr_scheduler, every batch, "
    "relative difference of the LR (float32 rounding is 5.96e-8). Needs torch in a "
    "scratch venv, never in lrresearch's (`pip install torch`)."
)


def torch_lrs(make_scheduler, base_lr: float, steps: int) -> np.ndarray:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base_lr, momentum=0.9)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(lrs)


def our_lrs(controller, steps: int) -> np.ndarray:
    compute = tf.function(lambda t: controller.compute(make_signals(t, 1.0, 1.0)).lr)
    return np.array([float(compute(tf.constant(t, tf.int64))) for t in range(steps)])


CASES = [
    (
        "OneCycle cos",
        1000,
        0.1,
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=0.1, total_steps=1000, cycle_momentum=False
        ),
        lambda: OneCycleController(max_lr=0.1, total_steps=1000),
    ),
    (
        "OneCycle linear three_phase",
        997,
        0.3,
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o,
            max_lr=0.3,
            total_steps=997,
            pct_start=0.25,
            anneal_strategy="linear",
            div_factor=10,
            final_div_factor=100,
            three_phase=True,
            cycle_momentum=False,
        ),
        lambda: OneCycleController(
            max_lr=0.3,
            total_steps=997,
            pct_start=0.25,
            anneal_strategy="linear",
            div_factor=10,
            final_div_factor=100,
            three_phase=True,
        ),
    ),
    (
        "Cyclic triangular",
        1500,
        1e-3,
        lambda o: torch.optim.lr_scheduler.CyclicLR(
            o, base_lr=1e-3, max_lr=6e-3, step_size_up=200, cycle_momentum=False
        ),
        lambda: CyclicController(base_lr=1e-3, max_lr=6e-3, step_size_up=200),
    ),
    (
        "Cyclic triangular2 asym",
        1500,
        1e-3,
        lambda o: torch.optim.lr_scheduler.CyclicLR(
            o,
            base_lr=1e-3,
            max_lr=6e-3,
            step_size_up=150,
            step_size_down=250,
            mode="triangular2",
            cycle_momentum=False,
        ),
        lambda: CyclicController(
            base_lr=1e-3, max_lr=6e-3, step_size_up=150, step_size_down=250, mode="triangular2"
        ),
    ),
    (
        "Cyclic exp_range",
        1500,
        1e-3,
        lambda o: torch.optim.lr_scheduler.CyclicLR(
            o,
            base_lr=1e-3,
            max_lr=6e-3,
            step_size_up=100,
            mode="exp_range",
            gamma=0.999,
            cycle_momentum=False,
        ),
        lambda: CyclicController(
            base_lr=1e-3, max_lr=6e-3, step_size_up=100, mode="exp_range", gamma=0.999
        ),
    ),
    (
        "CosineRestarts T_mult=1",
        1200,
        0.1,
        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=300, eta_min=1e-4),
        lambda: CosineRestartsController(base_lr=0.1, T_0=300, eta_min=1e-4),
    ),
    (
        "CosineRestarts T_mult=2",
        2300,
        0.1,
        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=100, T_mult=2),
        lambda: CosineRestartsController(base_lr=0.1, T_0=100, T_mult=2),
    ),
    (
        "CosineRestarts T_mult=3",
        4000,
        0.05,
        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            o, T_0=10, T_mult=3, eta_min=1e-3
        ),
        lambda: CosineRestartsController(base_lr=0.05, T_0=10, T_mult=3, eta_min=1e-3),
    ),
]


def torch_momenta(make_scheduler, steps: int, adam: bool) -> np.ndarray:
    """The optimizer's momentum (SGD's `momentum`, Adam's `betas[0]`) at each batch."""
    param = torch.nn.Parameter(torch.zeros(1))
    if adam:
        optimizer = torch.optim.Adam([param], lr=1e-3)
    else:
        optimizer = torch.optim.SGD([param], lr=1e-3, momentum=0.9)
    scheduler = make_scheduler(optimizer)
    momenta = []
    for _ in range(steps):
        group = optimizer.param_groups[0]
        momenta.append(group["betas"][0] if adam else group["momentum"])
        optimizer.step()
        scheduler.step()
    return np.array(momenta)


def our_momenta(controller, steps: int) -> np.ndarray:
    compute = tf.function(lambda t: controller.compute(make_signals(t, 1.0, 1.0)).momentum)
    return np.array([float(compute(tf.constant(t, tf.int64))) for t in range(steps)])


# cycle_momentum=True (PyTorch's default; ours is opt-in): (name, steps, Adam?, torch, ours).
MOMENTUM_CASES = [
    (
        "OneCycle cos, SGD momentum",
        1000,
        False,
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=1000),
        lambda: OneCycleController(max_lr=0.1, total_steps=1000, cycle_momentum=True),
    ),
    (
        "OneCycle linear 3-phase, Adam beta1",
        997,
        True,
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=0.3, total_steps=997, pct_start=0.25, anneal_strategy="linear",
            three_phase=True, base_momentum=0.8, max_momentum=0.9,
        ),
        lambda: OneCycleController(
            max_lr=0.3, total_steps=997, pct_start=0.25, anneal_strategy="linear",
            three_phase=True, cycle_momentum=True, base_momentum=0.8, max_momentum=0.9,
        ),
    ),
    (
        "Cyclic triangular2 asym, SGD",
        1500,
        False,
        lambda o: torch.optim.lr_scheduler.CyclicLR(
            o, base_lr=1e-3, max_lr=6e-3, step_size_up=150, step_size_down=250,
            mode="triangular2",
        ),
        lambda: CyclicController(
            base_lr=1e-3, max_lr=6e-3, step_size_up=150, step_size_down=250,
            mode="triangular2", cycle_momentum=True,
        ),
    ),
    (
        "Cyclic exp_range, Adam beta1",
        1500,
        True,
        lambda o: torch.optim.lr_scheduler.CyclicLR(
            o, base_lr=1e-3, max_lr=6e-3, step_size_up=100, mode="exp_range", gamma=0.999,
        ),
        lambda: CyclicController(
            base_lr=1e-3, max_lr=6e-3, step_size_up=100, mode="exp_range", gamma=0.999,
            cycle_momentum=True,
        ),
    ),
]  # fmt: skip


def main() -> int:
    print(f"torch {torch.__version__}, tensorflow {tf.__version__}")
    worst = 0.0
    for name, steps, base_lr, make_torch, make_ours in CASES:
        expected = torch_lrs(make_torch, base_lr, steps)
        got = our_lrs(make_ours(), steps)
        rel = float(np.max(np.abs(got - expected) / np.abs(expected)))
        worst = max(worst, rel)
        print(f"{name:32s} {steps:5d} steps  max relative difference {rel:.2e}")
    for name, steps, adam, make_torch, make_ours in MOMENTUM_CASES:
        expected = torch_momenta(make_torch, steps, adam)
        got = our_momenta(make_ours(), steps)
        rel = float(np.max(np.abs(got - expected) / np.abs(expected)))
        worst = max(worst, rel)
        print(f"{name:36s} {steps:5d} steps  momentum: max relative difference {rel:.2e}")
    print("OK" if worst <= TOLERANCE else f"FAILED: {worst:.2e} > {TOLERANCE}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(run_and_write(main, "docs/parity/torch.md", "PyTorch schedulers parity", INTRO))
