"""One training run in a worker process of a results script's pool, its per-batch
values read back with TensorBoard's loader (tools/workload_results.py,
tools/decay_follows_lr.py, tools/cached_runs.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np


def init_worker() -> None:
    """A pool worker's TensorFlow on one thread, so that `--jobs` runs share the cores."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def train(
    gin_file: str,
    params: Sequence[str],
    seed: int,
    logdir: str,
    run_name: str | None = None,
    resume: bool = False,
) -> str:
    """Trains `gin_file` with `params` and `Trainer.seed = seed` under `logdir` (as
    `<logdir>/<run_name>`, continued from its last checkpoint with `resume`, as
    `lrresearch train --resume` does); returns the run directory."""
    import gin

    from lrresearch.config import parse as config
    from lrresearch.training.trainer import Trainer

    config.parse([gin_file], [*params, f"Trainer.seed = {seed}"])
    try:
        return Trainer().fit(logdir=logdir, run_name=run_name, quiet=True, resume=resume).run_dir
    finally:
        gin.clear_config()


def read_tags(run_dir: str, tags: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{tag: (steps, values)}` for each of `tags` the run logged, in step order (steps
    int64, values float64, one per logged step), read with TensorBoard's loader."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(run_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    logged = set(acc.Tags()["tensors"])
    return {
        tag: (
            np.array([e.step for e in acc.Tensors(tag)], np.int64),
            np.array([float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]),
        )
        for tag in tags
        if tag in logged
    }


def train_and_read(
    gin_file: str, params: Sequence[str], seed: int, logdir: str, tags: Sequence[str]
) -> tuple[dict[str, np.ndarray], float]:
    """Trains `gin_file` with `params` and `Trainer.seed = seed` under `logdir`; returns
    `({tag: values}, seconds)`: each of `tags` the run logged, its values in step order
    (float64, one per logged step), and the wall time of the run and the read."""
    start = time.perf_counter()
    run_dir = train(gin_file, params, seed, logdir)
    values = {tag: series[1] for tag, series in read_tags(run_dir, tags).items()}
    return values, time.perf_counter() - start
