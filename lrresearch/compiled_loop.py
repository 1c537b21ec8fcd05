"""The trainer's compiled loop: up to `capacity` batches per call, the per-batch log
stacked on the device, optionally compiled with XLA.

`build(trainer, periodic, capacity, log)` returns the `tf.function` `loop(num_steps)`
that `Trainer.loop_for` caches. Its first batch computes the `periodic` summary groups
(they are due on it); every batch's row of logged values goes into `TensorArray`s
(`lrresearch.batch_log`), so the loop body holds no summary op and no host transfer.
`block(loop, result)` turns a call's outputs into the `batch_log.Block` the writer
thread writes.

XLA (`Trainer.jit_compile`): with in-memory data (`inputs.ArrayInput`, whose sampler
is plain TF ops once each epoch's permutation is drawn ahead, `xla_sampler`) the whole
loop is one XLA computation. A `tf.data` iterator's
`GetNext` cannot be compiled, so with `tf.data` input each batch's step (everything
after the input) is compiled instead, inside the ordinary loop.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from lrresearch import batch_log, summaries
from lrresearch.inputs import ArrayInput
from lrresearch.xla_sampler import AheadSampler


def whole_loop_compiles(trainer: Any) -> bool:
    """Whether `Trainer.jit_compile` compiles the whole loop (in-memory input) rather
    than each batch's step (`tf.data` input)."""
    return isinstance(trainer.inputs.train, ArrayInput)


def build(trainer: Any, periodic: frozenset[str], capacity: int, log: bool) -> Any:
    """The compiled loop (see the module docstring); `loop.layout` holds the block's
    `(scalar tags, histogram tags)` once it has been traced."""
    jit = getattr(trainer, "jit_compile", False)
    whole = jit and whole_loop_compiles(trainer)
    step = trainer.train_step
    if jit and not whole:
        step = tf.function(trainer.train_step, jit_compile=True)
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
            for _ in tf.range(num_steps - 1):
                x, y = next_batch()
                loss, _, _ = step(x, y, frozenset(), False)
            return loss
        tags = layout["tags"] = batch_log.split_row(row)
        arrays = batch_log.write_row(batch_log.new_arrays(row, capacity), 0, row, tags)
        for i in tf.range(1, tf.cast(num_steps, tf.int32)):
            x, y = next_batch()
            loss, row, _ = step(x, y, frozenset(), True)
            arrays = batch_log.write_row(arrays, i, row, tags)
        scalars, histograms = batch_log.stack_arrays(arrays)
        # Static shapes (capacity rows), so XLA compiles the loop once for every n.
        steps = first_step + tf.range(capacity, dtype=tf.int64)
        return loss, steps, scalars, histograms, first

    compiled = tf.function(loop, jit_compile=True) if whole else tf.function(loop)
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
