"""The training input and the eval data, from what `Trainer.dataset` returns.

`Trainer.dataset` is a function (or a value) giving one of:

- a `lrresearch.workloads.data.Dataset` of in-memory arrays (`@digits`, `@synthetic`,
  `@npz_file`): batches are drawn in-graph by `data.BatchSampler` (a few
  microseconds per batch; the position is two variables);
- a `tf.data.Dataset` of unbatched `(x, y)` examples, for training only;
- a pair `(train, eval)` of such datasets (`eval` finite, or None).

Who does what with a `tf.data` input: your pipeline reads, parses and (if you want)
shuffles examples, with a seed for exact reproduction; lrresearch repeats it, batches
it by `Trainer.batch_size` (dropping the last partial batch, so the step is traced
once), prefetches, and pulls `steps_per_loop` batches per compiled call from one
iterator. The iterator's position is checkpointed with the run (`tf.train.Checkpoint`
saves a `tf.data` iterator, shuffle buffers included), so `--resume` continues with
the very next batch. A pipeline whose state TensorFlow cannot save (`from_generator`,
`py_function`) is refused with the reason, before training.

What identifies the data beyond its gin bindings (a corpus read from this machine, a
file's version) can be recorded with every run: give the dataset function an `info`
attribute, a function of no arguments returning `{name: bool | int | float | str}`
(`stdlib_bytes.info = corpus_info`). The run's HParams then hold each value as
`dataset.<name>`, so two runs' data can be compared in the HParams dashboard.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from lrresearch.workloads import tf_data_cache
from lrresearch.workloads.data import BatchSampler, DataError, Dataset

DatasetSpec = Callable[[], Any] | Dataset | tf.data.Dataset


def _options() -> tf.data.Options:
    options = tf.data.Options()
    # Autotune can stall a short run's iterator teardown by seconds.
    options.autotune.enabled = False
    options.deterministic = True
    return options


@dataclasses.dataclass
class ArrayInput:
    """Batches drawn in-graph from in-memory arrays (`data.BatchSampler`)."""

    sampler: BatchSampler
    name: str

    def next(self) -> tuple[tf.Tensor, tf.Tensor]:
        return self.sampler.next()

    def checkpoint_items(self) -> dict[str, tf.Variable]:
        """Names as in checkpoints written before tf.data input existed."""
        return {"input_epoch": self.sampler.epoch, "input_position": self.sampler.position}

    def after_restore(self) -> None:
        self.sampler.restore_order()


@dataclasses.dataclass
class PipelineInput:
    """Batches pulled from a `tf.data` iterator (repeated, batched, prefetched)."""

    iterator: Any
    name: str
    # The `.cache(filename)` files of the training and eval pipelines (`tf_data_cache`).
    cache_files: tuple[str, ...] = ()

    def next(self) -> tuple[tf.Tensor, tf.Tensor]:
        return self.iterator.get_next()

    def checkpoint_items(self) -> dict[str, Any]:
        return {"input_iterator": self.iterator}

    def after_restore(self) -> None:
        pass


@dataclasses.dataclass
class Inputs:
    """What the trainer needs from `Trainer.dataset`.

    Attributes:
      train: `next()` gives one global batch `(x, y)` inside the compiled loop.
      eval: a finite, batched `tf.data.Dataset` of `(x, y)`, or None (no evaluation).
      input_shape: one example's input shape.
      num_classes: the class count for in-memory class-labelled data, else None.
      name: for HParams and messages.
      arrays: the in-memory data, if that is the input.
      info: what the dataset function's `info()` says identifies the data (see above).
      example_spec: one unbatched example's `(x, y)` specs (for the model/loss check).
    """

    train: ArrayInput | PipelineInput
    eval: tf.data.Dataset | None
    input_shape: tuple[int, ...]
    num_classes: int | None
    name: str
    arrays: Dataset | None = None
    info: dict[str, bool | int | float | str] = dataclasses.field(default_factory=dict)
    example_spec: tuple[tf.TensorSpec, tf.TensorSpec] | None = None


def make_inputs(spec: DatasetSpec, batch_size: int, seed: int) -> Inputs:
    """Builds the training input and the eval data for `Trainer.dataset`."""
    data = spec() if callable(spec) and not isinstance(spec, tf.data.Dataset) else spec
    if isinstance(data, Dataset):
        return dataclasses.replace(_array_inputs(data, batch_size, seed), info=data_info(spec))
    train, evaluation = data, None
    if isinstance(data, (tuple, list)) and len(data) == 2:
        train, evaluation = data
    name = getattr(spec, "__name__", "tf.data")
    for role, value in (("training", train), ("eval", evaluation)):
        if not (isinstance(value, tf.data.Dataset) or (role == "eval" and value is None)):
            raise DataError(
                f"Trainer.dataset ({name}) must return a lrresearch Dataset of arrays, a "
                f"tf.data.Dataset of (x, y) examples, or a pair (train, eval) of them; its "
                f"{role} part is {type(value).__name__}"
            )
    spec_x = _example_spec(train, name)
    batched = train.repeat().batch(batch_size, drop_remainder=True)
    batched = batched.prefetch(2).with_options(_options())
    iterator = iter(batched)
    _check_saveable(iterator, name)
    eval_batches = None
    if evaluation is not None:
        _example_spec(evaluation, name)
        eval_batches = evaluation.batch(batch_size).with_options(_options())
    caches = tf_data_cache.cache_files(train)
    if evaluation is not None:
        caches += tf_data_cache.cache_files(evaluation)
    return Inputs(
        PipelineInput(iterator, name, caches),
        eval_batches,
        spec_x,
        None,
        name,
        info=data_info(spec),
        example_spec=train.element_spec,
    )


def data_info(spec: DatasetSpec) -> dict[str, bool | int | float | str]:
    """`spec.info()` if the dataset function has one (values other than bool, int,
    float or str as their `str`, as HParams take), else `{}`."""
    info = getattr(spec, "info", None)
    if not callable(info):
        return {}
    scalar = (bool, int, float, str)
    return {str(k): v if isinstance(v, scalar) else str(v) for k, v in dict(info()).items()}


def _array_inputs(data: Dataset, batch_size: int, seed: int) -> Inputs:
    if len(data.x_train) < batch_size:
        raise DataError(
            f"{data.name}: {len(data.x_train)} training examples, fewer than "
            f"Trainer.batch_size = {batch_size}; lower the batch size"
        )
    sampler = BatchSampler(data.x_train, data.y_train, batch_size, seed)
    evaluation = (
        tf.data.Dataset.from_tensor_slices((data.x_eval, data.y_eval))
        .batch(1024)
        .with_options(_options())
    )
    return Inputs(
        ArrayInput(sampler, data.name),
        evaluation,
        tuple(data.input_shape),
        data.num_classes,
        data.name,
        data,
        example_spec=tuple(
            tf.TensorSpec(a.shape[1:], tf.as_dtype(a.dtype)) for a in (data.x_train, data.y_train)
        ),
    )


def _example_spec(dataset: tf.data.Dataset, name: str) -> tuple[int, ...]:
    """One example's input shape; checks the elements are unbatched `(x, y)` pairs."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise DataError(
            f"Trainer.dataset ({name}): elements must be (x, y) pairs, got {spec}; "
            "map your pipeline to (features, label) pairs"
        )
    shape = spec[0].shape
    if shape.rank is None or any(d is None for d in shape):
        raise DataError(
            f"Trainer.dataset ({name}): every example's x must have a fixed shape (the "
            f"step is traced once), got {shape}; pad or crop to one length, and return "
            "unbatched examples (lrresearch batches them by Trainer.batch_size)"
        )
    return tuple(int(d) for d in shape)


def _check_saveable(iterator: Any, name: str) -> None:
    """Refuses a pipeline whose position TensorFlow cannot checkpoint, before training
    (rather than at the first checkpoint)."""
    with tempfile.TemporaryDirectory(prefix="lrresearch-probe-") as folder:
        try:
            tf.train.Checkpoint(iterator=iterator).write(os.path.join(folder, "probe"))
        except (tf.errors.OpError, ValueError, TypeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise DataError(
                f"Trainer.dataset ({name}): the tf.data pipeline's position cannot be "
                f"checkpointed ({first}), so the run could not resume exactly. "
                "Pipelines built with from_generator or py_function cannot be saved; "
                "build it from files (TFRecordDataset, TextLineDataset) or tensors "
                "(from_tensor_slices) with tf ops in map()"
            ) from None
