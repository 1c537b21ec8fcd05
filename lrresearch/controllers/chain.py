"""`Chain`: controllers in turn, switched at step boundaries (optax's `join_schedules`)."""

from __future__ import annotations

from collections.abc import Sequence

import gin
import tensorflow as tf

from lrresearch.checks import check_int
from lrresearch.controllers.base import Controller, ControllerOutput
from lrresearch.controllers.compose import Composite, check_controller, nested
from lrresearch.controllers.signals import Signals


@gin.configurable
class Chain(Composite):
    """Controller `i` decides the LR from step `boundaries[i-1]` (0 for the first) up to
    `boundaries[i]`. Part `i` sees the step relative to its own start (as optax's
    `join_schedules`), clamped at 0 before it. Every part is called every batch, so a
    windowed rule has a full window when it takes over; its own LR state evolves
    meanwhile. Logs `part` (the active index) and each part's LR as `part<i>`.

    Args:
      controllers: the parts, in order.
      boundaries: `len(controllers) - 1` increasing steps (batches).

    Examples:
      Trainer.controller = @Chain()
      Chain.controllers = [@ConstantController(), @PlateauController()]
      Chain.boundaries = [300]                      # batches

    References:
      optax, `optax.schedules.join_schedules`
      (https://optax.readthedocs.io/en/latest/api/optimizer_schedules.html).
    """

    standalone = False

    def __init__(
        self,
        controllers: Sequence[Controller] = gin.REQUIRED,
        boundaries: Sequence[int] = gin.REQUIRED,
        name: str | None = None,
    ):
        super().__init__(name=name)
        controllers, boundaries = list(controllers), list(boundaries)
        if len(controllers) < 2:
            raise ValueError(f"Chain.controllers needs at least 2 controllers, got {controllers}")
        for i, c in enumerate(controllers):
            check_controller("Chain", f"controllers[{i}]", c)
        if len(boundaries) != len(controllers) - 1:
            raise ValueError(
                f"Chain.boundaries must have {len(controllers) - 1} steps (one fewer than "
                f"the controllers), got {boundaries}"
            )
        for b in boundaries:
            check_int("Chain", "boundaries", b, 1)
        if sorted(set(boundaries)) != boundaries:
            raise ValueError(f"Chain.boundaries must be strictly increasing, got {boundaries}")
        sets = [c.optimizer_hyperparameters for c in controllers]
        if any(s != sets[0] for s in sets):
            raise ValueError(
                f"Chain.controllers must all set the same optimizer hyperparameters besides "
                f"the LR (a part that does not would leave the last value in place), got "
                f"{[sorted(s) for s in sets]}; set cycle_momentum alike on every part"
            )
        self.parts, self.boundaries = controllers, boundaries
        self.initial_lr = controllers[0].initial_lr

    def build(self, variables: Sequence[tf.Variable]) -> None:
        for part in self.parts:
            part.build(variables)

    def _children(self) -> list[Controller]:
        return list(self.parts)

    def set_run_length(self, steps: int | None, span: str = "Trainer.steps") -> dict[str, int]:
        """Part `i` runs its own span (it sees the step from its start): to the next
        boundary, the last part to `steps`."""
        ends = [*self.boundaries, None if steps is None else max(steps, self.boundaries[-1] + 1)]
        starts = [0, *self.boundaries]
        spans = [None if b is None else b - a for a, b in zip(starts, ends, strict=True)]
        parts = zip(self.parts, spans, strict=True)
        named = [(p, n, f"Chain.controllers[{i}]'s span") for i, (p, n) in enumerate(parts)]
        return {k: v for part, n, name in named for k, v in part.set_run_length(n, name).items()}

    def run_warnings(self, steps: int | None) -> list[str]:
        """The parts' warnings (each sees the whole run: every part is called every
        batch), and a boundary at or beyond `steps`, after which nothing runs."""
        warnings = super().run_warnings(steps)
        for i, boundary in enumerate(self.boundaries):
            if steps is not None and boundary >= steps:
                warnings.append(
                    f"Chain.boundaries[{i}] = {boundary} is not reached in Trainer.steps = "
                    f"{steps} batches, so Chain.controllers[{i + 1}] never sets the LR; "
                    f"lower the boundary or raise Trainer.steps"
                )
                break
        return warnings

    def known_peak_lr(self) -> float | None:
        """The largest of its parts', when every part's is known."""
        peaks = [part.known_peak_lr() for part in self.parts]
        return None if None in peaks else max(peaks)

    def compute(self, signals: Signals) -> ControllerOutput:
        step = tf.cast(signals.step, tf.int64)
        starts = [0, *self.boundaries]
        lr = tf.constant(0.0)
        active = tf.constant(0.0)
        diagnostics: dict[str, tf.Tensor] = {}
        # The other optimizer hyperparameters, from the active part as the LR.
        others = {name: tf.constant(0.0) for name in self.optimizer_hyperparameters}
        for i, (part, start) in enumerate(zip(self.parts, starts, strict=True)):
            local = signals._replace(step=tf.maximum(step - start, 0))
            out = part.compute(local)
            here = step >= start
            lr = tf.where(here, tf.cast(out.lr, tf.float32), lr)
            for name in others:
                value = tf.cast(getattr(out, name), tf.float32)
                others[name] = tf.where(here, value, others[name])
            active = tf.where(here, float(i), active)
            diagnostics[f"part{i}"] = out.lr
            diagnostics.update(nested(f"part{i}", out.diagnostics))
        return ControllerOutput(lr, {"part": active, **diagnostics})._replace(**others)
