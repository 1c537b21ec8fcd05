"""Compares `WarmupCosineController` with optax's `warmup_cosine_decay_schedule`.

Needs `optax` and `jax` (not dependencies of lrresearch: install them in a scratch
environment). optax runs in float64 (`jax_enable_x64`); ours is the float32 LR the
trainer applies. For each parameter set, every batch from 0 to `decay_steps + 100` is
compared; the largest relative difference over all of them is the bound the README
states. A float32 rounding of the exact value is at most 2**-24 = 5.96e-8 relative.
Exits 1 above 1.2e-7 (two half-ulps).

Run: `python tools/check_optax_parity.py`
"""

from __future__ import annotations

import datetime
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from lrresearch.controllers import WarmupCosineController
from lrresearch.controllers.signals import make_signals

TOLERANCE = 1.2e-7

# (base_lr, warmup_steps, decay_steps, init_lr, end_lr)
CASES = [
    (0.1, 100, 2000, 0.0, 0.0),
    (3e-4, 1000, 100_000, 1e-7, 0.0),
    (0.5, 0, 300, 0.0, 1e-3),
    (1.0, 7, 10, 0.2, 0.0),
    (2e-3, 500, 5_000, 2e-5, 2e-5),
]


from measured_page import run_and_write  # noqa: E402

INTRO = (
    "`WarmupCosineController` against optax's `warmup_cosine_decay_schedule` computed in "
    "float64, every batch up to and past `decay_steps`. Needs optax and jax in a scratch "
    "venv."
)


def ours(case: tuple, steps: np.ndarray) -> np.ndarray:
    base_lr, warmup_steps, decay_steps, init_lr, end_lr = case
    controller = WarmupCosineController(base_lr, warmup_steps, decay_steps, init_lr, end_lr)

    @tf.function
    def lrs(ts: tf.Tensor) -> tf.Tensor:
        return tf.map_fn(
            lambda t: controller.compute(make_signals(t, 1.0, 1.0)).lr,
            ts,
            fn_output_signature=tf.float32,
        )

    return lrs(tf.constant(steps, tf.int64)).numpy().astype(np.float64)


def main() -> int:
    try:
        import jax
        import optax
    except ImportError:
        sys.exit("needs optax and jax (not lrresearch dependencies): pip install optax")
    jax.config.update("jax_enable_x64", True)
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs")
    print(
        f"versions: tensorflow {tf.__version__}, optax {optax.__version__}, jax "
        f"{jax.__version__}, numpy {np.__version__}"
    )
    print(f"command: python {' '.join(sys.argv)}\n")
    print("| base_lr, warmup, decay, init, end | batches | max rel diff | at batch |")
    print("|---|---|---|---|")
    worst = 0.0
    for case in CASES:
        base_lr, warmup_steps, decay_steps, init_lr, end_lr = case
        steps = np.arange(decay_steps + 101)
        schedule = optax.warmup_cosine_decay_schedule(
            init_lr, base_lr, warmup_steps, decay_steps, end_lr
        )
        expected = np.asarray(jax.vmap(schedule)(jax.numpy.asarray(steps)), np.float64)
        got = ours(case, steps)
        zero = expected == 0.0
        if np.any(got[zero] != 0.0):
            print(f"| {case} | nonzero LR where optax gives 0 |")
            return 1
        relative = np.zeros_like(got)
        relative[~zero] = np.abs(got - expected)[~zero] / expected[~zero]
        at = int(np.argmax(relative))
        worst = max(worst, float(relative[at]))
        print(f"| {case} | {len(steps)} | {relative[at]:.3g} | {at} |")
    print(f"\nbound: max relative difference {worst:.3g} over every batch of every case")
    return 1 if worst > TOLERANCE else 0


if __name__ == "__main__":
    sys.exit(run_and_write(main, "docs/parity/optax.md", "optax schedule parity", INTRO))
