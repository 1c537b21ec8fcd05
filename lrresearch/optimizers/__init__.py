"""Keras 3 optimizers for an LR that changes every batch, and `Trainer.optimizer`'s
short names.

* `MomentumSGD` (`momentum.py`): PyTorch's momentum SGD.
* The parameter-free optimizers, which set their own step size and log it per batch
  (`WholeStepOptimizer.step_summaries`): `Prodigy`, `DAdaptAdam`, `Mechanic`,
  `ScheduleFreeSGD`, `ScheduleFreeAdamW`.

Every class is registered with gin (`Trainer.optimizer = @Prodigy`) and with Keras's
serialization (a compiled `ControlledModel` saves and loads it).
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from lrresearch.optimizers.d_adapt import DAdaptAdam, Prodigy
from lrresearch.optimizers.mechanic import Mechanic
from lrresearch.optimizers.momentum import MomentumSGD
from lrresearch.optimizers.schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD
from lrresearch.optimizers.whole_step import WholeStepOptimizer

__all__ = [
    "OPTIMIZERS",
    "DAdaptAdam",
    "Mechanic",
    "MomentumSGD",
    "Prodigy",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "WholeStepOptimizer",
    "make_optimizer",
]

# The short names of `Trainer.optimizer`.
OPTIMIZERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {
    "sgd": lambda lr: keras.optimizers.SGD(learning_rate=lr),
    "momentum": lambda lr: keras.optimizers.SGD(learning_rate=lr, momentum=0.9),
    "nesterov": lambda lr: keras.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: keras.optimizers.Adam(learning_rate=lr),
    "adamw": lambda lr: keras.optimizers.AdamW(learning_rate=lr),
}


def make_optimizer(
    optimizer: str | Callable[..., keras.optimizers.Optimizer], initial_lr: float
) -> keras.optimizers.Optimizer:
    """Builds the optimizer from a short name or a class/factory taking `learning_rate`.

    The optimizer's LR must be a plain variable (not a Keras schedule): the controller
    assigns it every batch.
    """
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"Trainer.optimizer: unknown optimizer {optimizer!r}; use one of "
                f"{sorted(OPTIMIZERS)} or a class such as @keras.optimizers.Adam"
            )
        return OPTIMIZERS[optimizer](initial_lr)
    if isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            "Trainer.optimizer: pass the class or a short name, not an instance "
            "(write `@keras.optimizers.Adam`, without the parentheses)"
        )
    if not callable(optimizer):
        raise ValueError(f"Trainer.optimizer: expected a name or a class, got {optimizer!r}")
    return optimizer(learning_rate=initial_lr)
