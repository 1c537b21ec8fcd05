"""Module paths of the flat layout (before 0.2), each mapped to where the module lives now.

`import lrresearch.trainer` (and every other old path) still gives the module, now
`lrresearch.training.trainer`, with a `DeprecationWarning` that names the new spelling:
users' scripts and notebooks keep running while they move. The gin names, Keras
serialization keys, checkpoint keys and tags did not change (docs/changes.md).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

# Old module (under `lrresearch.`) -> its module now. The one home of the move.
MOVED = {
    "averaging": "step.averaging",
    "batch_log": "logs.rows",
    "board": "logs.board",
    "cli_parser": "cli.parser",
    "compare": "analysis.compare",
    "compiled_loop": "training.compiled_loop",
    "data": "workloads.data",
    "distribute": "training.distribute",
    "docgen": "cli.docgen",
    "event_encoding": "logs.encoding",
    "event_files": "logs.event_files",
    "external_configurables": "keras_classes",
    "gin_imports": "config.imports",
    "gin_references": "config.references",
    "guard": "step.guard",
    "inputs": "workloads.inputs",
    "keras_eval_weights": "keras_fit.eval_weights",
    "keras_log": "keras_fit.log",
    "keras_lr_find": "keras_fit.range_test",
    "listing": "cli.listing",
    "lr_find": "studies.lr_find",
    "lr_suggest": "analysis.lr_suggest",
    "models": "workloads.models",
    "precision": "step.precision",
    "profiling": "studies.profile",
    "profiling_report": "analysis.profile_report",
    "quiet": "logs.quiet",
    "random_state": "step.random_state",
    "resume": "training.resume",
    "run": "training.outer_loop",
    "run_config": "config.run_config",
    "run_labels": "analysis.run_labels",
    "rundir": "training.run_dir",
    "sampling": "studies.sampling",
    "signals": "controllers.signals",
    "summaries": "logs.summaries",
    "sweep": "studies.sweep",
    "sweep_resume": "studies.sweep_resume",
    "tf_data_cache": "workloads.tf_data_cache",
    "trainer": "training.trainer",
    "trainer_checks": "training.arguments",
    "unknown_arguments": "config.arguments",
    "workload": "workloads.model_loss",
    "xla_sampler": "workloads.xla_sampler",
}
# Old modules whose path is now a package; the package holds what users imported
# (`lrresearch.keras_fit.ControlledModel`), the rest moved to a module inside it.
BECAME_PACKAGES = {
    "cli": "cli.commands",
    "config": "config.parse",
    "keras_fit": "keras_fit.model",
    "step": "step.batch",
}
# Names an old module re-exported from other modules (`from lrresearch.trainer import
# RunDirExistsError`, an error users catch): they still resolve from the old path, with
# the warning naming their home. The new modules re-export nothing.
MOVED_NAMES = {
    "trainer": {
        "DiskFullError": "training.outer_loop",
        "NonFiniteLossError": "training.outer_loop",
        "TrainingInterrupted": "training.outer_loop",
        "TrainResult": "training.outer_loop",
        "RunDirExistsError": "training.run_dir",
        "make_run_dir": "training.run_dir",
    },
}


class _OldModule(ModuleType):
    """An old path whose module also re-exported names from elsewhere (`MOVED_NAMES`):
    its own names are the new module's, the others are found in their home."""

    def __init__(self, name: str, module: ModuleType, names: dict[str, str]):
        super().__init__(name, module.__doc__)
        self._module, self._names = module, names

    def __getattr__(self, name: str) -> object:
        if name.startswith("__") or name not in self._names:
            return getattr(self._module, name)
        home = "lrresearch." + self._names[name]
        warnings.warn(
            f"{self.__name__}.{name} moved to {home} (lrresearch 0.2); import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(home), name)

    def __dir__(self) -> list[str]:
        return sorted({*dir(self._module), *self._names})


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `lrresearch.<old>` and loads it as the module it became."""

    def find_spec(self, fullname: str, path: object, target: object = None):
        package, _, old = fullname.partition(".")
        if package != "lrresearch" or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        old = spec.name.partition(".")[2]
        new = "lrresearch." + MOVED[old]
        warnings.warn(
            f"{spec.name} moved to {new} (lrresearch 0.2); import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new)
        if old in MOVED_NAMES:
            return _OldModule(spec.name, module, MOVED_NAMES[old])
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The module was executed under its new name."""


def install() -> None:
    """Lets the old module paths import (once per process)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())  # before an editable install's finder


def forward(package: str) -> Callable[[str], Any]:
    """A package's module `__getattr__` for `BECAME_PACKAGES`: `lrresearch.config.X` of the
    flat layout (a name of the old `config.py`) still resolves, now from
    `lrresearch.config.parse`, with a `DeprecationWarning` that names the new spelling."""
    new = "lrresearch." + BECAME_PACKAGES[package.partition(".")[2]]

    def module_getattr(name: str) -> Any:
        if name.startswith("__") or importlib.util.find_spec(f"{package}.{name}"):
            raise AttributeError(name)  # a submodule: the import system loads it
        module = importlib.import_module(new)
        if not hasattr(module, name):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        warnings.warn(
            f"{package}.{name} moved to {new}.{name} (lrresearch 0.2)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(module, name)

    return module_getattr
