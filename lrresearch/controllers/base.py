"""The controller contract: a per-batch LR strategy as a small `tf.Module`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import tensorflow as tf

from lrresearch.signals import Signals


class ControllerOutput(NamedTuple):
    """The LR for this batch and the controller's own signals.

    Attributes:
      lr: float32 scalar, the LR to apply to this batch.
      diagnostics: float32 scalars logged as `controller/<name>` every batch, so a reader
        sees *why* the LR moved (e.g. the loss trend, the schedule and the factor).
    """

    lr: tf.Tensor
    diagnostics: Mapping[str, tf.Tensor]


class Controller(tf.Module):
    """Base class of per-batch LR strategies.

    A controller is called once per batch, inside the compiled train step, after the
    batch's loss and gradients are known and before the update is applied. It reads
    `Signals`, may update its own `tf.Variable` state (so `tf.train.Checkpoint` saves
    it) and returns the LR for this batch. Subclasses implement `compute` with TF ops
    only: no `.numpy()`, no Python `if` on a tensor. Controllers also work eagerly,
    which is how the tests and notebooks drive them.

    Attributes:
      initial_lr: the LR the optimizer is created with (Python float); it is what
        `Signals.lr` holds at step 0.
    """

    initial_lr: float
    # False for wrappers that need other controllers and for factors that are not LRs;
    # `lrresearch profile` compares the standalone ones by default.
    standalone: bool = True

    def build(self, variables: Sequence[tf.Variable]) -> None:
        """Called once by the trainer with the model's trainable variables, before the
        step is traced (for rules that watch the weights); a no-op by default."""
        del variables

    def compute(self, signals: Signals) -> ControllerOutput:
        """Returns this batch's LR and diagnostics; may update the controller's state."""
        raise NotImplementedError

    def __call__(self, signals: Signals) -> tf.Tensor:
        """Returns this batch's LR (float32 scalar)."""
        return self.compute(signals).lr


def check_positive(owner: str, **values: float) -> None:
    """Raises ValueError naming `owner.arg` unless every value is a finite number > 0."""
    for name, value in values.items():
        check_number(owner, name, value)
        if not value > 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {value!r}")


def check_number(owner: str, name: str, value: object) -> None:
    """Raises ValueError naming `owner.name` unless `value` is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be a finite number, got {value!r}")


def check_int(owner: str, name: str, value: object, minimum: int) -> None:
    """Raises ValueError naming `owner.name` unless `value` is an int >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name} must be an int >= {minimum}, got {value!r}")
