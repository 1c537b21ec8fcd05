"""`data.BatchSampler`'s exact batches in a loop compiled with XLA.

XLA has no kernel for `StatelessShuffle`, the op that draws each epoch's permutation.
`AheadSampler` draws the permutations of the next few epochs *ahead*, between compiled
calls (`refill`, ordinary TF ops, no host read), into a variable of `slots` rows; inside
the compiled loop a batch is then a row lookup, a slice and a gather, all of which
XLA compiles. The batches are identical to `BatchSampler`'s (same permutation per
`(seed, epoch)`, same position rule), so a run with `Trainer.jit_compile` sees the
same data in the same order, and the sampler's checkpointed state (`epoch`,
`position`) is the same two variables.
"""

from __future__ import annotations

import tensorflow as tf

from lrresearch.workloads.data import BatchSampler


class AheadSampler(tf.Module):
    """Draws `sampler`'s batches from permutations computed ahead of a compiled call.

    Slot `s` holds the permutation of the epoch `e` with `e mod slots == s`; `refill()`
    makes the slots hold epochs `epoch .. epoch + slots - 1`. A call of at most
    `batches_per_call` batches crosses at most `batches_per_call // batches_per_epoch
    + 1` epoch boundaries, so `slots` is that plus one.

    Args:
      sampler: the trainer's `BatchSampler` (its variables are the state).
      batches_per_call: the most batches one compiled call draws.
    """

    def __init__(self, sampler: BatchSampler, batches_per_call: int):
        super().__init__(name="ahead_sampler")
        self.sampler = sampler
        per_epoch = sampler.num_examples // sampler.batch_size
        self.slots = batches_per_call // per_epoch + 2
        self._orders = tf.Variable(
            tf.zeros([self.slots, sampler.num_examples], tf.int64), trainable=False, name="orders"
        )
        self._held = tf.Variable(tf.fill([self.slots], tf.constant(-1, tf.int64)), trainable=False)
        self.refill = tf.function(self._refill)

    def _refill(self) -> None:
        """Recomputes the slots whose epoch is not among the next `slots` (not XLA)."""
        epoch = self.sampler.epoch.read_value()
        for slot in range(self.slots):
            want = epoch + tf.math.floormod(slot - epoch, self.slots)

            def recompute(slot: int = slot, want: tf.Tensor = want) -> tf.Tensor:
                self._orders[slot].assign(self.sampler._permutation(want))
                self._held[slot].assign(want)
                return tf.constant(True)

            tf.cond(self._held[slot] != want, recompute, lambda: tf.constant(False))

    def next(self) -> tuple[tf.Tensor, tf.Tensor]:
        """The next `(x [batch, ...], y [batch])`, as `BatchSampler.next` draws it."""
        s = self.sampler
        new_epoch = s.position + s.batch_size > s.num_examples
        epoch = s.epoch + tf.cast(new_epoch, tf.int64)
        order = tf.gather(self._orders, tf.math.floormod(epoch, self.slots))
        start = tf.where(new_epoch, tf.constant(0, tf.int64), s.position)
        s.epoch.assign(epoch)
        s.position.assign(start + s.batch_size)
        # A gather, not `tf.slice`: XLA would compile the loop again for every start.
        idx = tf.gather(order, start + tf.range(s.batch_size, dtype=tf.int64))
        return tf.gather(s._x, idx), tf.gather(s._y, idx)
