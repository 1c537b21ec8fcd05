"""The LR range test's curve, read: the suggestions, the check that the loss descended
at all, the result and its plot. Numpy and matplotlib on the curve a range test
recorded (`lrresearch.controllers.lr_range.LRRangeController`); nothing here trains.
The suggestion rules themselves are `lrresearch.analysis.lr_suggest`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from lrresearch.analysis.lr_suggest import divergence_index, suggest_all

if TYPE_CHECKING:
    import tensorflow as tf


class RangeTestCurve(Protocol):
    """What `finish` reads of a range test's controller (`LRRangeController`): its
    per-batch buffers `[num_steps]` (float32; the losses NaN where no batch ran), the
    divergence flag and the two settings the suggestions depend on."""

    lrs: tf.Variable
    losses: tf.Variable
    smoothed: tf.Variable
    diverged: tf.Variable
    num_steps: int
    diverge_factor: float


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
    controller: RangeTestCurve,
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
