"""A run's scalar series read with TensorBoard's own loader (one point per step), the
LR it applied, and TensorBoard-like smoothing: what `compare`'s tables, plots and export
read."""

from __future__ import annotations

import dataclasses

import numpy as np
from tensorboard.backend.event_processing import event_accumulator as ea


@dataclasses.dataclass
class Series:
    steps: np.ndarray
    values: np.ndarray
    wall_times: np.ndarray


def load(run: str, duplicates: dict[str, np.ndarray] | None = None) -> dict[str, Series]:
    """Every scalar series of `run`, one point per step, in step order. A step logged
    more than once (a restart that did not trim the event files, as `--resume` does)
    keeps the value written last, the restarted run's; `duplicates` (if given) gets,
    per such tag, the steps that were logged more than once."""
    import tensorflow as tf

    acc = ea.EventAccumulator(run, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        events = acc.Tensors(tag)
        steps = np.array([e.step for e in events], dtype=np.int64)
        # The last event of each step: unique over the reversed order, then step order.
        _, last = np.unique(steps[::-1], return_index=True)
        keep = len(steps) - 1 - last
        if len(keep) < len(steps) and duplicates is not None:
            counts = np.bincount(np.searchsorted(steps[keep], steps), minlength=len(keep))
            duplicates[tag] = steps[keep][counts > 1]
        out[tag] = Series(
            steps[keep],
            np.array([float(tf.make_ndarray(events[i].tensor_proto)) for i in keep]),
            np.array([events[i].wall_time for i in keep]),
        )
    return out


def duplicate_warning(run: str, duplicates: dict[str, np.ndarray]) -> str:
    """One line: the run, the tag (`lr` first) and steps logged more than once, the
    value used, and the fix."""
    tag = "lr" if "lr" in duplicates else sorted(duplicates)[0]
    steps = duplicates[tag]
    others = f" (and {len(duplicates) - 1} other tags alike)" if len(duplicates) > 1 else ""
    return (
        f"warning: {run}: `{tag}` has {len(steps)} steps logged more than once (steps "
        f"{steps[0]}..{steps[-1]}){others}: a run restarted from a save without trimming "
        "its event files; compared with the value logged last at each step (restart with "
        "`lrresearch train --resume`, or Keras's PerBatchSummaries(logdir, resume=True), "
        "which trim them)"
    )


def smooth(values: np.ndarray, beta: float = 0.98) -> np.ndarray:
    """Bias-corrected EMA (TensorBoard-like smoothing), NaN-tolerant."""
    out, ema, n = np.empty(len(values)), 0.0, 0
    for i, v in enumerate(values):
        if np.isfinite(v):
            n += 1
            ema = beta * ema + (1 - beta) * v
        out[i] = ema / (1 - beta**n) if n else np.nan
    return out


# The LR a run applied: the step an optimizer with its own step size logs (its `lr` is
# a multiplier of it), else the `lr` tag.
LR_TAGS = ("optimizer/effective_lr", "lr")


def applied_lr(series: dict[str, Series]) -> tuple[str, Series]:
    """The tag and series of the LR the run applied (`LR_TAGS`' first present)."""
    tag = next(t for t in LR_TAGS if t in series)
    return tag, series[tag]
