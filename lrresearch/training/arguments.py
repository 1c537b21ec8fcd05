"""Checks of the `Trainer`'s arguments, the tag-friendly names of its variables, and
its hyperparameters for TensorBoard's HParams dashboard.

Errors name `Trainer.<argument>` and the value, in the format `config.py` finds the
gin binding from.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import tensorflow as tf

from lrresearch.controllers import Controller, GradNormController

# The controller of a run whose `Trainer.controller` is None (the built-in default).
DEFAULT_CONTROLLER = GradNormController
_NONE_CONTROLLER = re.compile(r"^Trainer\.controller = None$", re.MULTILINE)


def variable_names(variables: list[tf.Variable], model_name: str) -> list[str]:
    """Tag-friendly variable paths: `dense/kernel` rather than `mlp/dense/kernel`."""
    prefix = model_name + "/"
    return [v.path[len(prefix) :] if v.path.startswith(prefix) else v.path for v in variables]


def check_cadence(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Trainer.{name} must be an int >= 0 (0 = off), got {value!r}")


def validate(arguments: dict[str, Any]) -> None:
    """Checks `Trainer`'s arguments; errors name `Trainer.<argument>` and the value."""
    for name, minimum in (
        ("steps", 1),
        ("batch_size", 1),
        ("steps_per_loop", 1),
        ("keep_checkpoints", 1),
        ("loss_ma_short", 1),
        ("loss_ma_long", 1),
    ):
        value = arguments[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"Trainer.{name} must be an int >= {minimum}, got {value!r}")
    seed = arguments["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"Trainer.seed must be an int, got {seed!r}")
    for name in ("histogram_every", "eval_every", "checkpoint_every"):
        check_cadence(name, arguments[name])
    for name in ("grad_norm_every", "log_every"):
        check_cadence(name, arguments[name], allow_none=True)
    clip_norm = arguments["clip_norm"]
    if clip_norm is not None and not (
        isinstance(clip_norm, (int, float))
        and not isinstance(clip_norm, bool)
        and math.isfinite(clip_norm)
        and clip_norm > 0
    ):
        raise ValueError(f"Trainer.clip_norm must be a number > 0 or None, got {clip_norm!r}")
    jit = arguments["jit_compile"]
    if not isinstance(jit, bool):
        raise ValueError(f"Trainer.jit_compile must be True or False, got {jit!r}")
    if jit and arguments["strategy"] is not None:
        raise ValueError(
            "Trainer.jit_compile = True is not supported with a tf.distribute strategy "
            f"(distribution.strategy = {type(arguments['strategy']).__name__}): XLA "
            "cannot compile the strategy's cross-replica step here; set "
            "Trainer.jit_compile = False, or train on one device"
        )
    controller = arguments["controller"]
    if controller is not None and not isinstance(controller, Controller):
        raise ValueError(
            f"Trainer.controller must be a Controller instance such as "
            f"@GradNormController() (note the parentheses), got {controller!r}"
        )


def run_controller(controller: Controller | None, steps: int) -> tuple[Controller, dict[str, int]]:
    """The run's controller (`DEFAULT_CONTROLLER()` for None) with its schedule lengths
    set to the run's `steps`, and the bindings that took it, with their lengths
    (`Controller.set_run_length`)."""
    controller = DEFAULT_CONTROLLER() if controller is None else controller
    return controller, controller.set_run_length(steps)


def with_default_controller(config: str) -> str:
    """`config` (an operative config) with `Trainer.controller = None` spelled as the
    controller the trainer used for it, `@GradNormController()`: what `config.gin`
    records, and how an older run's `config.gin` is read when it is resumed."""
    return _NONE_CONTROLLER.sub(f"Trainer.controller = @{DEFAULT_CONTROLLER.__name__}()", config)


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What a run's HParams report (`hparams`), as a trainer knows it once built.

    Attributes:
      optimizer: `Trainer.optimizer` as given (a short name or a class).
      model, dataset, loss: names (`keras.Model.name`, `Input.name`, the loss's name).
      dataset_info: what the dataset's `info()` reports (`dataset.<key>`).
      distribution: `distribute.describe(strategy)`; `replicas`: its replica count.
      extra: more HParams (a sweep adds the bindings it varies).
    """

    controller: Controller
    optimizer: Any
    batch_size: int
    seed: int
    steps: int
    steps_per_loop: int
    jit_compile: bool
    model: str
    dataset: str
    dataset_info: dict[str, Any]
    loss: str
    distribution: str
    replicas: int
    extra: dict[str, bool | int | float | str]


def hparams(facts: RunFacts) -> dict[str, bool | int | float | str]:
    """The run's hyperparameters for TensorBoard's HParams dashboard: the controller
    and its numeric/string settings, optimizer, batch size, seed, steps, model and
    data (with `dataset.<name>` for what the dataset's `info()` reports)."""
    optimizer = facts.optimizer
    values: dict[str, bool | int | float | str] = {
        "controller": type(facts.controller).__name__,
        "optimizer": optimizer
        if isinstance(optimizer, str)
        else getattr(optimizer, "__name__", type(optimizer).__name__),
        "batch_size": facts.batch_size,
        "seed": facts.seed,
        "steps": facts.steps,
        "steps_per_loop": facts.steps_per_loop,
        "jit_compile": facts.jit_compile,
        "model": facts.model,
        "dataset": facts.dataset,
        "loss": facts.loss,
        "distribution": facts.distribution,
        "replicas": facts.replicas,
        **{f"dataset.{key}": value for key, value in facts.dataset_info.items()},
    }
    for key, value in sorted(vars(facts.controller).items()):
        if not key.startswith("_") and isinstance(value, (bool, int, float, str)):
            values[f"controller.{key}"] = value
    return {**values, **facts.extra}
