"""The lock file of a `tf.data` `.cache(filename)` writer that a killed run left behind.

While a pipeline's first epoch fills a file cache, TensorFlow's writer keeps a lock,
`<filename>_<shard>.lockfile` (a new shard after every checkpoint of the iterator),
and removes it when the iterator ends, or merges the shards at the end of the epoch.
A process killed (SIGKILL) in the first epoch leaves the lock of the shard it was
writing, and the resumed iterator, which writes that shard again, stops with
`AlreadyExistsError: ... cache lockfile already exists`.

On resume, `remove_stale_locks` removes such a lock (and the shard's partial data)
only when it is provably the killed process's: the run's own lock (`run_dir.RunLock`)
shows that process has ended, and the cache lock was created after it started. A
process that writes the same cache at the same time could not have created it then
(TensorFlow's writer refuses a cache whose lock exists), so a live writer is never
broken. Any other lock is left alone, and the error says which file it is and what
to do (`explain_lock_error`).
"""

from __future__ import annotations

import glob
import os
import re
import time

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

_LOCK = re.compile(r"cache lockfile already exists \('([^']+)'\)")
_CACHE_OPS = ("CacheDataset", "CacheDatasetV2")


class CacheLockError(RuntimeError):
    """A `.cache(file)` lock that may belong to another process stopped the run."""


def cache_files(dataset: tf.data.Dataset) -> tuple[str, ...]:
    """The file names of the `.cache(filename)` steps of `dataset`'s pipeline (none for
    an in-memory `.cache()`), read from its graph (a filename computed from tensors is
    folded to a constant there)."""
    try:
        graph = graph_pb2.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    except (tf.errors.OpError, ValueError, TypeError):  # a pipeline TF cannot serialize
        return ()
    nodes = {node.name: node for node in graph.node}
    files = []
    for node in graph.node:
        if node.op not in _CACHE_OPS or len(node.input) < 2:
            continue
        source = nodes.get(node.input[1].split(":")[0].lstrip("^"))
        if source is not None and source.op == "Const":
            files += [v.decode() for v in source.attr["value"].tensor.string_val if v]
    return tuple(dict.fromkeys(files))


def _created(lock: str) -> float:
    """When TF wrote the lock ("Created at: <unix seconds>"), else its mtime."""
    try:
        with open(lock) as f:
            m = re.search(r"Created at: (\d+)", f.read())
        return float(m.group(1)) if m else os.path.getmtime(lock)
    except OSError:
        return float("inf")


def _unfinished_shard_locks(filename: str) -> list[str]:
    """Locks of shards without an index (being written when the writer stopped);
    finished shards keep theirs until the epoch's merge, which removes them."""
    if os.path.exists(f"{filename}.index"):  # the cache is complete: nothing is written
        return []
    locks = glob.glob(f"{glob.escape(filename)}_*.lockfile")
    return sorted(lock for lock in locks if not os.path.exists(lock[: -len("lockfile")] + "index"))


def remove_stale_locks(filenames: tuple[str, ...], previous_start: float | None) -> list[str]:
    """Removes the unfinished-shard locks of `filenames` created after `previous_start`
    (when the run's previous, now ended, process started), with the shard's partial
    data; returns one line per lock removed. Nothing is removed without that time."""
    notes: list[str] = []
    if previous_start is None:
        return notes
    for filename in filenames:
        for lock in _unfinished_shard_locks(filename):
            # The lock's time has whole seconds; the run lock's start too.
            if _created(lock) < int(previous_start):
                continue
            shard = lock[: -len(".lockfile")]
            for partial in [lock, *glob.glob(f"{glob.escape(shard)}.data-*.tempstate*")]:
                os.remove(partial)
            notes.append(
                f"removed {lock}, the tf.data cache lock the interrupted process left "
                "(it ended while filling the cache's first epoch)"
            )
    return notes


def explain_lock_error(error: BaseException, run_dir: str) -> str | None:
    """One screen for TF's "cache lockfile already exists", or None for other errors."""
    if not isinstance(error, tf.errors.AlreadyExistsError):
        return None
    m = _LOCK.search(str(error))
    if not m:
        return None
    lock = m.group(1)
    created = _created(lock)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) if created < 1e12 else "?"
    name, logdir = os.path.basename(run_dir), os.path.dirname(run_dir) or "."
    return (
        f"the tf.data cache of Trainer.dataset is locked: {lock} exists (created {when}).\n"
        "TensorFlow's .cache(filename) writer refuses a cache another process may be "
        "filling. --resume removes a lock that the run's own killed process left; this "
        "one is older than that process, or another run's.\nIf no other process is "
        "filling that cache, delete the lock if it is still there and run again "
        f"(--resume --run_name {name} --logdir {logdir} continues this run); or give "
        "each run a cache file of its own."
    )
