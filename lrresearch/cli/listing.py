"""`lrresearch list`: what a gin file can name, with its gin spelling, its arguments'
defaults and a one-line rule.

Nothing here is written by hand: entries are found in the modules that define them
(`lrresearch.controllers.__all__`, the gin configurables of `optimizers` and of
`BUILTIN_MODULES`, sorted by what the trainer does with them (`role`),
`external_configurables.REGISTERED`, `optimizers.OPTIMIZERS`, the shipped gin files of
`config.files`), the defaults come from signatures and the rule is the first sentence
of the docstring (the same helpers as the generated reference, `docgen`), or a gin
file's first comment. Groups print in `GROUPS` order, entries alphabetically.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
from collections.abc import Callable, Iterable, Sequence
from typing import Any

GROUPS = (
    "controllers",
    "wrappers",
    "optimizers",
    "datasets",
    "models",
    "losses",
    "metrics",
    "configs",
)

# How each group is bound, printed under its title.
HOW = {
    "controllers": "Trainer.controller = @Name()",
    "wrappers": "Trainer.controller = @Name(), with the controllers it takes bound to it",
    "optimizers": "Trainer.optimizer = 'short name' or @Name (the class, no parentheses)",
    "datasets": "Trainer.dataset = @name",
    "models": "Trainer.model = @name (called with input_shape and num_classes)",
    "losses": "Trainer.loss = @keras.losses.Name() (or a Keras loss name, or your function)",
    "metrics": "Trainer.metrics = [@keras.metrics.Name(), ...] (or Keras metric names)",
    "configs": "--gin_file=NAME from any folder, or include 'NAME' in your gin file",
}
# Arguments the caller passes itself (a model gets its input shape and classes from the
# data): not bindings, so not listed.
PASSED_BY_CALLER = {"name"}
PASSED_TO_MODELS = {"input_shape", "num_classes", "name"}
# The modules whose gin configurables are built-in datasets, models and metrics (the
# workloads' included: `stdlib_bytes`, `byte_transformer`, `tabular`, ...).
BUILTIN_MODULES = (
    "lrresearch.workloads.data",
    "lrresearch.workloads.models",
    "lrresearch.workloads",
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One listed name: how a gin file writes it, its defaults, its one-line rule."""

    gin: str
    defaults: str
    rule: str


def _rule(obj: Any) -> str:
    from lrresearch.cli import docstrings

    return docstrings.first_sentence(inspect.getdoc(obj))


def _defaults(obj: Callable[..., Any], passed: set[str]) -> str:
    from lrresearch.cli import docstrings

    try:
        defaults = docstrings.defaults(obj)
    except (TypeError, ValueError):  # no signature to read
        return ""
    return ", ".join(f"{k}={v}" for k, v in defaults.items() if k not in passed)


def _entry(gin_name: str, obj: Any, passed: set[str] | None = PASSED_BY_CALLER) -> Entry:
    """`passed=None`: show no defaults."""
    return Entry(gin_name, _defaults(obj, passed) if passed is not None else "", _rule(obj))


def _configurables(module: str, nested: bool = False) -> dict[str, Any]:
    """`{short name: object}` of the gin configurables defined in `module` (and, with
    `nested`, in its submodules)."""
    from lrresearch.config import parse as config

    prefix = f"{module}."
    return {
        selector.rsplit(".", 1)[-1]: obj
        for selector, obj in config.configurables().items()
        if selector.startswith(prefix) and (nested or "." not in selector[len(prefix) :])
    }


def role(obj: Any) -> str:
    """The group of a built-in configurable: "models" (called with `input_shape`),
    "metrics" (a Keras metric class), "datasets" (any other function)."""
    import keras

    if inspect.isclass(obj):
        return "metrics" if issubclass(obj, keras.metrics.Metric) else ""
    return "models" if "input_shape" in inspect.signature(obj).parameters else "datasets"


def _builtins(group: str) -> list[Entry]:
    """The configurables of `BUILTIN_MODULES` in `group`."""
    # A dataset's `name` is a binding (`tabular.name = 'wine'`), a model's or metric's not.
    passed = {"models": PASSED_TO_MODELS, "datasets": set()}.get(group, PASSED_BY_CALLER)
    found = {n: o for m in BUILTIN_MODULES for n, o in _configurables(m, nested=True).items()}
    return [_entry(n, o, passed) for n, o in found.items() if role(o) == group]


