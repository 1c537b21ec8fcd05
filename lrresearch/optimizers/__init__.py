"""Keras 3 optimizers for an LR that changes every batch, and `Trainer.optimizer`'s
short names.

* `MomentumSGD` (`momentum.py`): PyTorch's momentum SGD.
* The parameter-free optimizers, which set their own step size and log it per batch
  (`WholeStepOptimizer.step_summaries`): `Prodigy`, `DAdaptAdam`, `Mechanic`,
  `ScheduleFreeSGD`, `ScheduleFreeAdamW`, `ScheduleFreeRAdam`, `ScheduleFreeWrapper`,
  `MoMo`, `MoMoAdam`, `IAM` (these three need the batch loss, which the trainer and
  `ControlledModel` hand over), `COCOB`.

Every class is registered with gin (`Trainer.optimizer = @Prodigy`) and with Keras's
serialization (a compiled `ControlledModel` saves and loads it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gin
import keras

from lrresearch.optimizers.cocob import COCOB
from lrresearch.optimizers.d_adapt import DAdaptAdam, Prodigy
from lrresearch.optimizers.iam import IAM
from lrresearch.optimizers.mechanic import Mechanic
from lrresearch.optimizers.momentum import MomentumSGD
from lrresearch.optimizers.momo import MoMo
from lrresearch.optimizers.momo_adam import MoMoAdam
from lrresearch.optimizers.schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD
from lrresearch.optimizers.schedule_free_radam import ScheduleFreeRAdam
from lrresearch.optimizers.schedule_free_wrap import ScheduleFreeWrapper
from lrresearch.optimizers.whole_step import WholeStepOptimizer

__all__ = [
    "COCOB",
    "IAM",
    "OPTIMIZERS",
    "DAdaptAdam",
    "Mechanic",
    "MoMo",
    "MoMoAdam",
    "MomentumSGD",
    "Prodigy",
    "ScheduleFreeAdamW",
    "ScheduleFreeRAdam",
    "ScheduleFreeSGD",
    "ScheduleFreeWrapper",
    "WholeStepOptimizer",
    "make_optimizer",
]


class ShortName:
    """A short name's optimizer: Keras's class built through its gin configurable, so
    the class's bindings take effect (`Trainer.optimizer = 'adam'` with `Adam.beta_1 =
    0.8` is Adam(beta_1=0.8)), except for what the short name fixes (`momentum=0.9`)
    and the LR, which the controller sets: a binding of those is refused, naming it.
    """

    def __init__(self, name: str, class_name: str, **fixed: Any):
        self.name, self.class_name, self.fixed = name, class_name, fixed
        arguments = "".join(f", {k}={v!r}" for k, v in fixed.items())
        self.builds = f"keras.optimizers.{class_name}(learning_rate=lr{arguments})"

    def __call__(self, lr: float) -> keras.optimizers.Optimizer:
        from lrresearch import keras_classes as external_configurables  # registers Keras's classes

        selector = f"keras.optimizers.{self.class_name}"
        assert selector in external_configurables.REGISTERED, selector
        for argument, value in self.fixed.items():
            bound = _bound(self.class_name, argument)
            if bound is not _UNBOUND and bound != value:
                raise ValueError(
                    f"{self.class_name}.{argument} must not be bound with Trainer.optimizer "
                    f"= {self.name!r}, which builds {self.builds}, got {bound!r}; for "
                    f"your value write `Trainer.optimizer = @{selector}` (its other "
                    f"bindings apply as they are)"
                )
        check_lr_not_bound(self.class_name)
        return gin.get_configurable(selector)(learning_rate=lr, **self.fixed)


_UNBOUND = object()


def _bound(class_name: str, argument: str) -> Any:
    """The value gin binds to `class_name.argument`, or `_UNBOUND`."""
    try:
        return gin.query_parameter(f"{class_name}.{argument}")
    except (ValueError, KeyError):  # not bound, or not one configurable by that name
        return _UNBOUND


def check_lr_not_bound(class_name: str) -> None:
    """Refuses a gin binding of `class_name.learning_rate`: the trainer passes the
    controller's LR and assigns it every batch, so the binding would vanish."""
    bound = _bound(class_name, "learning_rate") if class_name else _UNBOUND
    if bound is not _UNBOUND:
        raise ValueError(
            f"{class_name}.learning_rate must not be bound, got {bound!r}: the controller "
            f"sets the optimizer's LR every batch (from its initial LR); bind the "
            f"controller's instead, e.g. `ConstantController.lr = {bound!r}`"
        )


# The short names of `Trainer.optimizer`.
OPTIMIZERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {
    name: ShortName(name, class_name, **fixed)
    for name, class_name, fixed in (
        ("sgd", "SGD", {}),
        ("momentum", "SGD", {"momentum": 0.9}),
        ("nesterov", "SGD", {"momentum": 0.9, "nesterov": True}),
        ("adam", "Adam", {}),
        ("adamw", "AdamW", {}),
    )
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
    check_lr_not_bound(getattr(optimizer, "__name__", ""))
    return optimizer(learning_rate=initial_lr)
