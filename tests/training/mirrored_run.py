"""Trains under `MirroredStrategy` in a fresh process (the logical CPU devices must be
configured before TensorFlow starts) and prints what the tests check, as JSON.

    python -m tests.training.mirrored_run LOGDIR RUN_NAME [GIN_BINDING ...]
"""

from __future__ import annotations

import json
import os
import sys

import gin
import keras
import numpy as np
import tensorflow as tf

from lrresearch.config import parse as config
from lrresearch.controllers import GradNormController
from lrresearch.step import random_state
from lrresearch.training import distribute

config.parse([], sys.argv[3:])
strategy = distribute.get_strategy()  # before anything else runs TensorFlow ops

from lrresearch.training.trainer import Trainer  # noqa: E402

trainer = Trainer(strategy=strategy)
# Not quiet: the run header names the strategy and its replicas (the JSON comes last).
result = trainer.fit(logdir=sys.argv[1], run_name=sys.argv[2])


def copies(variable) -> list[np.ndarray]:
    """Every replica's copy of a mirrored (Keras) variable."""
    return [c.numpy() for c in strategy.experimental_local_results(variable.value)]


np.savez(os.path.join(result.run_dir, "final_weights.npz"), *[v.numpy() for v in trainer.variables])
weights = [copies(v) for v in trainer.variables]


def op_types(fn) -> set[str]:
    """Every op type in the loop's traced graph, loop bodies included."""
    graph_def = fn.get_concrete_function(tf.constant(1, tf.int64)).graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


ops = set().union(*(op_types(fn) for fn in trainer.loops.values()))


def dropout_mlp(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(keras.layers.Dropout(0.3)(hidden)))


def random_resume() -> dict:
    """A Dropout model under the strategy: 10 batches straight, and a fresh trainer
    restored from the checkpoint after 4 training the other 6 (`random_state`)."""

    def make() -> Trainer:
        new = Trainer(
            steps=10, controller=GradNormController(slope=0.05), batch_size=32,
            steps_per_loop=2, histogram_every=0, eval_every=0, model=dropout_mlp,
            deterministic=True,
            strategy=strategy,
        )  # fmt: skip
        new.build()
        return new

    straight = make()
    straight.run_steps(4)
    path = straight.checkpoint.save(os.path.join(sys.argv[1], "random_resume", "ckpt"))
    straight.run_steps(6)
    resumed = make()
    status, warning = random_state.restore(resumed.checkpoint, path)
    status.assert_consumed()
    resumed.after_restore()
    resumed.run_steps(6)
    pairs = zip(straight.variables, resumed.variables, strict=True)
    states = getattr(resumed.checkpoint, random_state.ENTRY).seed_states
    return {
        "warning": warning,
        "lrs": [straight.current_lr(), resumed.current_lr()],
        "weight_max_diff": max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in pairs),
        "state_copies": [[c.tolist() for c in copies(s)] for s in states],
    }


gin.clear_config()
print(
    json.dumps(
        {
            "replicas": strategy.num_replicas_in_sync,
            "devices": sorted(
                {c.device for c in strategy.experimental_local_results(trainer.variables[0].value)}
            ),
            "lr_copies": [float(x) for x in copies(trainer.optimizer.learning_rate)],
            "weight_copy_max_diff": max(
                float(np.max(np.abs(c - w[0]))) for w in weights for c in w[1:]
            ),
            "run_dir": result.run_dir,
            "tracing_counts": [
                fn.experimental_get_tracing_count() for fn in trainer.loops.values()
            ],
            "python_ops": sorted(ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}),
            "random_resume": random_resume(),
        }
    )
)
