"""The trainer's inner loop: compiled calls, split at the cadences, and their log.

`InnerLoop` is the part of `Trainer` that drives its compiled loops from Python:
`run_steps(n)` trains `n` batches in calls of at most `call_capacity` batches, each
call stopping where a periodic summary group is due (`Cadences.next_boundary`), and
hands each call's block of per-batch values to the writer thread (`logging_to`);
`session` is a run's stretch of it (`outer_loop`). The loops themselves are built by
`compiled_loop.build`, one per (summary groups, capacity, logging), each traced once.
As orbit's `StandardTrainer.train(num_steps)` owns its inner loop, the outer loop
(run directory, eval, checkpoints) stays outside.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from lrresearch.logs.rows import BlockWriter
from lrresearch.training import compiled_loop
from lrresearch.training.cadences import Cadences


class InnerLoop:
    """`Trainer`'s inner loop (a mixin: it uses the trainer's `cadences`, `call_capacity`
    and what `compiled_loop.build` reads of it).

    Attributes:
      log_to: where `run_steps` sends each call's block (None: no logging).
      next_step: the Python mirror of the trainer's step variable, so that the loop
        never reads it; the cadences count from it.
      loops: the compiled loops by (summary groups, capacity, logging).
    """

    cadences: Cadences
    call_capacity: int
    log_to: BlockWriter | None = None
    next_step: int = 0

    def loop_for(self, periodic: frozenset[str], capacity: int | None = None) -> Any:
        """The compiled loop whose first batch computes the `periodic` summary groups.

        `loop(num_steps)` trains `num_steps` (int64 scalar tensor, 1 <= num_steps <=
        `capacity`, default `call_capacity`) batches. Without a summary writer
        (`self.log_to` None) it returns the last batch's loss; with one, `(loss,
        steps [n], scalars [capacity, k], histograms or None, first)`, the block
        `lrresearch.logs.rows` writes. One `tf.function` per (group set, capacity,
        writer or not), each traced once. Periodic groups are not a `tf.cond` in every
        batch: a dozen conds (lowered to Switch/Merge inside the loop) cost ~85 us per
        batch on CPU even when nothing was written.
        """
        periodic = periodic - self.cadences.every_step_groups
        capacity = capacity or self.call_capacity
        key = (periodic, capacity, self.log_to is not None)
        if key not in self.loops:
            self.loops[key] = compiled_loop.build(self, periodic, capacity, key[2])
        return self.loops[key]

    def run_steps(self, num_steps: int, max_per_call: int | None = None) -> tf.Tensor:
        """Trains `num_steps` batches from the current step (Python loop, no host read).

        Calls compiled loops of at most `max_per_call` batches (default
        `call_capacity`), split so every periodic summary lands on its cadence
        (`Cadences.next_boundary`). With a summary writer (`log_to`), each call's block
        goes to it, written while the next call runs. Returns the last batch's loss (a
        tensor: reading it waits for the device).
        """
        limit = max_per_call or self.call_capacity
        loss = tf.constant(float("nan"))
        end = self.next_step + num_steps
        while self.next_step < end:
            step = self.next_step
            n = self.cadences.next_boundary(step, end, limit, summaries_only=True) - step
            loop = self.loop_for(self.cadences.groups_due(step), limit)
            if loop.prepare is not None:
                loop.prepare()
            started = time.time()
            result = loop(tf.constant(n, tf.int64))
            if self.log_to is None:
                loss = result
            else:
                loss = result[0]
                self.log_to.submit(compiled_loop.block(loop, result, n), started)
            self.next_step += n
        return loss

    @contextlib.contextmanager
    def logging_to(self, writer: tf.summary.SummaryWriter, background: bool = True):
        """Within the context, `run_steps` logs every batch to `writer` (a
        `logs.rows.BlockWriter` on a background thread; with `background=False`,
        each block is written before `run_steps` returns). On exit every block is
        written (not flushed: the writer's own cadence, or `writer.flush()`); a failing
        write is raised, unless the context is already ending on an error."""
        log = BlockWriter(writer, background)
        previous, self.log_to = self.log_to, log
        try:
            yield log
        except BaseException:
            with contextlib.suppress(tf.errors.OpError, OSError):  # the first error wins
                log.close()
            raise
        else:
            log.close()
        finally:
            self.log_to = previous

    @contextlib.contextmanager
    def session(
        self, first_step: int, writer: tf.summary.SummaryWriter | None
    ) -> Iterator[BlockWriter | None]:
        """A run's training (`outer_loop`): fresh compiled loops (a loop is traced per
        writer), `run_steps` counting the cadences from batch `first_step`, and every
        batch logged to `writer` as in `logging_to` (yields its `BlockWriter`; None
        and no logging without a writer)."""
        self.next_step = first_step
        with self.logging_to(writer) if writer is not None else contextlib.nullcontext() as log:
            self.reset_loops()
            yield log

    def reset_loops(self) -> None:
        """Drops the compiled loops (a run traces its own)."""
        self.loops: dict[tuple, Any] = {}
        self.train_loop = self.loop_for(frozenset())
