"""What the outer loop knows of a trainer: a small `typing.Protocol`.

`outer_loop` (and `resume`, which it calls) use a trainer only through these members:
it reads them and calls the methods, and never writes an attribute. `Trainer` is one
such trainer; a test (or another host of the step) can be another. `resume` also
uses two optional extras when a trainer has them (`getattr`): `inputs.train.cache_files`
(a `tf.data` cache lock to clear) and `run_length_bindings` (a schedule stretched by a
changed `Trainer.steps`, warned about). This module sits below both, so neither
imports the other for the type.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from lrresearch.controllers import Controller
    from lrresearch.logs.rows import BlockWriter
    from lrresearch.step.guard import NonFiniteGuard
    from lrresearch.training.cadences import Cadences


class RunnableTrainer(Protocol):
    """A trainer the outer loop can run (`outer_loop.fit`).

    Attributes (read only):
      cadences: when calls stop and what is due after them.
      keep_checkpoints: how many checkpoints the run keeps.
      checkpoint: everything a checkpoint saves and a resume restores.
      step: the global batch index (int64 variable; read between calls only).
      strategy: the `tf.distribute` strategy, or None (one device).
      controller: the per-batch LR controller (its warnings, the run's name).
      optimizer: the built optimizer (its class names the run; its own step size).
      guard: the non-finite guard (when to stop, how far it scaled the LR).
      metrics: the evaluation's metrics (the progress line shows accuracy if any).
    """

    cadences: Cadences
    keep_checkpoints: int
    checkpoint: tf.train.Checkpoint
    step: tf.Variable
    strategy: tf.distribute.Strategy | None
    controller: Controller
    optimizer: keras.optimizers.Optimizer
    guard: NonFiniteGuard
    metrics: Sequence[keras.metrics.Metric]

    def build(self) -> None:
        """Creates everything the run needs (idempotent)."""

    def session(
        self, first_step: int, writer: tf.summary.SummaryWriter | None
    ) -> contextlib.AbstractContextManager[BlockWriter | None]:
        """A context in which `run_steps` trains from batch `first_step`, logging
        every batch to `writer` (None: no logging); yields the block writer."""

    def run_steps(self, num_steps: int) -> tf.Tensor:
        """Trains `num_steps` batches; returns the last batch's loss (a tensor)."""

    def evaluation(self) -> dict[str, float] | None:
        """The held-out loss and metrics (a host read); None without eval data."""

    def eval_weights(self) -> contextlib.AbstractContextManager[None]:
        """A context in which the model holds the weights to evaluate and save."""

    def after_restore(self) -> None:
        """Called once a checkpoint has been restored into the trainer."""

    def hparams(self) -> dict[str, bool | int | float | str]:
        """The run's HParams (the run header)."""

    def current_lr(self) -> float:
        """The LR applied to the latest batch (a host read)."""
