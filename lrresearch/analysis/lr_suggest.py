"""LR suggestions from an LR range test's curve: ours (steepest descent, a tenth of the
minimum) and fastai's (`valley`, `slide`), on numpy arrays of LRs and losses.

`tools/check_fastai_suggestions.py` checks `valley` and `slide` against fastai's own
functions on the same curves.
"""

from __future__ import annotations

import numpy as np


def suggest(lrs: np.ndarray, smoothed: np.ndarray, skip_start: float = 0.1) -> tuple[float, float]:
    """(steepest, min/10).

    steepest: the LR where the smoothed loss falls fastest per unit of log(lr), looking
    only between the first `skip_start` of the points (the warm-up noise) and the
    smoothed loss's minimum (past it the loss is diverging and its wiggles are not
    descent). min/10: a tenth of the LR at the smoothed loss's minimum. Both differ
    from fastai's `steep` and `minimum`, which look at the whole trimmed window (see
    `fastai_window`); `tools/check_fastai_suggestions.py` prints both.
    """
    keep = np.isfinite(smoothed)
    lrs, smoothed = lrs[keep], smoothed[keep]
    if len(lrs) < 5:
        raise ValueError("lr_find: fewer than 5 finite points; lower start_lr or raise num_steps")
    lowest = int(np.argmin(smoothed))
    start = min(int(len(lrs) * skip_start), max(lowest - 2, 0))
    stop = max(lowest + 1, start + 3)
    window_lrs, window_loss = lrs[start:stop], smoothed[start:stop]
    slope = np.gradient(window_loss, np.log(window_lrs))
    steepest = float(window_lrs[int(np.argmin(slope))])
    return steepest, float(lrs[lowest] / 10.0)


def valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's `valley` (its default suggestion): about halfway down the longest valley.

    `length[i]`: the length of the longest strictly decreasing subsequence of `losses`
    ending at point `i` (not necessarily contiguous). The valley ends at the first point
    with the largest length, `end`, and starts at `start = end - length[end]` (one point
    before the subsequence could begin, as fastai's loop has it; `start = end = 0` when
    nothing decreases). The suggestion is the LR at
    `start + int(length / 3) + int(length / 6)` with `length = end - start`: about
    halfway down, not two thirds. fastai's O(n^2) double loop, with the inner loop in
    numpy. Expects the trimmed, finite window (`fastai_window`).

    References:
      fastai `fastai/callback/schedule.py`, `valley` (fastai 2.8).
    """
    losses = np.asarray(losses)
    length = np.ones(len(losses), dtype=np.int64)
    for i in range(1, len(losses)):
        longer = losses[:i] > losses[i]
        if longer.any():
            length[i] = length[:i][longer].max() + 1
    end = int(np.argmax(length))  # the first maximum, as fastai's strict `<` keeps it
    start = end - int(length[end]) if length[end] > 1 else 0
    sections = (end - start) / 3
    return float(lrs[start + int(sections) + int(sections / 2)])


def slide(
    lrs: np.ndarray,
    losses: np.ndarray,
    lr_diff: int = 15,
    thresh: float = 0.005,
    adjust_value: float = 1.0,
) -> float:
    """fastai's `slide`: slide an interval `lr_diff` points wide from the end of the
    curve towards its start while the loss's slopes (per point, `np.gradient`) at its
    two ends differ by more than `thresh` (absolute loss units); suggest the LR at the
    interval's left end where they first agree, times `adjust_value`. `thresh` is in
    the loss's own units, so the result depends on the loss's scale.

    References:
      fastai `fastai/callback/schedule.py`, `slide` (fastai 2.8).
    """
    losses = np.asarray(losses)
    if len(losses) < lr_diff + 1:
        raise ValueError(
            f"lr_find: slide needs more than lr_diff={lr_diff} points, got {len(losses)}"
        )
    grad = np.gradient(losses)
    right, left = -1, -1 - lr_diff
    local_min_lr = lrs[left]
    while left >= -len(losses) and abs(grad[right] - grad[left]) > thresh:
        local_min_lr = lrs[left]
        right, left = right - 1, left - 1
    return float(local_min_lr) * adjust_value


def fastai_window(
    lrs: np.ndarray, smoothed: np.ndarray, num_steps: int, diverge_factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """The part of the curve fastai's `Learner.lr_find` suggests from: the curve up to
    and including the batch where it diverged (fastai stops there; our compiled blocks
    may run a few batches past it), without its first `num_steps // 10` and last 5
    points, cut before its first NaN."""
    diverged = divergence_index(smoothed, diverge_factor)
    end = len(smoothed) if diverged is None else diverged + 1
    lrs, smoothed = lrs[:end][num_steps // 10 : -5], smoothed[:end][num_steps // 10 : -5]
    nans = np.flatnonzero(np.isnan(smoothed))
    cut = len(smoothed) if len(nans) == 0 else int(nans[0])
    return lrs[:cut], smoothed[:cut]


def suggest_all(
    lrs: np.ndarray, smoothed: np.ndarray, num_steps: int, diverge_factor: float
) -> dict[str, float]:
    """All four suggestions by name (`SUGGESTIONS`): ours on the whole curve, fastai's
    on `fastai_window`, as `Learner.lr_find` calls them (NaN where the window is too
    short for one)."""
    steepest, min10 = suggest(lrs, smoothed)
    window_lrs, window_loss = fastai_window(lrs, smoothed, num_steps, diverge_factor)
    nan = float("nan")
    return {
        "steepest": steepest,
        "min10": min10,
        "valley": valley(window_lrs, window_loss) if len(window_loss) else nan,
        "slide": slide(window_lrs, window_loss) if len(window_loss) > 15 else nan,
    }


# A curve "descends" if its smoothed minimum lies this fraction of the starting level
# below it, at least this many batches into the ramp. Measured (smoothing 0.98): a flat
# ramp (lr 1e-9..1e-7, imbalanced_loss_trend.gin) dips 1.0% by noise; a short real
# descent (digits, 60 batches, lr 1e-4..100; batch loss 2.39 -> 1.99) shows 4.0%, as
# the EMA lags; the README example 26%; a ramp that starts too high, blows up and
# recovers 0.2%. A loss that rises from the first batches has its minimum at batch 0-2.


def divergence_index(smoothed: np.ndarray, diverge_factor: float) -> int | None:
    """The first batch whose smoothed loss is not finite or exceeds `diverge_factor`
    times the minimum so far (the controller's test, in numpy), or None."""
    best = np.inf
    for i, value in enumerate(smoothed):
        if not np.isfinite(value) or value > diverge_factor * best:
            return i
        best = min(best, value)
    return None
