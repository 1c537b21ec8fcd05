"""The trainer's compiled loop: up to `capacity` batches per call, the per-batch log
stacked on the device, optionally compiled with XLA.

`build(trainer, periodic, capacity, log)` returns the `tf.function` `loop(num_steps)`
that `Trainer.loop_for` caches. Its first batch computes the `periodic` summary groups
(they are due on it); every batch's row of logged values goes into `TensorArray`s
(`lrresearch.logs.rows`), so the loop body holds no summary op and no host transfer.
`block(loop, result)` turns a call's outputs into the `rows.Block` the writer
thread writes.

XLA (`Trainer.jit_compile`): with in-memory data (`inputs.ArrayInput`, whose sampler
is plain TF ops once each epoch's permutation is drawn ahead, `xla_sampler`) the whole
loop is one XLA computation. A `tf.data` iterator's
`GetNext` cannot be compiled, so with `tf.data` input each batch's step (everything
after the input) is compiled instead, inside the ordinary loop.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

from lrresearch.logs import rows as batch_log
from lrresearch.logs import summaries
from lrresearch.workloads.inputs import ArrayInput
from lrresearch.workloads.xla_sampler import AheadSampler


def whole_loop_compiles(trainer: Any) -> bool:
    """Whether `Trainer.jit_compile` compiles the whole loop (in-memory input) rather
    than each batch's step (`tf.data` input)."""
    return isinstance(trainer.inputs.train, ArrayInput)


# Bytes one logged float32 value of a batch's row holds while its block is in flight:
# the device buffer (4) and its stacked copy (4), the writer's host copy (4), and the
# encoded event (~30: tag, field keys, value) with its copy into a string tensor.
BYTES_PER_LOGGED_VALUE = 80
# A call's buffers may take at most this share of the machine's memory.
MEMORY_SHARE = 0.5


