"""LR range test: ramp the LR per batch (exponentially or linearly) on a throwaway model
and read a good LR off the loss curve (Smith, 2017; the fastai / PyTorch-Lightning "LR
finder"). The ramp, smoothing and divergence test run in-graph (`LRRangeController`);
the suggestions (`steepest`, `min10`, and fastai's `valley` and `slide`) are numpy on the
recorded curve. `lrresearch.keras_fit.range_test` runs the same test inside a user's Keras `fit`.

References:
  Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
  fastai `fastai/callback/schedule.py`: `LRFinder`, `valley`, `slide`, `minimum`,
    `steep`, `Learner.lr_find` (fastai 2.8).
  PyTorch Lightning `lightning/pytorch/tuner/lr_finder.py`: `mode="exponential"|"linear"`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable

import gin
import numpy as np
import tensorflow as tf

from lrresearch.analysis.lr_suggest import (  # noqa: F401 (re-exported: lr_find.valley, ...)
    divergence_index,
    fastai_window,
    slide,
    suggest,
    suggest_all,
    valley,
)
from lrresearch.checks import check_int, check_positive
from lrresearch.controllers.base import Controller, ControllerOutput
from lrresearch.controllers.signals import Signals
from lrresearch.training import distribute
from lrresearch.training.open_run import open_run
from lrresearch.training.trainer import Trainer

MODES = ("exponential", "linear")


class LRRangeController(Controller):
    """The range test's ramp, and the state it needs, all in-graph.

    `mode="exponential"`: `lr_t = start_lr * (end_lr / start_lr) ** (t / (num_steps - 1))`;
    `mode="linear"`: `lr_t = start_lr + (end_lr - start_lr) * t / (num_steps - 1)`
    (Lightning's two modes; both reach `end_lr` at the last batch). Beside it: the
    bias-corrected EMA of the loss (`smoothing`), its minimum, and a `diverged` flag
    raised once the smoothed loss exceeds `diverge_factor` times that minimum (or the
    loss is NaN/Inf). The LRs, batch losses and smoothed losses are kept in buffers,
    read by Python once per compiled call.
    """

    standalone = False

    def __init__(
        self,
        start_lr: float,
        end_lr: float,
        num_steps: int,
        smoothing: float = 0.98,
        diverge_factor: float = 4.0,
        mode: str = "exponential",
        name: str | None = None,
    ):
        super().__init__(name=name)
        check_positive("lr_find", start_lr=start_lr, end_lr=end_lr, diverge_factor=diverge_factor)
        check_int("lr_find", "num_steps", num_steps, 2)
        if not start_lr < end_lr:
            raise ValueError(f"lr_find: start_lr ({start_lr}) must be < end_lr ({end_lr})")
        if not 0 <= smoothing < 1:
            raise ValueError(f"lr_find: smoothing must be in [0, 1), got {smoothing!r}")
        if mode not in MODES:
            raise ValueError(f"lr_find: mode must be one of {MODES}, got {mode!r}")
        self.start_lr, self.end_lr, self.num_steps = float(start_lr), float(end_lr), num_steps
        self.smoothing, self.diverge_factor = float(smoothing), float(diverge_factor)
        self.mode = mode
        self.initial_lr = self.start_lr
        self.ema = tf.Variable(0.0, trainable=False, name="ema")
        self.best = tf.Variable(float("inf"), trainable=False, name="best")
        self.diverged = tf.Variable(False, trainable=False, name="diverged")
        self.lrs = tf.Variable(tf.zeros([num_steps]), trainable=False, name="lrs")
        nans = tf.fill([num_steps], float("nan"))
        self.losses = tf.Variable(nans, trainable=False, name="losses")
        self.smoothed = tf.Variable(nans, trainable=False, name="smoothed")

    def ramp(self, t: tf.Tensor) -> tf.Tensor:
        """The LR of batch `t` (float32)."""
        progress = tf.cast(t, tf.float32) / (self.num_steps - 1)
        if self.mode == "linear":
            return self.start_lr + progress * (self.end_lr - self.start_lr)
        return self.start_lr * tf.exp(progress * math.log(self.end_lr / self.start_lr))

    def compute(self, signals: Signals) -> ControllerOutput:
        t = tf.minimum(tf.cast(signals.step, tf.int64), self.num_steps - 1)
        lr = self.ramp(t)
        loss = tf.cast(signals.loss, tf.float32)
        ema = self.smoothing * self.ema + (1.0 - self.smoothing) * loss
        smoothed = ema / (1.0 - tf.pow(self.smoothing, tf.cast(t, tf.float32) + 1.0))
        self.ema.assign(ema)
        finite = tf.math.is_finite(smoothed)
        self.diverged.assign(self.diverged | ~finite | (smoothed > self.diverge_factor * self.best))
        self.best.assign(tf.where(finite, tf.minimum(self.best, smoothed), self.best))
        self.lrs.scatter_nd_update([[t]], [lr])
        self.losses.scatter_nd_update([[t]], [loss])
        self.smoothed.scatter_nd_update([[t]], [smoothed])
        return ControllerOutput(lr, {"smoothed_loss": smoothed})


SUGGESTIONS = ("steepest", "min10", "valley", "slide")


@dataclasses.dataclass
class LRFindResult:
    """The range test's curve and suggestions (LRs in the optimizer's units; NaN when
    the curve has no descent to suggest from). `run_dir` is None for a Keras range
    test, which writes nothing; `batch_losses` are the raw per-batch losses."""

    run_dir: str | None
    lrs: np.ndarray
    smoothed_losses: np.ndarray
    stopped_early: bool
    steepest_lr: float
    min_over_10_lr: float
    valley_lr: float = float("nan")
    slide_lr: float = float("nan")
    batch_losses: np.ndarray | None = None

    def suggestion(self, which: str = "steepest") -> float:
        """The LR of suggestion `which`, one of `SUGGESTIONS`."""
        values = self.suggestions()
        if which not in values:
            raise ValueError(f"lr_find: suggestion must be one of {SUGGESTIONS}, got {which!r}")
        return values[which]

    def suggestions(self) -> dict[str, float]:
        """All four, by name, in `SUGGESTIONS` order."""
        lrs = (self.steepest_lr, self.min_over_10_lr, self.valley_lr, self.slide_lr)
        return dict(zip(SUGGESTIONS, lrs, strict=True))

    def summary(self) -> str:
        """ "steepest 0.0123, min/10 0.0456, valley ..., slide ..." (3 significant digits)."""
        names = {"min10": "min/10"}
        return ", ".join(f"{names.get(k, k)} {v:.3g}" for k, v in self.suggestions().items())

    def binding(self, name: str, which: str = "steepest") -> str:
        return f"{name} = {self.suggestion(which):.3g}"


MIN_DESCENT = 0.02
MIN_BATCHES_TO_MINIMUM = 5


class NoDescentError(Exception):
    """The range test's loss never descended: no LR can be read off the curve.
    `result` holds the curve, with NaN suggestions."""

    def __init__(self, message: str, result: LRFindResult | None = None):
        super().__init__(message)
        self.result = result


def starting_level(smoothed: np.ndarray, skip_start: float = 0.1) -> float:
    """The loss before the ramp changed the model: the lower of the first batch's loss
    (taken at the initial weights) and the smoothed loss's mean over the first
    `skip_start` of the points (which evens out that batch's noise when the first LRs
    are too small to train). A ramp that starts too high blows the loss up at once and
    then falls back: measured from the blown-up mean that recovery would look like a
    descent (on imbalanced_loss_trend.gin with --start_lr=3: 2.8 -> 1.42, where the
    first batch was 1.42)."""
    finite = smoothed[np.isfinite(smoothed)]
    return float(min(finite[0], np.mean(finite[: max(1, int(len(smoothed) * skip_start))])))


def check_descent(
    lrs: np.ndarray,
    smoothed: np.ndarray,
    diverge_factor: float,
    spell: Callable[[str], str] = "--{}".format,
) -> str | None:
    """Why no LR can be suggested from this curve (one paragraph with the fix), or None
    if the smoothed loss fell at least `MIN_DESCENT` below its starting level, with its
    minimum at least `MIN_BATCHES_TO_MINIMUM` batches into the ramp. `spell` writes an
    argument's name as the caller passes it (the CLI's flags by default)."""
    start_lr, end_lr, num_steps, factor = map(
        spell, ("start_lr", "end_lr", "num_steps", "diverge_factor")
    )
    diverged = divergence_index(smoothed, diverge_factor)
    curve = smoothed[: len(smoothed) if diverged is None else diverged]
    flags = f"`{start_lr}`, `{end_lr}`, `{num_steps}`, `{factor}`"
    if diverged is None and len(curve) < MIN_BATCHES_TO_MINIMUM:
        return f"{len(curve)} batches are too few to see a descent: raise {num_steps}."
    if len(curve) < MIN_BATCHES_TO_MINIMUM:
        return (
            f"the loss diverged at batch {diverged} of the ramp (lr {lrs[diverged]:.3g}), "
            f"before any descent: the LR was already too high at the start. Change: a "
            f"lower {start_lr} (e.g. {lrs[0] / 1000:.3g}); see {flags}."
        )
    start, lowest = starting_level(curve), int(np.argmin(curve))
    descent = (start - curve[lowest]) / max(abs(start), 1e-12)
    if descent >= MIN_DESCENT and lowest >= MIN_BATCHES_TO_MINIMUM:
        return None
    where = (
        f"its lowest, {curve[lowest]:.4g} at batch {lowest} (lr {lrs[lowest]:.3g}), is "
        f"{100 * descent:.1f}% below its starting level {start:.4g} (a descent needs "
        f"{100 * MIN_DESCENT:g}%, at batch {MIN_BATCHES_TO_MINIMUM} or later)"
    )
    if diverged is not None:
        return (
            f"the smoothed loss did not descend before it diverged at batch {diverged} "
            f"(lr {lrs[diverged]:.3g}): {where}. The LR was too high from the start of the "
            f"ramp. Change: a lower {start_lr} (e.g. {lrs[0] / 1000:.3g}); a higher "
            f"{factor} if the loss is only noisy; see {flags}."
        )
    return (
        f"the smoothed loss stayed flat over the whole ramp (lr {lrs[0]:.3g} to "
        f"{lrs[-1]:.3g}, {len(lrs)} batches): {where}. Change: a higher {end_lr} (the "
        f"LRs tried were too low to train) or more {num_steps}; see {flags}."
    )


def y_range(smoothed: np.ndarray) -> tuple[float, float]:
    """The plot's useful y range: from a margin below the smoothed minimum to the
    starting level plus its descent (at least 20% of it), as fastai's plot keeps to
    the range before divergence; a diverging tail would stretch it to its own scale."""
    finite = smoothed[np.isfinite(smoothed)]
    start, low = starting_level(smoothed), float(finite.min())
    span = max(start - low, 0.2 * abs(start), 1e-6)
    top = min(float(finite.max()), start + span) if finite.max() > low else low + span
    return low - 0.1 * span, top + 0.05 * span


def plot(result: LRFindResult, path: str) -> None:
    """Smoothed loss against LR (log x) in its useful range (points above it are
    marked at the top edge), suggestions marked when there are any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = np.isfinite(result.smoothed_losses)
    lrs, losses = result.lrs[keep], result.smoothed_losses[keep]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lrs, losses, color="#4c72b0", label="smoothed loss")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("smoothed batch loss")
    bottom, top = y_range(result.smoothed_losses)
    start = starting_level(result.smoothed_losses)
    ax.axhline(start, color="#8c8c8c", linestyle=":", label=f"starting level: {start:.4g}")
    above = losses > top
    if above.any() or not keep.all():
        off = np.concatenate([lrs[above], result.lrs[~keep]])
        ax.scatter(
            off,
            np.full(len(off), top),
            marker="^",
            color="#c44e52",
            clip_on=False,
            zorder=3,
            label=f"{len(off)} off the chart (up to "
            + (f"{losses.max():.3g})" if keep.all() else "NaN/Inf)"),
        )
    for value, label, color, style in (
        (result.steepest_lr, "steepest", "#dd8452", "--"),
        (result.min_over_10_lr, "min / 10", "#55a868", "--"),
        (result.valley_lr, "valley (fastai)", "#8172b3", "-."),
        (result.slide_lr, "slide (fastai)", "#937860", ":"),
    ):
        if np.isfinite(value):
            ax.axvline(value, color=color, linestyle=style, label=f"{label}: {value:.3g}")
    ax.legend(fontsize="small")
    ax.set_ylim(bottom, top)
    notes = [
        *(["stopped at divergence"] if result.stopped_early else []),
        *([] if np.isfinite(result.steepest_lr) else ["no descent: no suggestion"]),
    ]
    ax.set_title("LR range test" + (f" ({'; '.join(notes)})" if notes else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def finish(
    controller: LRRangeController,
    batches: int,
    run_dir: str | None = None,
    spell: Callable[[str], str] = "--{}".format,
) -> LRFindResult:
    """The result of a range test that ran `batches` batches under `controller`: the
    curve read from its buffers (one host read), the four suggestions, the plot
    (`<run_dir>/lr_find.png`, when there is a run directory). Raises `NoDescentError`
    (with the curve) when the curve has no descent; `spell` names the arguments in its
    message."""
    lrs = controller.lrs.numpy()[:batches]
    smoothed = controller.smoothed.numpy()[:batches]
    losses = controller.losses.numpy()[:batches]
    stopped = bool(controller.diverged.numpy())
    png = None if run_dir is None else os.path.join(run_dir, "lr_find.png")
    problem = check_descent(lrs, smoothed, controller.diverge_factor, spell)
    if problem is not None:
        nan = float("nan")
        result = LRFindResult(run_dir, lrs, smoothed, stopped, nan, nan, batch_losses=losses)
        if png:
            plot(result, png)
        where = f"\nplot: {png}" if png else ""
        raise NoDescentError(f"lr-find: no LR to suggest: {problem}{where}", result)
    found = suggest_all(lrs, smoothed, controller.num_steps, controller.diverge_factor)
    result = LRFindResult(
        run_dir,
        lrs,
        smoothed,
        stopped,
        found["steepest"],
        found["min10"],
        found["valley"],
        found["slide"],
        batch_losses=losses,
    )
    if png:
        plot(result, png)
    return result


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
