"""Which `tf.distribute` strategy the trainer runs under, picked by gin.

`distribution.strategy = "mirrored"` replicates the model on every local GPU (or, with
no GPU, on every logical CPU: `distribution.logical_cpus = 2` splits the CPU in two so
the mirrored path runs on a laptop); `"multi_worker"` is `MultiWorkerMirroredStrategy`
over the cluster in `TF_CONFIG` (see `tools/launch_local_workers.py`). The strategy is
created once per process, before anything else touches TensorFlow's runtime: the CLI
calls `get_strategy()` right after parsing the gin files.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any

import gin
import tensorflow as tf

STRATEGIES = ("none", "mirrored", "multi_worker")

_created: dict[tuple[str, int], tf.distribute.Strategy | None] = {}


class DistributionError(RuntimeError):
    """The strategy cannot be set up as configured; the message says how to fix it."""


@gin.configurable
def distribution(strategy: str = "none", logical_cpus: int = 0) -> tuple[str, int]:
    """The configured strategy's name and logical CPU count (gin: `distribution.*`).

    Args:
      strategy: "none" (one device), "mirrored" (`MirroredStrategy` over the local
        GPUs, or over the logical CPUs if there is no GPU) or "multi_worker"
        (`MultiWorkerMirroredStrategy`; each process reads its role from `TF_CONFIG`).
      logical_cpus: if >= 2, split the first CPU into this many logical devices (for
        trying "mirrored" on a CPU-only machine; 0 = leave the devices alone).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"distribution.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(logical_cpus, bool) or not isinstance(logical_cpus, int) or logical_cpus < 0:
        raise ValueError(f"distribution.logical_cpus must be an int >= 0, got {logical_cpus!r}")
    return strategy, logical_cpus


def _split_cpu(count: int) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:
        raise DistributionError(
            f"distribution.logical_cpus = {count}: TensorFlow's devices were already "
            "initialized; create the strategy (lrresearch.training.distribute.get_strategy()) "
            "before building models or controllers"
        ) from None


def _create(strategy: str) -> tf.distribute.Strategy | None:
    if strategy == "none":
        return None
    if strategy == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    tf_config = os.environ.get("TF_CONFIG")
    if not tf_config:
        raise DistributionError(
            'distribution.strategy = "multi_worker" needs TF_CONFIG in the environment of '
            "every worker (cluster addresses and this worker's index); on one machine, "
            "start the workers with `python tools/launch_local_workers.py --workers 2 -- "
            "lrresearch train ...`"
        )
    try:
        json.loads(tf_config)
    except json.JSONDecodeError as e:
        raise DistributionError(f"TF_CONFIG is not valid JSON ({e}): {tf_config!r}") from None
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as e:
        raise DistributionError(
            f"cannot start MultiWorkerMirroredStrategy ({e}); it must be created before "
            "anything else runs TensorFlow ops in this process"
        ) from None


def get_strategy() -> tf.distribute.Strategy | None:
    """The strategy configured by `distribution` (None for "none"), created on first
    call and reused for the same configuration."""
    key = distribution()
    if key not in _created:
        strategy, logical_cpus = key
        if logical_cpus >= 2:
            _split_cpu(logical_cpus)
        _created[key] = _create(strategy)
    return _created[key]


def describe(strategy: tf.distribute.Strategy | None) -> str:
    """The `distribution.strategy` name of `strategy`: "none", "mirrored" or
    "multi_worker" (for HParams and messages)."""
    if strategy is None:
        return "none"
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    return type(strategy).__name__


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster (the
    chief is task `chief`, or `worker` 0 when the cluster has no `chief`)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_name(strategy: tf.distribute.Strategy | None) -> str:
    """`worker-<i>` for a multi-worker process, else an empty string."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return ""
    return f"{resolver.task_type}-{resolver.task_id}"


class StopRequested(KeyboardInterrupt):
    """A Ctrl-C or SIGTERM, acted on between compiled calls (on every worker at the
    same step); a KeyboardInterrupt, so the trainer saves and reports it as one."""


class StopOnSignal:
    """Turns Ctrl-C and SIGTERM into a stop at the next boundary between compiled calls.

    Python raises KeyboardInterrupt at whatever bytecode runs when the signal arrives,
    which after a long compiled call is usually inside TensorFlow's own Python code; a
    run interrupted there crashed (SIGSEGV) now and then while saving. So the handler
    only sets a flag, and `check()`, called by the training loop between compiled
    calls, raises `StopRequested` where the step variable matches the weights.

    With `strategy` (multi-worker), `check()` sums the workers' flags with one scalar
    all-reduce, so every worker stops after the same batch even if only one got the
    signal, and none leaves while the others wait in an all-reduce. A second signal
    raises KeyboardInterrupt at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, strategy: tf.distribute.Strategy | None = None):
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._agree = None
        if strategy is not None:

            @tf.function
            def agree(flag: tf.Tensor) -> tf.Tensor:
                per_replica = strategy.run(lambda: tf.identity(flag))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

            self._agree = agree

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.requested:
            self.uninstall()
            raise KeyboardInterrupt
        self.requested = True
        print(
            f"{signal.Signals(signum).name}: stopping after the current compiled call "
            "(again to stop at once)",
            flush=True,
        )

    def __enter__(self) -> StopOnSignal:
        # Handlers can only be set from the main thread; elsewhere signals keep theirs.
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def check(self) -> None:
        """Raises `StopRequested` if a stop was asked for (on any worker: one scalar
        all-reduce and a host read; call it between compiled calls only)."""
        if self._agree is None:
            if self.requested:
                raise StopRequested
        elif self._agree(tf.constant(float(self.requested))).numpy() > 0:
            raise StopRequested
