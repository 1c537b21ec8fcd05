"""The x axis of `compare`'s curves (`--x`): steps, examples seen, or wall time.

- `steps`: the global batch index (TensorBoard's step).
- `examples`: (step + 1) x the run's global batch size, the examples trained on once the
  batch is applied, read from `Trainer.batch_size` in its `config.gin` (the operative
  config records the default too, so every run the Trainer trained has it).
- `time`: seconds since the run's first event. A resumed run (one event file per process)
  does not count the time it was stopped: the gap between the last event before a new
  event file starts and that file's first record (the resumed process opening its writer)
  is removed. The resumed process's start-up after that (tracing the step) is counted,
  as it is part of what the run cost.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence

import numpy as np
from tensorboard.compat.proto import event_pb2

from lrresearch.analysis.bindings import BATCH_SIZE_BINDING, RunConfig, batch_size

X_KINDS = ("steps", "examples", "time")
X_LABELS = {
    "steps": "batch (step)",
    "examples": "examples seen (steps x batch size)",
    "time": "wall time (s since the run's first event, stops excluded)",
}


@dataclasses.dataclass(frozen=True)
class XAxis:
    """How one run's steps map to the x axis.

    Attributes:
      kind: one of `X_KINDS`.
      batch_size: examples per step (`examples`).
      origin: (`time`) the run's first wall time, seconds since the epoch.
      starts: (`time`) per event file after the first, (its first record's wall time,
        seconds the run was stopped before it); each gap is removed from later points.
    """

    kind: str
    batch_size: int | None = None
    origin: float = 0.0
    starts: tuple[tuple[float, float], ...] = ()

    def of(self, series) -> np.ndarray:
        """x of each point of a `compare.Series` (steps, wall_times), float64."""
        if self.kind == "steps":
            return series.steps.astype(np.float64)
        if self.kind == "examples":
            return (series.steps + 1).astype(np.float64) * self.batch_size
        times = series.wall_times - self.origin
        for start, gap in self.starts:
            times = np.where(series.wall_times >= start, times - gap, times)
        return times


def x_axis(kind: str, run: str, config: RunConfig, data: dict) -> XAxis:
    """The run's `XAxis`; ValueError naming the run if `examples` lacks a batch size."""
    if kind == "steps":
        return XAxis(kind)
    if kind == "examples":
        size = batch_size(config)
        if size is None:
            raise ValueError(
                f"compare --x=examples: {run} has no {BATCH_SIZE_BINDING} in its config.gin "
                f"({config.problem or 'not bound to a number'}); use --x=steps or --x=time"
            )
        return XAxis(kind, batch_size=size)
    times = np.concatenate([s.wall_times for s in data.values()])
    starts = []
    for start in _file_starts(run)[1:]:
        before = times[times < start]
        if len(before):
            starts.append((start, float(start - before.max())))
    return XAxis(kind, origin=float(times.min()), starts=tuple(starts))


def _file_starts(run: str) -> list[float]:
    """The wall time of the first record of each event file (one per process)."""
    from lrresearch.logs import event_files  # loads TensorFlow: not for `--help`

    starts = []
    for path in event_files.event_files(run):
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12:
                continue
            (length,) = struct.unpack("<Q", head[:8])
            data = f.read(length)
        try:
            starts.append(event_pb2.Event.FromString(data).wall_time)
        except Exception:  # a damaged first record: compare reports damage elsewhere
            continue
    return sorted(starts)


def x_axes(kind: str, runs: Sequence[str], configs: Sequence[RunConfig], data) -> list[XAxis]:
    return [x_axis(kind, r, c, d) for r, c, d in zip(runs, configs, data, strict=True)]
