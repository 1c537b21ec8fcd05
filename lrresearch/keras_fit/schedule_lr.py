"""A compiled optimizer whose `learning_rate` is a Keras `LearningRateSchedule`, under
`ControlledModel` and the Keras LR finder.

Keras computes such an LR inside `apply` as `schedule(optimizer.iterations)`, a tensor
nobody can assign; a controller needs the float LR variable an optimizer built with a
float has. `take_schedule` swaps the schedule for that variable (Keras's own layout:
right after `iterations`, named `learning_rate`, at the schedule's current value) and
returns the schedule; `put_back_schedule` undoes it exactly (`float_learning_rate` does
both around a block, for the LR finder). `controller_for` is what `ControlledModel`
runs with a schedule on its optimizer (`choose_controller`, at `compile`):

* no controller given: `ScheduleController(schedule)`, the LR of each batch the one
  Keras would apply (`schedule(batch index)`), logged as `lr` like any controller's;
* a controller given too: the controller sets the LR, the schedule is set aside, with
  a warning saying so and how to combine them (wrap `ScheduleController(schedule)` in
  `Warmup`, `Product`, `Clamp`, `MaxChange` or `Chain`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import keras
import tensorflow as tf

from lrresearch.controllers import Controller, ScheduleController
from lrresearch.controllers.keras_schedule import LearningRateSchedule, describe


def optimizer_schedule(
    optimizer: keras.optimizers.Optimizer, owner: str = "ControlledModel"
) -> LearningRateSchedule | None:
    """The optimizer's `LearningRateSchedule`, or None when its LR is a float variable.
    Raises ValueError naming `owner` for Keras's other kind, a callable without
    arguments."""
    learning_rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(learning_rate, LearningRateSchedule):
        return learning_rate
    if callable(learning_rate) and not isinstance(learning_rate, keras.Variable):
        raise ValueError(
            f"{owner}: the optimizer's learning_rate is a callable without "
            f"arguments ({describe(learning_rate)}), which a controller cannot follow; "
            f"compile with a float learning_rate and a controller, or with a "
            f"keras.optimizers.schedules.LearningRateSchedule"
        )
    return None


def take_schedule(optimizer: keras.optimizers.Optimizer) -> LearningRateSchedule | None:
    """Replaces the optimizer's schedule with a float32 LR variable holding the
    schedule's value at `optimizer.iterations`, placed where Keras puts an optimizer's
    own (so weight files are those of an optimizer built with a float); returns the
    schedule. None, and nothing changed, when the LR is a float variable already."""
    schedule = optimizer_schedule(optimizer)
    if schedule is None:
        return None
    value = float(schedule(optimizer.iterations))
    # Created in the optimizer's strategy, as Keras creates its own in `__init__`.
    strategy = getattr(optimizer, "_distribution_strategy", None) or tf.distribute.get_strategy()
    with strategy.scope():
        variable = keras.Variable(
            value,
            name="learning_rate",
            dtype=keras.config.floatx(),
            trainable=False,
            aggregation="only_first_replica",
        )
    optimizer._learning_rate = variable  # Keras's tracker appends it to `variables`
    tracked = optimizer._variables
    if tracked and tracked[-1] is variable:
        tracked.insert(1, tracked.pop())  # after `iterations`, as in Keras's __init__
    return schedule


def put_back_schedule(
    optimizer: keras.optimizers.Optimizer, schedule: LearningRateSchedule
) -> None:
    """Undoes `take_schedule`: the schedule is the optimizer's LR again, and the
    variable is gone from its variables and checkpoint dependencies."""
    variable = optimizer._learning_rate
    del optimizer._learning_rate  # TF's checkpoint dependency goes with the attribute
    optimizer._learning_rate = schedule
    optimizer._untrack_variable(variable)


@contextlib.contextmanager
def float_learning_rate(optimizer: keras.optimizers.Optimizer) -> Iterator[None]:
    """Inside the block the optimizer's LR is a float variable (its schedule, if it had
    one, set aside); afterwards the schedule is back, the same object."""
    schedule = take_schedule(optimizer)
    try:
        yield
    finally:
        if schedule is not None:
            put_back_schedule(optimizer, schedule)


def choose_controller(model: keras.Model) -> None:
    """At `ControlledModel.compile`: sets `model.controller` from `controller_for`
    (a new one is built by the first traced step, as one given to the constructor)."""
    from_schedule = getattr(model, "_controller_from_schedule", False)
    controller, model._controller_from_schedule = controller_for(
        model.optimizer, model.controller, from_schedule
    )
    if controller is not model.controller:
        model.controller, model._controller_built = controller, False


def controller_for(
    optimizer: keras.optimizers.Optimizer, controller: Controller | None, from_schedule: bool
) -> tuple[Controller, bool]:
    """The controller `ControlledModel` runs with `optimizer`, and whether it was made
    from the optimizer's schedule (see the module docstring). `from_schedule`: the
    current `controller` was made from an earlier compile's schedule, so a new schedule
    replaces it. Takes the schedule off the optimizer. Raises ValueError when there is
    neither a controller nor a schedule."""
    schedule = take_schedule(optimizer)
    if schedule is None:
        if controller is None:
            raise ValueError(
                "ControlledModel needs a controller: pass one, ControlledModel(model, "
                "controller), or compile with an optimizer whose learning_rate is a "
                "keras.optimizers.schedules.LearningRateSchedule (it runs as "
                "ScheduleController(schedule))"
            )
        return controller, from_schedule
    if controller is None or from_schedule:
        return ScheduleController(schedule), True
    warnings.warn(
        f"ControlledModel: the optimizer's learning_rate is a schedule "
        f"({describe(schedule)}) and a controller ({type(controller).__name__}) was given; "
        f"the controller sets the LR every batch and the schedule is set aside. To follow "
        f"the schedule, pass no controller (it runs as ScheduleController(schedule)); to "
        f"combine them, wrap ScheduleController(schedule) in Warmup, Product, Clamp, "
        f"MaxChange or Chain",
        UserWarning,
        stacklevel=3,
    )
    return controller, False
