"""LR range test: ramp the LR per batch (exponentially or linearly) on a throwaway model
and read a good LR off the loss curve (Smith, 2017; the fastai / PyTorch-Lightning "LR
finder"). This module runs `lrresearch lr-find` on the gin-configured workload. The
ramp, smoothing and divergence test run in-graph (`LRRangeController`, in
`lrresearch.controllers.lr_range`); the suggestions (`steepest`, `min10`, and fastai's
`valley` and `slide`), the result and its plot are numpy on the recorded curve
(`lrresearch.analysis.lr_curve`). `lrresearch.keras_fit.range_test` runs the same test
inside a user's Keras `fit`.

References:
  Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
  fastai `fastai/callback/schedule.py`: `LRFinder`, `valley`, `slide`, `minimum`,
    `steep`, `Learner.lr_find` (fastai 2.8).
  PyTorch Lightning `lightning/pytorch/tuner/lr_finder.py`: `mode="exponential"|"linear"`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gin

# Re-exported: `lrresearch.lr_find.plot` (and the rest) of the flat layout still import.
from lrresearch.analysis.lr_curve import (  # noqa: F401
    MIN_BATCHES_TO_MINIMUM,
    MIN_DESCENT,
    SUGGESTIONS,
    LRFindResult,
    NoDescentError,
    check_descent,
    finish,
    plot,
    starting_level,
    y_range,
)
from lrresearch.analysis.lr_suggest import (  # noqa: F401
    divergence_index,
    fastai_window,
    slide,
    suggest,
    suggest_all,
    valley,
)
from lrresearch.controllers.lr_range import MODES, LRRangeController  # noqa: F401
from lrresearch.training import distribute
from lrresearch.training.open_run import open_run
from lrresearch.training.trainer import Trainer


def lr_find(
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    num_steps: int = 200,
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
    logdir: str = "runs",
    run_name: str | None = None,
    progress: Callable[[str], None] = print,
    mode: str = "exponential",
) -> LRFindResult:
    """Runs the range test on a fresh model built from the current gin config (model,
    data, optimizer, batch size; the configured controller is ignored) and writes
    `lr_find.png`, `config.gin` and the summaries (`lr`, `loss/batch`,
    `controller/smoothed_loss`) into a new run directory. `mode`: the ramp,
    "exponential" or "linear" (`LRRangeController`)."""
    controller = LRRangeController(start_lr, end_lr, num_steps, smoothing, diverge_factor, mode)
    trainer = Trainer(
        controller=controller,
        steps=num_steps,
        histogram_every=0,
        eval_every=0,
        grad_norm_every=0,
        strategy=distribute.get_strategy(),
    )
    trainer.build()
    config = gin.operative_config_str()
    with open_run(logdir, run_name, "lr-find", config, resumable=False) as run:
        progress(f"lr-find directory: {run.path}")
        done, block = 0, max(1, min(trainer.steps_per_loop, 10))
        start = time.perf_counter()
        with trainer.logging_to(run.writer):
            while done < num_steps and not bool(controller.diverged.numpy()):
                n = min(block, num_steps - done)
                trainer.run_steps(n)
                done += n
                eta = (time.perf_counter() - start) / done * (num_steps - done)
                progress(
                    f"lr-find: step {done}/{num_steps}  lr {float(controller.lrs[done - 1]):.3g}"
                    f"  smoothed loss {float(controller.smoothed[done - 1]):.4f}"
                    f"  ETA {eta:.0f}s (or sooner, at divergence)"
                )
    return finish(controller, done, run.path)
