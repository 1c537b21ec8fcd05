"""The non-finite guard shared by the trainer and `ControlledModel`: a NaN/Inf batch is
skipped, later LRs are cut, and too many in a row stop the run. Its state is one
`tf.Module` with named variables, checkpointed as one entry."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from lrresearch.checks import check_int, check_number


class NonFiniteGuard(tf.Module):
    """Applies a batch's update only if its loss and gradient norm are finite.

    Per batch, in-graph (`finite = isfinite(loss) and isfinite(global_norm)`):

        if finite: apply_fn(); consecutive = 0
        else:      skipped += 1; consecutive += 1; lr_scale *= lr_factor
                   first_nonfinite_step = step if first_nonfinite_step < 0
                   (no update: the weights and the optimizer's slots and iteration
                   count stay those of the last good batch)

    The host multiplies every later LR by `lr_scale` (`step.set_lr(..., scale=...)`)
    and, between compiled calls, stops once `should_stop()` (`consecutive >=
    max_consecutive`, and at least one). Unlike optax's `apply_if_finite`, which gives
    up after `max_consecutive_errors` and applies the non-finite update, a NaN/Inf
    update is never applied here: the run stops instead.

    Variables (checkpointed; `checkpoint_items` gives the trainer's names):
      skipped: int64, batches skipped in all (logged as `guard/skipped`).
      consecutive: int64, non-finite batches in a row up to the latest one.
      lr_scale: float32, `lr_factor ** skipped`, the factor on every later LR.
      first_nonfinite_step: int64, the step of the first skipped batch, -1 before.

    Args:
      max_consecutive: stop after this many non-finite batches in a row (0 stops at
        the first, like 1).
      lr_factor: in (0, 1]; every skipped batch multiplies all later LRs by this.
      name: the module's name.
      owner: for errors, the host whose arguments these are: "Trainer" or
        "ControlledModel" name them `<owner>.max_consecutive_nonfinite` and
        `<owner>.nonfinite_lr_factor`; None names the guard's own.

    Example:

        guard = NonFiniteGuard(max_consecutive=3, lr_factor=0.5)
        lr, accepted, out = set_lr(controller, signals, lr_variable, guard.lr_scale)
        guard.apply_if_finite(step, loss, norm, lambda: optimizer.apply(grads, variables))
        ...  # between compiled calls:
        if guard.should_stop(): raise FloatingPointError(guard.stop_message(run_dir))

    References:
      google-deepmind/optax `optax/transforms/_conditionality.py`: `apply_if_finite`,
      `ApplyIfFiniteState`.
    """

    def __init__(
        self,
        max_consecutive: int = 10,
        lr_factor: float = 0.5,
        name: str = "guard",
        owner: str | None = None,
    ):
        super().__init__(name=name)
        if owner is None:
            who, names = "NonFiniteGuard", ("max_consecutive", "lr_factor")
        else:
            who, names = owner, ("max_consecutive_nonfinite", "nonfinite_lr_factor")
        check_int(who, names[0], max_consecutive, 0)
        check_number(who, names[1], lr_factor)
        if not 0 < lr_factor <= 1:
            raise ValueError(f"{who}.{names[1]} must be in (0, 1], got {lr_factor!r}")
        self.max_consecutive, self.lr_factor = max_consecutive, float(lr_factor)
        self.skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped")
        self.consecutive = tf.Variable(0, dtype=tf.int64, trainable=False, name="consecutive")
        self.lr_scale = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="lr_scale")
        self.first_nonfinite_step = tf.Variable(
            -1, dtype=tf.int64, trainable=False, name="first_nonfinite_step"
        )

    def apply_if_finite(
        self,
        step: tf.Tensor | int,
        loss: tf.Tensor,
        global_norm: tf.Tensor,
        apply_fn: Callable[[], Any],
    ) -> tf.Tensor:
        """Runs `apply_fn` (the update) only if `loss` and `global_norm` are finite,
        and updates the counters. TF ops only: works inside `tf.function`, a `tf.range`
        loop, and in the cross-replica context of a `tf.distribute` strategy (where a
        `tf.cond` may contain `merge_call`s; in a replica context it may not, so a
        replica-context host calls this from `merge_call`, as `ControlledModel` does).

        Args:
          step: the batch index (int), recorded as `first_nonfinite_step`.
          loss: the batch's loss (the global batch's, so all replicas agree).
          global_norm: the gradients' global norm, before any clipping.
          apply_fn: builds the update; called once while tracing, run only for a
            finite batch. Its return value is ignored.

        Returns:
          The finite flag: a bool scalar, True if the update was applied.
        """
        finite = tf.logical_and(
            tf.reduce_all(tf.math.is_finite(loss)), tf.reduce_all(tf.math.is_finite(global_norm))
        )

        def apply() -> tf.Tensor:
            apply_fn()
            return tf.constant(True)

        applied = tf.cond(finite, apply, lambda: tf.constant(False))
        bad = tf.cast(tf.logical_not(finite), tf.int64)
        self.skipped.assign_add(bad)
        self.consecutive.assign((self.consecutive + bad) * bad)
        self.lr_scale.assign(tf.where(finite, self.lr_scale, self.lr_scale * self.lr_factor))
        first = self.first_nonfinite_step
        first.assign(tf.where((first < 0) & ~finite, tf.cast(step, tf.int64), first))
        return applied

    def summaries(self) -> dict[str, tf.Tensor]:
        """The guard's per-batch scalar, read after this batch's `apply_if_finite`:
        `guard/skipped` (float32). The host adds `guard/lr_rejected` from `set_lr`."""
        return {"guard/skipped": tf.cast(self.skipped.read_value(), tf.float32)}

    def checkpoint_items(self) -> dict[str, tf.Variable]:
        """The variables under the root names of the trainer's `tf.train.Checkpoint`
        from before this module existed, so those checkpoints keep restoring:
        `tf.train.Checkpoint(..., **guard.checkpoint_items())`."""
        return {
            "guard_skipped": self.skipped,
            "guard_consecutive": self.consecutive,
            "guard_lr_scale": self.lr_scale,
            "guard_first_nonfinite_step": self.first_nonfinite_step,
        }

    def reset(self) -> None:
        """Back to the state of a run with no skipped batch."""
        self.skipped.assign(0)
        self.consecutive.assign(0)
        self.lr_scale.assign(1.0)
        self.first_nonfinite_step.assign(-1)

    # Host side, between compiled calls: a few scalar reads, never per batch in-graph.
    def should_stop(self) -> bool:
        """True once `max_consecutive` batches in a row (at least one) were skipped."""
        consecutive = int(self.consecutive.numpy())
        return consecutive > 0 and consecutive >= self.max_consecutive

    def stop_message(
        self, where: str | None, clip_setting: str = "Trainer.clip_norm"
    ) -> str | None:
        """Why the run must stop, or None if it need not (see `should_stop`).

        Args:
          where: the run directory (the last good state is in its `checkpoints/`, the
            summaries in it), or None for a host whose model keeps the last good
            weights in memory (`ControlledModel`).
          clip_setting: the setting that clips gradients on this host.
        """
        if not self.should_stop():
            return None
        if where is None:
            kept = "The model keeps the weights of the last good batch"
        else:
            kept = (
                f"The weights of the last good batch are in "
                f"{os.path.join(where, 'checkpoints')} and the summaries up to here in "
                f"{where}"
            )
        return (
            f"the loss or gradient norm became NaN/Inf at step "
            f"{int(self.first_nonfinite_step.numpy())}; {int(self.consecutive.numpy())} "
            f"batches in a row were NaN/Inf and skipped ({int(self.skipped.numpy())} in "
            f"all), so the run stopped. {kept}. Lower the LR (e.g. the controller's "
            f"max_lr/base_lr), set {clip_setting}, or check the data for NaN/Inf."
        )
