"""Trains under `MirroredStrategy` in a fresh process (the logical CPU devices must be
configured before TensorFlow starts) and prints what the tests check, as JSON.

    python tests/mirrored_run.py LOGDIR RUN_NAME [GIN_BINDING ...]
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import tensorflow as tf

from lrresearch import config, distribute

config.parse([], sys.argv[3:])
strategy = distribute.get_strategy()  # before anything else runs TensorFlow ops

from lrresearch.trainer import Trainer  # noqa: E402

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
        }
    )
)
