"""Trains under `MirroredStrategy` in a fresh process (the logical CPU devices must be
configured before TensorFlow starts) and prints what the tests check, as JSON.

    python tests/mirrored_run.py LOGDIR RUN_NAME [GIN_BINDING ...]
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from lrresearch import config, distribute

config.parse([], sys.argv[3:])
strategy = distribute.get_strategy()  # before anything else runs TensorFlow ops

from lrresearch.trainer import Trainer  # noqa: E402

trainer = Trainer()
result = trainer.fit(logdir=sys.argv[1], run_name=sys.argv[2], quiet=True)


def copies(variable) -> list[np.ndarray]:
    """Every replica's copy of a mirrored (Keras) variable."""
    return [c.numpy() for c in strategy.experimental_local_results(variable.value)]


np.savez(os.path.join(result.run_dir, "final_weights.npz"), *[v.numpy() for v in trainer.variables])
weights = [copies(v) for v in trainer.variables]
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
        }
    )
)
