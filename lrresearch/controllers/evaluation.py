"""Controllers that watch an evaluation metric: what the host hands them, and when.

Evaluation runs on the host between compiled calls (`Trainer`: at `Trainer.eval_every`;
Keras `fit`: at each epoch's end). A controller that watches one of its values (a
`PlateauController` with `monitor = 'eval/accuracy'`) is an `EvaluationWatcher`: before
training the host checks that the run logs the value (`bind`, a one-screen error that
lists the names it does log), and after each evaluation it hands the new value over
(`observe`), which assigns a few of the controller's variables: the compiled step acts
on them at the next batch, so no batch reads the host. A composite controller's parts
are searched too (`watchers`), so `Warmup(PlateauController(...))` works.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import tensorflow as tf

# Where an evaluation's values are logged, by host: `eval/<name>` for the trainer,
# `val_<name>` in Keras `fit`'s epoch logs.
TRAINER_PREFIX, FIT_PREFIX = "eval/", "val_"


@runtime_checkable
class EvaluationWatcher(Protocol):
    """A controller that reads one value of each evaluation.

    Attributes:
      evaluation_name: the value it watches, as `evaluate` names it (`"loss"`,
        `"accuracy"`), or None when it watches none (then the host never calls it).
    """

    evaluation_name: str | None

    def bind_evaluation(
        self, available: Mapping[str, str | None], prefix: str, evaluations: int | None
    ) -> None:
        """Before training: raises ValueError if `evaluation_name` is not among
        `available` (name -> Keras's `_direction`, "up", "down" or None), whose values the
        host logs as `<prefix><name>`; `evaluations` is how many evaluations come
        before the run's last batch (None: unknown)."""

    def observe_evaluation(self, value: float) -> None:
        """After an evaluation: the new value (host-side; the next batch acts on it)."""


def watchers(controller: tf.Module) -> list[EvaluationWatcher]:
    """`controller` and its nested controllers that watch an evaluation value."""
    found = [controller, *controller.submodules]
    return [
        m for m in found
        if isinstance(m, EvaluationWatcher) and m.evaluation_name is not None
    ]  # fmt: skip


def bind(
    controller: tf.Module,
    available: Mapping[str, str | None],
    prefix: str = TRAINER_PREFIX,
    evaluations: int | None = None,
) -> None:
    """Checks every watcher of `controller` against the values the run logs
    (`EvaluationWatcher.bind_evaluation`); a no-op for a controller that watches none."""
    for watcher in watchers(controller):
        watcher.bind_evaluation(available, prefix, evaluations)


def observe(controller: tf.Module, evals: Mapping[str, float]) -> None:
    """Hands each watcher of `controller` its value of this evaluation (`{"loss": ...,
    "<metric>": ...}`, as `Trainer.evaluation` returns)."""
    for watcher in watchers(controller):
        name = watcher.evaluation_name
        if name in evals:
            watcher.observe_evaluation(float(evals[name]))


def directions(metrics: list) -> dict[str, str | None]:
    """`{"loss": "down", "<metric name>": "up" | "down" | None}` for Keras metric objects:
    the direction Keras's own `ReduceLROnPlateau(mode='auto')` reads (`_direction`)."""
    found: dict[str, str | None] = {"loss": "down"}
    for metric in metrics:
        found.setdefault(metric.name, getattr(metric, "_direction", None))
    return found