def _controllers(standalone: bool) -> list[Entry]:
    from lrresearch import controllers

    entries = []
    for name in controllers.__all__:
        obj = getattr(controllers, name)
        if (
            inspect.isclass(obj)
            and issubclass(obj, controllers.Controller)
            and obj is not controllers.Controller
            and obj.standalone == standalone
        ):
            entries.append(_entry(name, obj))
    return entries


def _short_optimizer(name: str, factory: Callable[..., Any]) -> Entry:
    """A `Trainer.optimizer` short name: what it builds (`ShortName.builds`, else read
    from its factory's source)."""
    if builds := getattr(factory, "builds", None):
        return Entry(repr(name), "", f"{builds}, with the controller's LR")
    try:
        source = inspect.getsource(factory)
    except (OSError, TypeError):
        source = ""
    match = re.search(r"lambda \w+:\s*(.+?),?\s*$", source.strip())
    builds = match.group(1) if match else _rule(factory)
    return Entry(repr(name), "", f"{builds}, with the controller's LR")


def _optimizers() -> list[Entry]:
    from lrresearch import optimizers

    entries = [_short_optimizer(n, f) for n, f in optimizers.OPTIMIZERS.items()]
    ours = _configurables("lrresearch.optimizers", nested=True)
    entries += [_entry(n, obj) for n, obj in ours.items()]
    return entries + _keras("keras.optimizers")


def _keras(module: str) -> list[Entry]:
    """The Keras classes registered with gin under `module` (`keras.losses`, ...); their
    long signatures are Keras's to document, so only the rule is shown."""
    import gin

    from lrresearch import keras_classes as external_configurables

    return [
        _entry(selector, gin.get_configurable(selector), passed=None)
        for selector in external_configurables.REGISTERED
        if selector.rsplit(".", 1)[0] == module
    ]


def _configs() -> list[Entry]:
    """The shipped gin files (`files.SHIPPED`), by the name `--gin_file` takes."""
    from lrresearch.config import files

    return [
        Entry(name, "", files.comment_summary(files.SHIPPED / name))
        for name in files.shipped_names()
    ]


def entries(group: str) -> list[Entry]:
    """The entries of one of `GROUPS`, sorted by gin name."""
    from lrresearch.config.parse import register_configurables

    register_configurables()  # config.configurables scans what is imported
    found = {
        "controllers": lambda: _controllers(standalone=True),
        "wrappers": lambda: _controllers(standalone=False),
        "optimizers": _optimizers,
        "datasets": lambda: _builtins("datasets"),
        "models": lambda: _builtins("models"),
        "losses": lambda: _keras("keras.losses"),
        "metrics": lambda: _keras("keras.metrics") + _builtins("metrics"),
        "configs": _configs,
    }[group]()
    if group == "optimizers":  # short names first, then classes
        return sorted(found, key=lambda e: (not e.gin.startswith("'"), e.gin))
    return sorted(found, key=lambda e: e.gin)


def _format(entry: Entry, width: int) -> list[str]:
    head = f"{entry.gin}({entry.defaults})" if entry.defaults else entry.gin
    head_lines = textwrap.wrap(head, width, initial_indent="  ", subsequent_indent="      ")
    rule = textwrap.wrap(entry.rule, width, initial_indent="      ", subsequent_indent="      ")
    return [*head_lines, *rule]


def render(groups: Iterable[str] = GROUPS, width: int = 88) -> str:
    """The text `lrresearch list` prints: each group's title and how it is bound, then
    its entries, each with its defaults and, indented below, its one-line rule."""
    lines: list[str] = []
    for group in groups:
        found = entries(group)
        lines += [f"{group} ({len(found)}): {HOW[group]}", *_lines(found, width), ""]
    return "\n".join(lines).rstrip()


def _lines(found: Sequence[Entry], width: int) -> list[str]:
    return [line for entry in found for line in _format(entry, width)]
