"""`ScheduleController`: a schedule the user already has, run as a per-batch controller.

A Keras `LearningRateSchedule` (Keras's own or a subclass), its serialized config, or
any function of the step written with TF ops, called in-graph on every batch's index.
The schedule is turned into something callable here (`as_schedule`), traced once when
the controller is built (`probe`: a bad schedule fails before anything trains, naming
`ScheduleController.schedule`), and saved with Keras's serializer (`schedule_config`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import gin
import keras
import tensorflow as tf

from lrresearch.controllers.base import Controller, ControllerOutput, length_warning
from lrresearch.controllers.signals import Signals

OWNER = "ScheduleController"
LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule
# The step's dtype: Keras's optimizers pass `iterations`, an int64 variable under TF.
STEP_DTYPES = {"int64": tf.int64, "float32": tf.float32, "float64": tf.float64}
_EXAMPLE = "ScheduleController.schedule = @keras.optimizers.schedules.CosineDecay()"


@gin.configurable
class ScheduleController(Controller):
    """Any schedule as a controller: a Keras `LearningRateSchedule` (instance, class
    from gin, or serialized config) or a traceable function of the step, run in-graph
    every batch.

    For batch index `t` (0-based): `lr = schedule(t)`, with `t` an int64 scalar tensor,
    the argument Keras's optimizer gives a schedule (`optimizer.iterations`, 0 for the
    first update). So the LR of every batch is the one `keras.optimizers.SGD(schedule)`
    applies to it, rounded to float32 (Keras's schedules compute in float32 already).
    Logging, the LR guard, composition (`Warmup`, `Product`, `Clamp`, `MaxChange`,
    `Chain`, where a part sees the step from its own start) and checkpoints are those
    of any controller; a schedule has no state to save. A batch the non-finite guard
    skips still counts in `t` (Keras's own `iterations` would not advance). Its lengths
    are the schedule's own; Keras's schedules that end (`CosineDecay`, `PolynomialDecay`
    without `cycle`) warn before the run when they end before it or are cut by it.

    The schedule is traced once when the controller is built, on a symbolic scalar
    step and without AutoGraph, as the compiled loop runs it: a schedule that cannot
    trace (a Python `if` on the step, `.numpy()`, `float(step)`), returns more than one
    number or starts at a negative or non-finite LR is a `ValueError` naming
    `ScheduleController.schedule` and the fix.

    Args:
      schedule: a `keras.optimizers.schedules.LearningRateSchedule` instance, Keras's
        (`CosineDecay` with warmup, `ExponentialDecay`, `PiecewiseConstantDecay`,
        `PolynomialDecay`, `InverseTimeDecay`, `CosineDecayRestarts`) or your own
        subclass; in gin, `@keras.optimizers.schedules.CosineDecay()` (every Keras
        schedule is registered under its Keras name) or your own `@gin.configurable`
        schedule class from a module your gin file imports (a class without the `()`
        is built with its bindings); a serialized schedule,
        `keras.optimizers.schedules.serialize(schedule)`'s `{"class_name": ...,
        "config": ...}` (your own class registered with
        `keras.saving.register_keras_serializable`, or imported before); or a function
        of the step written with TF ops, e.g. optax-style `lambda step: 0.1 * 0.5 **
        tf.cast(step // 1000, tf.float32)`, which runs everywhere but has no config to
        save (`get_config` says so; under `model.save`, use a schedule class).
      step_dtype: the dtype of the step tensor passed: "int64" (Keras's, the default),
        "float32" or "float64" (for a function written for a float step).

    `initial_lr` is the schedule's value at step 0.

    Examples:
      Trainer.controller = @ScheduleController()
      ScheduleController.schedule = @keras.optimizers.schedules.CosineDecay()
      keras.optimizers.schedules.CosineDecay.initial_learning_rate = 0.0
      keras.optimizers.schedules.CosineDecay.warmup_target = 0.1   # the peak LR
      keras.optimizers.schedules.CosineDecay.warmup_steps = 100    # batches
      keras.optimizers.schedules.CosineDecay.decay_steps = 1900    # batches after warmup

      >>> import keras
      >>> from lrresearch.controllers import ScheduleController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = ScheduleController(keras.optimizers.schedules.ExponentialDecay(
      ...     0.1, decay_steps=100, decay_rate=0.5, staircase=True))
      >>> [round(float(c.compute(make_signals(t, 1.0)).lr), 4) for t in (0, 99, 100, 250)]
      [0.1, 0.1, 0.05, 0.025]

    References:
      Keras, `keras.optimizers.schedules`
      (https://keras.io/api/optimizers/learning_rate_schedules/).
    """

    # It needs a schedule to run, as a wrapper needs its parts: `lrresearch profile`
    # does not build it alone.
    standalone = False

    def __init__(
        self,
        schedule: Any = gin.REQUIRED,
        step_dtype: str = "int64",
        name: str | None = None,
    ):
        super().__init__(name=name)
        if step_dtype not in STEP_DTYPES:
            raise ValueError(
                f"{OWNER}.step_dtype must be one of {sorted(STEP_DTYPES)}, got {step_dtype!r}"
            )
        self.step_dtype = step_dtype
        # A Keras schedule or a function has no state to save; a schedule that is a
        # `tf.Module` with variables would be checkpointed with the controller.
        self.schedule = as_schedule(schedule)
        self.initial_lr = probe(self.schedule, STEP_DTYPES[step_dtype])
        self.run_span: tuple[int | None, str] = (None, "Trainer.steps")

    def set_run_length(self, steps: int | None, span: str = "Trainer.steps") -> dict[str, int]:
        """Records the run's length for `run_warnings`; a schedule's lengths are its
        own arguments, so nothing follows it."""
        self.run_span = (steps, span)
        return {}

    def run_warnings(self, steps: int | None) -> list[str]:
        """For Keras's schedules with an end (`CosineDecay`, `PolynomialDecay` without
        `cycle`): warns when it ends before the run or the run cuts it, as the
        built-in schedules do."""
        span, name = self.run_span if self.run_span[0] is not None else (steps, "Trainer.steps")
        end = schedule_end(self.schedule)
        if span is None or end is None:
            return []
        binding, length, warmup = end
        dtype = STEP_DTYPES[self.step_dtype]
        final, last = (float(self.schedule(tf.constant(t, dtype))) for t in (length, span - 1))
        prefix = f"keras.optimizers.schedules.{type(self.schedule).__name__}"
        fix = f"set {prefix}.decay_steps = {span - warmup}"
        if span <= warmup:
            fix = f"lower {prefix}.warmup_steps (the run ends inside the warmup)"
        return length_warning(binding, length, span, name, f"LR {final:.3g}", last, fix)

    def get_config(self) -> dict[str, Any]:
        """The schedule serialized by Keras (`schedule_config`), the step dtype and the
        name. Raises TypeError for a plain function, which has no config."""
        name = self.__dict__.get("_init_arguments", {}).get("name")
        config = schedule_config(self.schedule)
        return {"schedule": config, "step_dtype": self.step_dtype, "name": name}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ScheduleController:
        """The controller `get_config` described; the schedule's config is rebuilt by
        `as_schedule` (not read as a nested controller)."""
        return cls(**config)

    def known_peak_lr(self) -> float | None:
        """The peak of one of Keras's own schedules, by its arguments; None otherwise."""
        return keras_schedule_peak(self.schedule)

    def compute(self, signals: Signals) -> ControllerOutput:
        step = tf.cast(signals.step, STEP_DTYPES[self.step_dtype])
        lr = tf.reshape(tf.cast(self.schedule(step), tf.float32), [])
        return ControllerOutput(lr, {})


def schedule_end(schedule: Any) -> tuple[str, int, int] | None:
    """(the bindings that sum to its length, the length in batches, the warmup in it)
    for a Keras schedule that ends; None for one that does not, or is not Keras's."""
    prefix = f"keras.optimizers.schedules.{type(schedule).__name__}"
    if isinstance(schedule, keras.optimizers.schedules.CosineDecay):
        decay = int(schedule.decay_steps)
        if schedule.warmup_target is None:
            return f"{prefix}.decay_steps", decay, 0
        warmup = int(schedule.warmup_steps)
        return f"{prefix}.warmup_steps + decay_steps", warmup + decay, warmup
    if isinstance(schedule, keras.optimizers.schedules.PolynomialDecay) and not schedule.cycle:
        return f"{prefix}.decay_steps", int(schedule.decay_steps), 0
    return None


def as_schedule(value: Any) -> Callable[[tf.Tensor], Any]:
    """The callable of the step that `value` describes (see `ScheduleController`'s
    `schedule`); raises ValueError naming `ScheduleController.schedule` otherwise."""
    if isinstance(value, LearningRateSchedule):
        return value
    if isinstance(value, type):
        return _built(value)
    if isinstance(value, Mapping):
        return deserialize_schedule(value)
    if isinstance(value, Controller):
        raise ValueError(
            f"{OWNER}.schedule must be a schedule, got the controller {type(value).__name__}; "
            f"a controller is used directly: Trainer.controller = @{type(value).__name__}()"
        )
    if callable(value):
        return value
    raise ValueError(
        f"{OWNER}.schedule must be a keras.optimizers.schedules.LearningRateSchedule, its "
        f"serialized config or a function of the step, got {value!r}; e.g. {_EXAMPLE}"
    )


def _built(cls: type) -> LearningRateSchedule:
    """A schedule class given without `()` in gin: built with its bindings."""
    if not issubclass(cls, LearningRateSchedule):
        raise ValueError(
            f"{OWNER}.schedule must be a schedule, got the class {cls.__name__}, which is "
            f"not a keras.optimizers.schedules.LearningRateSchedule; e.g. {_EXAMPLE}"
        )
    try:
        return cls()
    except TypeError as error:
        raise ValueError(
            f"{OWNER}.schedule = {cls.__name__} (a class) could not be built with its gin "
            f"bindings: {_first_line(error)}; bind its arguments, e.g. "
            f"{cls.__name__}.decay_steps = 1000, and write @{cls.__name__}()"
        ) from None


def probe(schedule: Callable[[tf.Tensor], Any], dtype: tf.DType) -> float:
    """Traces `schedule` once on a symbolic scalar step of `dtype`, without AutoGraph
    (as the compiled loop calls it), checks it returns one number, and returns its
    value at step 0 (Python float, finite and >= 0). Raises ValueError naming
    `ScheduleController.schedule` and the fix."""
    what = describe(schedule)

    def call(step: tf.Tensor) -> tf.Tensor | None:
        value = schedule(step)
        return None if value is None else tf.convert_to_tensor(value)

    traced = tf.function(call, autograph=False)
    try:
        concrete = traced.get_concrete_function(tf.TensorSpec([], dtype))
    except Exception as error:  # the user's code: any error, explained
        raise ValueError(_trace_message(what, dtype, error)) from None
    output = concrete.structured_outputs
    if not isinstance(output, tf.Tensor) or not (
        output.dtype.is_floating or output.dtype.is_integer
    ):
        raise ValueError(f"{OWNER}.schedule = {what} must return a number, got {output!r}")
    if output.shape.num_elements() != 1:
        raise ValueError(
            f"{OWNER}.schedule = {what} must return one LR per step (a scalar), got a "
            f"tensor of shape {output.shape}; return the value for the step it is given"
        )
    first = float(tf.reshape(concrete(tf.constant(0, dtype)), []))
    if not (math.isfinite(first) and first >= 0.0):
        raise ValueError(
            f"{OWNER}.schedule = {what} gives LR {first!r} at step 0, where the optimizer "
            f"starts; it must be a finite number >= 0"
        )
    return first


def _trace_message(what: str, dtype: tf.DType, error: Exception) -> str:
    """Why `what` could not be traced on a symbolic step, and the fix."""
    fix = (
        "write it with TF ops on the step (tf.where / tf.cond or keras.ops.where / "
        "keras.ops.cond instead of a Python `if`; no .numpy() or float(step)), as Keras's "
        "own schedules are"
    )
    if isinstance(error, tf.errors.OperatorNotAllowedInGraphError):
        fix = (
            "it branches in Python on the step tensor (`if step < ...`), which cannot run "
            f"inside the compiled step; {fix}"
        )
    elif dtype.is_integer and isinstance(error, TypeError):
        fix = f"pass {OWNER}.step_dtype = 'float32' if it computes with a float step, or {fix}"
    elif not isinstance(error, (TypeError, NotImplementedError)):
        fix = "check the schedule's arguments; it must return the LR of the step it is given"
    return (
        f"{OWNER}.schedule = {what} cannot run inside the compiled step: called on a "
        f"symbolic {dtype.name} scalar step it raised {type(error).__name__}: "
        f"{_first_line(error)}\n  Fix: {fix}"
    )


def _first_line(error: Exception) -> str:
    """The error's first sentence (TensorFlow's own can fill a screen)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else repr(error)
    return line.split(". ", 1)[0] if len(line) > 160 else line


def describe(schedule: Any) -> str:
    """A short name for a schedule in messages: `CosineDecay(...)`, `my_module.fn`."""
    if isinstance(schedule, LearningRateSchedule):
        return f"{type(schedule).__name__}(...)"
    name = getattr(schedule, "__qualname__", None) or type(schedule).__name__
    module = getattr(schedule, "__module__", None)
    return f"{module}.{name}" if module and module != "__main__" else name


def schedule_config(schedule: Callable[[tf.Tensor], Any]) -> dict[str, Any]:
    """Keras's serialization of `schedule` (JSON-serializable), with the module of a
    class Keras has not registered (so `deserialize_schedule` finds it once imported).
    Raises TypeError naming `ScheduleController.schedule` for a plain function or a
    schedule without `get_config`."""
    what = describe(schedule)
    if not isinstance(schedule, LearningRateSchedule):
        raise TypeError(
            f"{OWNER}.schedule = {what} cannot be saved in a config: a plain function has "
            f"no config to rebuild it from; use a keras.optimizers.schedules."
            f"LearningRateSchedule subclass with get_config (registered with "
            f"keras.saving.register_keras_serializable) instead"
        )
    try:
        config = keras.optimizers.schedules.serialize(schedule)
        json.dumps(config)
    except (NotImplementedError, TypeError, ValueError) as error:
        raise TypeError(
            f"{OWNER}.schedule = {what} cannot be saved in a config: {_first_line(error)}; "
            f"give {type(schedule).__name__} a get_config that returns its constructor's "
            f"arguments (numbers, strings, lists), as Keras's own schedules do"
        ) from None
    if config.get("module") is None and config.get("registered_name") == config["class_name"]:
        config["module"] = type(schedule).__module__
    return config


def deserialize_schedule(config: Mapping[str, Any]) -> LearningRateSchedule:
    """The schedule `schedule_config` (or Keras's `serialize`) described: through
    Keras's registry, else a `LearningRateSchedule` subclass already imported with that
    module and class name. Nothing is imported from the config."""
    try:
        schedule = keras.optimizers.schedules.deserialize(dict(config))
    except (TypeError, ValueError, KeyError) as error:
        schedule, keras_error = None, _first_line(error)
    else:
        keras_error = f"Keras rebuilt {schedule!r}"
    if isinstance(schedule, LearningRateSchedule):
        return schedule
    cls = _imported_class(config.get("class_name"), config.get("module"))
    if cls is None or not isinstance(config.get("config"), Mapping):
        raise ValueError(
            f"{OWNER}.schedule = {dict(config)!r} is not a schedule Keras or an imported "
            f"module defines ({keras_error}); register the class with "
            f"@keras.saving.register_keras_serializable() or import its module first, "
            f"and pass keras.optimizers.schedules.serialize(schedule)'s dict"
        )
    return cls.from_config(dict(config["config"]))


def _imported_class(name: Any, module: Any) -> type | None:
    """The `LearningRateSchedule` subclass named `name` (in `module` when given); of
    several (gin registers a subclass of the same name), the base-most."""
    found = [
        c
        for c in _subclasses(LearningRateSchedule)
        if c.__name__ == name and (module is None or c.__module__ == module)
    ]
    return min(found, key=lambda c: len(c.__mro__)) if found else None


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def keras_schedule_peak(schedule: object) -> float | None:
    """The peak of one of Keras's own schedules, by its arguments (not of a subclass,
    which may compute something else); None otherwise."""
    schedules = keras.optimizers.schedules
    kind = type(schedule)
    first = getattr(schedule, "initial_learning_rate", None)
    if kind is schedules.CosineDecay:
        return max(float(first), float(schedule.warmup_target or 0.0))
    if kind is schedules.CosineDecayRestarts:
        return float(first) if schedule._m_mul <= 1 else None
    if kind in (schedules.ExponentialDecay, schedules.InverseTimeDecay):
        growing = kind is schedules.ExponentialDecay and schedule.decay_rate > 1
        return None if growing else float(first)
    if kind is schedules.PolynomialDecay:
        return max(float(first), float(schedule.end_learning_rate))
    if kind is schedules.PiecewiseConstantDecay:
        return max(float(v) for v in schedule.values)
    return None
