"""One training run in a worker process of a results script's pool, its per-batch
values read back with TensorBoard's loader (tools/workload_results.py,
tools/decay_follows_lr.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np


def init_worker() -> None:
    """A pool worker's TensorFlow on one thread, so that `--jobs` runs share the cores."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def train_and_read(
    gin_file: str, params: Sequence[str], seed: int, logdir: str, tags: Sequence[str]
) -> tuple[dict[str, np.ndarray], float]:
    """Trains `gin_file` with `params` and `Trainer.seed = seed` under `logdir`; returns
    `({tag: values}, seconds)`: each of `tags` the run logged, its values in step order
    (float64, one per logged step), and the wall time of the run and the read."""
    import gin
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator as ea

    from lrresearch.config import parse as config
    from lrresearch.training.trainer import Trainer

    start = time.perf_counter()
    config.parse([gin_file], [*params, f"Trainer.seed = {seed}"])
    try:
        run_dir = Trainer().fit(logdir=logdir, quiet=True).run_dir
    finally:
        gin.clear_config()
    acc = ea.EventAccumulator(run_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    logged = set(acc.Tags()["tensors"])
    values = {
        tag: np.array([float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)])
        for tag in tags
        if tag in logged
    }
    return values, time.perf_counter() - start
