"""The controller contract: a per-batch LR strategy as a small `tf.Module`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import tensorflow as tf

from lrresearch.checks import (  # noqa: F401  (the controller author's checks, as documented)
    check_bool,
    check_int,
    check_interval,
    check_nonnegative,
    check_number,
    check_positive,
)
from lrresearch.controllers.signals import Signals

if TYPE_CHECKING:
    import keras


class ControllerOutput(NamedTuple):
    """The LR for this batch and the controller's own signals.

    Attributes:
      lr: float32 scalar, the LR to apply to this batch.
      diagnostics: float32 scalars logged as `controller/<name>` every batch, so a reader
        sees *why* the LR moved (e.g. the loss trend, the schedule and the factor).

      momentum: float32 scalar or None: the optimizer's momentum for this batch (SGD's
        `momentum`, Adam's `beta_1`), for a controller whose `optimizer_hyperparameters`
        holds "momentum" (`OneCycleController(cycle_momentum=True)`); None leaves it.
      weight_decay: float32 scalar or None: the optimizer's (Keras, decoupled)
        `weight_decay` for this batch, likewise under "weight_decay".
    """

    lr: tf.Tensor
    diagnostics: Mapping[str, tf.Tensor]
    momentum: tf.Tensor | None = None
    weight_decay: tf.Tensor | None = None


class Controller(tf.Module):
    """Base class of per-batch LR strategies.

    A controller is called once per batch, inside the compiled train step, after the
    batch's loss and gradients are known and before the update is applied. It reads
    `Signals`, may update its own `tf.Variable` state (so `tf.train.Checkpoint` saves
    it) and returns the LR for this batch. Subclasses implement `compute` with TF ops
    only: no `.numpy()`, no Python `if` on a tensor. Controllers also work eagerly,
    which is how the tests and notebooks drive them.

    Every controller describes itself, as Keras objects do: the arguments its
    constructor was called with (gin bindings included) are recorded, `get_config()`
    returns them and `from_config(config)` builds an equal controller with fresh state
    (`serialize_controller` / `deserialize_controller` add the class name).

    Attributes:
      initial_lr: the LR the optimizer is created with (Python float); it is what
        `Signals.lr` holds at step 0.
    """

    initial_lr: float
    # The optimizer hyperparameters besides the LR that `compute` sets every batch
    # ("momentum", "weight_decay": the fields of `ControllerOutput` it fills). Known in
    # Python before tracing: the trainer turns only these into variables, and logs
    # them as `optimizer/<name>` (a constant one would only clutter TensorBoard).
    optimizer_hyperparameters: frozenset[str] = frozenset()
    # False for wrappers that need other controllers and for factors that are not LRs;
    # `lrresearch profile` compares the standalone ones by default.
    standalone: bool = True
    # The recorded constructor arguments are not state: `variables` and `submodules`
    # skip them (they are set untracked, so checkpoints never see them either).
    _TF_MODULE_IGNORED_PROPERTIES = tf.Module._TF_MODULE_IGNORED_PROPERTIES | {"_init_arguments"}

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_init(cls.__dict__["__init__"])

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serializable; nested controllers as
        `serialize_controller` dicts. Raises TypeError naming an argument that is not."""
        owner = type(self).__name__
        arguments = self.__dict__.get("_init_arguments")
        if arguments is None:
            raise NotImplementedError(
                f"{owner} did not record its constructor arguments (its __init__ takes "
                f"*args or it has none of its own); override get_config and from_config"
            )
        return {name: _to_config(value, f"{owner}.{name}") for name, value in arguments.items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Controller:
        """A new controller (fresh state) from `get_config()`'s output."""
        return cls(**{name: _from_config(value) for name, value in config.items()})

    def build(self, variables: Sequence[tf.Variable]) -> None:
        """Called once by the trainer with the model's trainable variables, before the
        step is traced (for rules that watch the weights); a no-op by default."""
        del variables

    def known_peak_lr(self) -> float | None:
        """Host-side: the largest LR this controller gives over any run, when its
        arguments say it, else None (a rule that reacts to the loss or the gradients).
        By default a float attribute `peak_lr` (`WSDController`, `InverseSqrtController`,
        a rule of your own), else None; schedules and wrappers override it.
        `DecayFollowsLR` divides by it."""
        stated = getattr(self, "peak_lr", None)
        if isinstance(stated, (int, float)) and not isinstance(stated, bool):
            return float(stated)
        return None

    def check_optimizer(self, optimizer: keras.optimizers.Optimizer) -> None:
        """Raises ValueError if this rule cannot be exact with `optimizer` (called by the
        trainer and `ControlledModel` once the optimizer exists); a no-op by default.
        Composites forward it to their parts."""
        del optimizer

    def set_run_length(self, steps: int | None, span: str = "Trainer.steps") -> dict[str, int]:
        """Host-side, before training: a schedule length argument left at None (its
        default, "the run's length") takes `steps` (the trainer passes `Trainer.steps`;
        `ControlledModel` None, unknown, which makes such an argument an error naming
        the binding). Returns the bindings that took the run's length, with the length
        they took, e.g. `{"WarmupCosineController.decay_steps": 3000}`. `span` names
        what `steps` is, for warnings: "Trainer.steps", or a `Chain` part's own span. A
        no-op by default; composites forward it to their parts."""
        del steps, span
        return {}

    def run_warnings(self, steps: int | None) -> list[str]:
        """Host-side, once before training: settings that leave the rule inert for a run
        of `steps` batches (None when unknown, as under Keras `fit`), one sentence each
        with the fix. No warnings by default; composites collect their parts'."""
        del steps
        return []

    def state_warnings(self) -> list[str]:
        """Host-side, between compiled calls (reads a few scalar variables, never per
        batch): what the run so far shows the rule is stuck on, one sentence each with
        the fix. The trainer prints each distinct warning once. None by default;
        composites collect their parts'."""
        return []

    def compute(self, signals: Signals) -> ControllerOutput:
        """Returns this batch's LR and diagnostics; may update the controller's state."""
        raise NotImplementedError

    def __call__(self, signals: Signals) -> tf.Tensor:
        """Returns this batch's LR (float32 scalar)."""
        return self.compute(signals).lr


def serialize_controller(controller: Controller) -> dict[str, Any]:
    """`{"module", "class_name", "config"}` of `controller` (JSON-serializable)."""
    cls = type(controller)
    return {"module": cls.__module__, "class_name": cls.__name__, "config": controller.get_config()}


def deserialize_controller(config: Mapping[str, Any]) -> Controller:
    """The controller `serialize_controller` described, with fresh state. Its class must be
    defined (imported) already: every class in `lrresearch.controllers` is; a class of
    your own, once its module is imported. Nothing is imported from the config."""
    name, module = config["class_name"], config.get("module")
    candidates = [c for c in _subclasses(Controller) if c.__name__ == name]
    exact = [c for c in candidates if c.__module__ == module]
    if not exact and len(candidates) != 1:
        raise ValueError(
            f"Unknown controller class {name!r} (module {module!r}): import the module "
            f"that defines it before loading"
        )
    return (exact or candidates)[0].from_config(config["config"])


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _recording_init(init: Callable[..., None]) -> Callable[..., None]:
    """`init`, recording its arguments on the instance for `Controller.get_config`."""
    signature = inspect.signature(init)
    recordable = all(
        p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        for p in list(signature.parameters.values())[1:]
    )

    @functools.wraps(init)
    def recording_init(self, *args: Any, **kwargs: Any) -> None:
        # Only the outermost constructor records: `CyclicalController` calls
        # `Product.__init__(base=..., factor=...)`, but its config is its own arguments.
        if recordable and "_init_arguments" not in self.__dict__:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:
                pass  # `init` raises it with its own message
            else:
                bound.apply_defaults()
                arguments = dict(list(bound.arguments.items())[1:])
                # Untracked: a tracked dict would add checkpoint dependencies.
                object.__setattr__(self, "_init_arguments", arguments)
        init(self, *args, **kwargs)

    # For readers that do not follow `__wrapped__`, such as `inspect.getfullargspec`.
    recording_init.__signature__ = signature
    return recording_init


def _to_config(value: Any, where: str) -> Any:
    if isinstance(value, Controller):
        return serialize_controller(value)
    if isinstance(value, (list, tuple)):
        return [_to_config(v, where) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{where} = {value!r} cannot be saved in a config (not JSON-serializable)")


def _from_config(value: Any) -> Any:
    if isinstance(value, Mapping) and {"class_name", "config"} <= value.keys():
        return deserialize_controller(value)
    if isinstance(value, list):
        return [_from_config(v) for v in value]
    return value


def momentum_attribute(optimizer: keras.optimizers.Optimizer) -> str | None:
    """The optimizer's attribute that holds its momentum, or None if it has none.

    `beta_1` for Adam and its kin (as PyTorch's schedulers cycle Adam's first beta);
    `momentum` for Keras's `SGD` and our `MomentumSGD` when it is > 0 (with 0 they
    build no velocity to cycle); None otherwise.
    """
    if isinstance(getattr(optimizer, "beta_1", None), (int, float)):
        return "beta_1"
    from keras.optimizers import SGD

    from lrresearch.optimizers import MomentumSGD

    momentum = getattr(optimizer, "momentum", None)
    if isinstance(optimizer, (SGD, MomentumSGD)) and isinstance(momentum, float) and momentum > 0:
        return "momentum"
    return None


def check_cycle_momentum(owner: str, optimizer: keras.optimizers.Optimizer) -> None:
    """Raises ValueError naming `owner.cycle_momentum` unless `optimizer` has a
    momentum to cycle (PyTorch's schedulers raise "optimizer must support momentum or
    beta1 with `cycle_momentum` option enabled")."""
    if momentum_attribute(optimizer) is None:
        raise ValueError(
            f"{owner}.cycle_momentum = True needs an optimizer with a momentum to cycle "
            f"(SGD or MomentumSGD with momentum > 0, or one with beta_1 such as Adam), "
            f"got {type(optimizer).__name__}"
            f"{' with momentum 0' if hasattr(optimizer, 'momentum') else ''}; set "
            f"Trainer.optimizer = 'momentum' (or 'adam'), or {owner}.cycle_momentum = False"
        )


def run_length(owner: str, name: str, value: int | None, steps: int | None, minimum: int) -> int:
    """A schedule's length in batches: `value`, or when it is None (the default, "the
    run's length") the run's `steps`, at least `minimum`. Raises ValueError naming
    `owner.name` when both are None (under Keras `fit`, or a controller used alone)."""
    if value is not None:
        return value
    if steps is None:
        raise ValueError(
            f"{owner}.{name} must be a number of batches when the run's length is unknown "
            f"(Keras fit, or the controller used without a Trainer), got None; bind "
            f"{owner}.{name} = <batches> (under fit: epochs * steps_per_epoch), or call "
            f"set_run_length(steps) first"
        )
    return max(steps, minimum)


def length_warning(
    binding: str, length: int, steps: int, span: str, end: str, last_lr: float, fix: str = ""
) -> list[str]:
    """The warning for a schedule of `length` batches in a run of `steps` (named `span`,
    e.g. "Trainer.steps"): it ends before the run (the rest trains at `end`) or the run
    cuts it (its last batch at `last_lr`); none when they match. `binding` is the
    length's gin binding (or what sums to it), `fix` what to do about it."""
    fix = fix or f"bind {binding} = None (the run's length) or set it to {span}"
    if length < steps:
        return [
            f"{binding} = {length} ends before {span} = {steps}: the last "
            f"{steps - length:,} batches train at {end}; {fix}"
        ]
    if length > steps:
        return [
            f"{binding} = {length} is cut by {span} = {steps}: the run stops "
            f"{length - steps:,} batches before the schedule's end, at LR {last_lr:.3g} "
            f"instead of {end}; {fix}"
        ]
    return []
