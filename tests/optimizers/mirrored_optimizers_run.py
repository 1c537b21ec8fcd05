"""Trains each named parameter-free optimizer under `MirroredStrategy` (2 logical CPUs)
in this fresh process, as `tests.support.parameter_free_trainer` builds it on one
device, and prints one JSON line: per optimizer, the final weights and whether every
replica's copy of every variable (slots and scalars too) agrees.

    python -m tests.optimizers.mirrored_optimizers_run NAME [NAME ...]
"""

from __future__ import annotations

import json
import sys

import numpy as np

from lrresearch.config import parse as config
from lrresearch.training import distribute

config.parse([], ['distribution.strategy = "mirrored"', "distribution.logical_cpus = 2"])
strategy = distribute.get_strategy()  # before anything else runs TensorFlow ops

from tests.support import PARAMETER_FREE_STEPS, parameter_free_trainer  # noqa: E402


def copies_agree(variables) -> bool:
    for variable in variables:
        value = getattr(variable, "value", variable)
        copies = [c.numpy() for c in strategy.experimental_local_results(value)]
        if len(copies) != 2 or any(not np.array_equal(copies[0], c) for c in copies[1:]):
            return False
    return True


report = {}
for name in sys.argv[1:]:
    trainer = parameter_free_trainer(name, strategy=strategy)
    trainer.run_steps(PARAMETER_FREE_STEPS)  # the numbers `fit` trains, without its logging
    report[name] = {
        "replicas": strategy.num_replicas_in_sync,
        "copies_agree": copies_agree([*trainer.variables, *trainer.optimizer.variables]),
        "weights": [v.numpy().tolist() for v in trainer.variables],
    }
print(json.dumps(report))
