"""When a run's compiled calls stop, and what is due after each: one frozen object.

`Cadences` holds the `Trainer.*` cadence bindings (in batches) and answers, for both
loops, the two questions they ask between compiled calls:

* `next_boundary(step)`: the batch index where the call that starts at batch `step`
  stops (the outer loop, `outer_loop`); with `summaries_only`, where a call of
  `Trainer.run_steps` stops (the summary groups' cadences, `steps_per_loop`);
* `due(what, done)`: whether "eval", "checkpoint" or "log" is due once `done` batches
  are trained; `groups_due(step)`: the periodic summary groups the call that starts at
  `step` computes on its first batch.

`capacity` bounds every call (it sizes the compiled loop's buffers, traced once).
Pure Python: no TensorFlow, so it is tested against a brute-force enumeration.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

# The summary groups computed on a cadence inside the compiled step (`compiled_loop`).
GROUPS = ("grad_norms", "histograms")
Due = Literal["eval", "checkpoint", "log"]


@dataclasses.dataclass(frozen=True)
class Cadences:
    """A run's cadences, in batches (0 = off), resolved (no None).

    Attributes:
      steps: batches in the run (`Trainer.steps`, >= 1).
      steps_per_loop: batches per compiled call, at most (`Trainer.steps_per_loop`).
      eval_every: between evaluations (0: only at the end).
      checkpoint_every: between checkpoints (0: only at the end).
      log_every: between progress lines (0: only at the end).
      histogram_every: between `grad/`, `weights/` histograms (0: off, 1: every batch).
      grad_norm_every: between per-variable `grad/norm/` scalars (0: off, 1: every batch).
    """

    steps: int
    steps_per_loop: int
    eval_every: int
    checkpoint_every: int
    log_every: int
    histogram_every: int
    grad_norm_every: int

    @classmethod
    def resolve(
        cls,
        steps: int,
        steps_per_loop: int,
        eval_every: int,
        checkpoint_every: int,
        histogram_every: int,
        grad_norm_every: int | None = None,
        log_every: int | None = None,
    ) -> Cadences:
        """The cadences of `Trainer`'s arguments (checked by `arguments.validate`):
        `grad_norm_every` None is `histogram_every`, `log_every` None is about ten
        progress lines per run (`max(steps // 10, 1)`)."""
        return cls(
            steps=steps,
            steps_per_loop=steps_per_loop,
            eval_every=eval_every,
            checkpoint_every=checkpoint_every,
            log_every=max(steps // 10, 1) if log_every is None else log_every,
            histogram_every=histogram_every,
            grad_norm_every=histogram_every if grad_norm_every is None else grad_norm_every,
        )

    @property
    def periodic(self) -> dict[str, int]:
        """`{group: every}` of the summary groups due on some batches only (every > 1):
        each is computed by the first batch of a call, so calls stop at their cadence."""
        everys = dict(zip(GROUPS, (self.grad_norm_every, self.histogram_every), strict=True))
        return {group: every for group, every in everys.items() if every > 1}

    @property
    def every_step_groups(self) -> frozenset[str]:
        """The summary groups due on every batch (every == 1): part of every step."""
        everys = zip(GROUPS, (self.grad_norm_every, self.histogram_every), strict=True)
        return frozenset(group for group, every in everys if every == 1)

    def _run_cadences(self) -> tuple[int, ...]:
        return (self.eval_every, self.checkpoint_every, self.log_every)

    @property
    def capacity(self) -> int:
        """The most batches one call of the run can train: `steps_per_loop`, bounded by
        `steps` and by every cadence on (a call stops at each). It sizes the compiled
        loop's buffers, so it is fixed per trainer."""
        on = [c for c in (*self.periodic.values(), *self._run_cadences()) if c > 0]
        return min([self.steps_per_loop, self.steps, *on])

    def next_boundary(
        self,
        step: int,
        end: int | None = None,
        per_call: int | None = None,
        summaries_only: bool = False,
    ) -> int:
        """The batch index where the call that starts at batch `step` stops (it trains
        batches `step` .. boundary - 1): the first of `step + per_call` (default
        `steps_per_loop`), `end` (default `steps`) and the next multiple after `step`
        of every cadence on (the periodic summary groups', and unless `summaries_only`
        eval's, checkpoints' and progress lines'). `step` may be any batch, a resumed
        run's included; `step < end`."""
        cadences = [*self.periodic.values()]
        if not summaries_only:
            cadences += [c for c in self._run_cadences() if c > 0]
        per_call = self.steps_per_loop if per_call is None else per_call
        end = self.steps if end is None else end
        return min([step + per_call, end, *((step // c + 1) * c for c in cadences)])

    def groups_due(self, step: int) -> frozenset[str]:
        """The periodic summary groups due on batch `step` (the first of a call)."""
        return frozenset(group for group, every in self.periodic.items() if step % every == 0)

    def due(self, what: Due, done: int) -> bool:
        """Whether `what` ("eval", "checkpoint", "log") is due once `done` batches of the
        run are trained: at every multiple of its cadence, and at the end of the run."""
        everys = {"eval": self.eval_every, "checkpoint": self.checkpoint_every}
        everys["log"] = self.log_every
        if what not in everys:
            raise ValueError(f"Cadences.due: what must be eval, checkpoint or log, got {what!r}")
        every = everys[what]
        return done == self.steps or (every > 0 and done % every == 0)