def call_capacity(trainer: Any) -> int:
    """The most batches one compiled call of `trainer` can run, which sizes its
    per-call buffers: `trainer.cadences.capacity` (`Trainer.steps_per_loop`, bounded by
    `Trainer.steps` and by every cadence a call stops at). Fixed per trainer, so the
    loop is traced once (`n` varies, the capacity does not). Raises `ValueError`
    naming `Trainer.steps_per_loop` when the buffers of such a call cannot fit in half
    of this machine's memory.
    """
    capacity = trainer.cadences.capacity
    row = _row_bytes(trainer)
    if whole_loop_compiles(trainer) and getattr(trainer, "jit_compile", False):
        sampler = trainer.inputs.train.sampler  # `AheadSampler`'s epochs drawn ahead
        per_epoch = max(sampler.num_examples // sampler.batch_size, 1)
        row += 8 * sampler.num_examples / per_epoch
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if capacity * row > MEMORY_SHARE * total:
        fits = int(MEMORY_SHARE * total // row)
        raise ValueError(
            f"Trainer.steps_per_loop must be at most {fits:,} for this run, got "
            f"{trainer.steps_per_loop:,}: a compiled call of {capacity:,} batches buffers "
            f"~{row:,.0f} bytes per batch (its logged values, on the device and on their "
            f"way to the event file), {capacity * row / 2**30:,.1f} GiB, more than "
            f"{MEMORY_SHARE:.0%} of this machine's {total / 2**30:,.1f} GiB. Lower "
            "Trainer.steps_per_loop (default 100), or set a cadence that ends calls "
            "sooner (Trainer.log_every, say)"
        )
    return capacity


def _row_bytes(trainer: Any) -> float:
    """A lower bound of what one batch's row holds in flight (`BYTES_PER_LOGGED_VALUE`
    per value): the fixed per-batch tags, plus the per-variable groups due every batch
    (a histogram is `summaries.HISTOGRAM_BUCKETS` x 3 float64 values)."""
    every_step = trainer.cadences.every_step_groups
    values = 8 + 2 * len(trainer.variables) * ("grad_norms" in every_step)
    if "histograms" in every_step:
        values += 2 * len(trainer.variables) * summaries.HISTOGRAM_BUCKETS * 3 * 2
    return float(values * BYTES_PER_LOGGED_VALUE + 8)  # + the row's int64 step


def build(trainer: Any, periodic: frozenset[str], capacity: int, log: bool) -> Any:
    """The compiled loop (see the module docstring); `loop.layout` holds the block's
    `(scalar tags, histogram tags)` once it has been traced."""
    jit = getattr(trainer, "jit_compile", False)
    whole = jit and whole_loop_compiles(trainer)
    step = trainer.train_step
    if jit and not whole:
        step = tf.function(trainer.train_step, jit_compile=True, autograph=False)
    layout: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    next_batch, prepare = trainer.inputs.train.next, None
    if whole:  # the epochs' permutations are drawn ahead, outside XLA
        ahead = AheadSampler(trainer.inputs.train.sampler, capacity)
        next_batch, prepare = ahead.next, ahead.refill

    def loop(num_steps: tf.Tensor) -> Any:
        first_step = trainer.step.read_value()
        x, y = next_batch()
        loss, row, first = step(x, y, periodic, log)
        if not log:

            def plain(i: tf.Tensor, loss: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                x, y = next_batch()
                return i + 1, step(x, y, frozenset(), False)[0]

            return tf.while_loop(
                lambda i, _: i < num_steps, plain, (tf.constant(1, tf.int64), loss)
            )[1]
        tags = layout["tags"] = batch_log.split_row(row)
        arrays = batch_log.write_row(batch_log.new_arrays(row, capacity), 0, row, tags)

        def logged(i: tf.Tensor, loss: tf.Tensor, arrays: tuple) -> tuple:
            x, y = next_batch()
            loss, row, _ = step(x, y, frozenset(), True)
            return i + 1, loss, batch_log.write_row(arrays, i, row, tags)

        n = tf.cast(num_steps, tf.int32)
        _, loss, arrays = tf.while_loop(
            lambda i, *_: i < n, logged, (tf.constant(1), loss, arrays), maximum_iterations=capacity
        )
        scalars, histograms = batch_log.stack_arrays(arrays)
        # Static shapes (capacity rows), so XLA compiles the loop once for every n.
        steps = first_step + tf.range(capacity, dtype=tf.int64)
        return loss, steps, scalars, histograms, first

    # Everything traced here is graph code already (`tf.while_loop`, `tf.cond`, no
    # Python `if` on a tensor, CONTRIBUTING.md): AutoGraph's source conversion of every
    # function the step calls was most of the first call (~4.7 s of 7.7 s measured,
    # `tools/bench_first_call.py`).
    options = {"jit_compile": True} if whole else {}
    compiled = tf.function(loop, autograph=False, **options)
    compiled.layout = layout
    compiled.prepare = prepare  # to call before each call (None: nothing to do)
    return compiled


def block(loop: Any, result: tuple, count: int) -> batch_log.Block:
    """The `Block` of one call of `count` batches (`loop` as `build` returned it,
    traced; `result` its outputs)."""
    _, steps, scalars, histograms, first = result
    scalar_tags, histogram_tags = loop.layout["tags"]
    return batch_log.Block(count, steps, scalar_tags, scalars, histogram_tags, histograms, first)


def periodic_values(
    names: list[str],
    variables: list[tf.Variable],
    grads: list[tf.Tensor],
    groups: frozenset[str],
    before: list[tf.Tensor],
) -> dict[str, tf.Tensor]:
    """`{tag: value}` of the periodic `groups` of one batch: "grad_norms" (scalars
    `grad/norm/<name>`, `update/ratio/<name>`) and "histograms" (`grad/<name>`,
    `weights/<name>` as `summaries.histogram_buckets`). `names` are the variables' tag
    names; `before` holds the weights before this batch's update when "grad_norms" is
    among the groups."""
    values: dict[str, tf.Tensor] = {}
    if "grad_norms" in groups:
        for name, g in zip(names, grads, strict=True):
            values[f"grad/norm/{name}"] = tf.norm(tf.cast(g, tf.float32))
        for name, v, w in zip(names, variables, before, strict=True):
            values[f"update/ratio/{name}"] = summaries.update_ratio(w, v.value)
    if "histograms" in groups:
        for name, g, v in zip(names, grads, variables, strict=True):
            values[f"grad/{name}"] = summaries.histogram_buckets(g)
            values[f"weights/{name}"] = summaries.histogram_buckets(v.value)
    return values
