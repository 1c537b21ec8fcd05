"""The random streams a training step draws from, saved so a resumed run draws the same.

Keras 3's random layers (Dropout, SpatialDropout, GaussianNoise, GaussianDropout,
AlphaDropout, the random augmentation layers) and `keras.random.*(seed=generator)`
draw from a `keras.random.SeedGenerator`, whose state (`[seed, counter]`, a variable)
is in `model.variables` but is not a `tf.train.Checkpoint` dependency, nor in Keras's
`.weights.h5` / `.keras` files (measured with Keras 3.15): a resumed run without it
draws another mask from the first batch on. A `tf.random.Generator` held by the model,
the loss or a metric is a checkpoint dependency only where a Keras layer holds it.

`find_states(*roots)` walks the objects a step uses (Keras layers, losses, metrics,
`tf.Module`s and their attributes, lists and dicts) and returns the state variable of
every `SeedGenerator` and `tf.random.Generator` found, in the walk's order (the same for
the same code, whatever was built before in the process). The trainer checkpoints them
as one entry, `random_state` (`checkpoint_items`); `ControlledModel` holds the same
entry (for `tf.train.Checkpoint(model=...)`) and writes them into its Keras files
(`.keras`, `.weights.h5`, hence `BackupAndRestore`) as `random_state.<i>`
(`save_to_store`, `load_from_store`). A checkpoint or file written before this
restores with a warning that the random streams restart.

Not saved (they have no state a checkpoint can hold): TF's stateful ops such as
`tf.random.uniform` and `keras.random.*` without a `seed` (Keras's global generator).
"""

from __future__ import annotations

import os
import types
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

# The trainer's checkpoint entry (a root name: never rename, old runs hold it).
ENTRY = "random_state"

_TERMINAL = (tf.Variable, keras.Variable, tf.Tensor, str, bytes, int, float, type(None))
# Trackable, but what they capture is the model's own state, found through the model.
_FUNCTIONS = (tf.types.experimental.PolymorphicFunction, tf.types.experimental.ConcreteFunction)
# Objects whose attributes may hold a generator: Keras layers, losses, metrics and TF's
# trackables (`tf.Module`, `AutoTrackable`); variables and tensors are `_TERMINAL`.
_WALKED = (
    keras.Operation,
    keras.losses.Loss,
    keras.metrics.Metric,
    tf.__internal__.tracking.Trackable,
)


def find_states(*roots: Any) -> list[tf.Variable]:
    """The state variables of every `keras.random.SeedGenerator` and
    `tf.random.Generator` reachable from `roots` (depth first, attributes in the order
    they were set), each once. A bound method is its object; a plain function (a loss
    given as a function) is not entered."""
    states: list[Any] = []
    seen: set[int] = set()
    pending = list(reversed(roots))
    while pending:
        obj = pending.pop()
        if id(obj) in seen or isinstance(obj, (*_TERMINAL, *_FUNCTIONS)):
            continue
        seen.add(id(obj))
        if isinstance(obj, (keras.random.SeedGenerator, tf.random.Generator)):
            states.append(obj.state)
            continue
        if isinstance(obj, types.MethodType):  # a Keras loss's `call`, say
            children = [obj.__self__]
        elif isinstance(obj, dict):
            children = list(obj.values())
        elif isinstance(obj, (list, tuple)):  # not sets: their order changes per process
            children = list(obj)
        elif isinstance(obj, _WALKED):
            children = list(getattr(obj, "__dict__", {}).values())
        else:
            continue
        pending.extend(reversed(children))
    return states


class RandomState(tf.Module):
    """The random-stream state variables as one checkpoint entry, in `find_states`'s
    order: `seed_states[i]` is a `SeedGenerator`'s `[seed, counter]` (2 integers) or a
    `tf.random.Generator`'s state."""

    def __init__(self, states: list[tf.Variable]):
        super().__init__(name=ENTRY)
        self.seed_states = list(states)


def checkpoint_items(*roots: Any) -> dict[str, RandomState]:
    """`{ENTRY: RandomState}` for `tf.train.Checkpoint(..., **items)`, or nothing when
    `roots` hold no generator (so the checkpoint of a model without randomness is the
    one earlier versions wrote)."""
    states = find_states(*roots)
    return {ENTRY: RandomState(states)} if states else {}


def holds_entry(path: str) -> bool:
    """Whether the checkpoint at `path` (a prefix such as `.../ckpt-3`) has the entry
    among its roots. (Not from its variables' names: a generator that the model holds
    too is saved once, under the model's path.)"""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(path).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    return any(child.local_name == ENTRY for child in graph.nodes[0].children)


def restore(
    checkpoint: tf.train.Checkpoint, path: str
) -> tuple[tf.train.CheckpointLoadStatus, str | None]:
    """`checkpoint.restore(path)` and `None`; a checkpoint written before the random
    state was saved restores everything else, with a warning line to print once it
    proved to fit."""
    if not hasattr(checkpoint, ENTRY) or holds_entry(path):
        return checkpoint.restore(path), None
    children = tf.train.TrackableView(checkpoint).children(checkpoint)
    others = tf.train.Checkpoint(
        **{k: v for k, v in children.items() if k not in (ENTRY, "save_counter")}
    )
    status = others.restore(path)
    checkpoint.save_counter.assign(others.save_counter)  # restored by `restore` itself
    count = len(getattr(checkpoint, ENTRY).seed_states)
    return status, (
        f"warning: resume: {os.path.basename(path)} was written before lrresearch saved "
        f"random streams: the model's {count} random generator(s) (Dropout, noise, "
        "augmentation, ...) restart from the seed, so the batches from here on draw other "
        "random numbers than an uninterrupted run would"
    )


KEY_PREFIX = ENTRY + "."  # keys in a Keras weights store: `random_state.0`, ...


def save_to_store(states: list[tf.Variable], store: Any) -> None:
    """Writes `states` into a Keras weights store (`save_own_variables`'s `store`)."""
    for i, state in enumerate(states):
        store[f"{KEY_PREFIX}{i}"] = state.numpy()


def pop_from(saved: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Removes and returns the random-state entries of `saved` (a store's entries)."""
    return {k: saved.pop(k) for k in list(saved) if k.startswith(KEY_PREFIX)}


def load_from_store(states: list[tf.Variable], saved: dict[str, np.ndarray], owner: str) -> None:
    """Assigns `pop_from`'s entries to `states`. A file saved before random streams
    were (no entry) warns that they restart; a file of a model with other random
    layers (another count or shape) is a `ValueError`."""
    if not saved and states:
        warnings.warn(
            f"{owner}: the file was saved before lrresearch saved random streams: the "
            f"model's {len(states)} random generator(s) (Dropout, noise, augmentation, "
            "...) start new streams, so training on draws other random numbers than the "
            "run that saved it would",
            stacklevel=3,
        )
        return
    shapes = [tuple(np.shape(saved.get(f"{KEY_PREFIX}{i}"))) for i in range(len(saved))]
    if len(saved) != len(states) or shapes != [tuple(s.shape) for s in states]:
        raise ValueError(
            f"{owner}: the file holds {len(saved)} random generator state(s) of shapes "
            f"{shapes}, this model {len(states)} of shapes {[tuple(s.shape) for s in states]}"
            ": load it into the model that saved it, or pass `skip_mismatch=True` to "
            "`load_weights` to load the rest and start new random streams"
        )
    for i, state in enumerate(states):
        state.assign(saved[f"{KEY_PREFIX}{i}"])
