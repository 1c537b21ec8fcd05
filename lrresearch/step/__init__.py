"""One batch, shared by the trainer's compiled loop and `ControlledModel`: the LR set from
the controller, the non-finite guard, mixed precision, iterate averaging, the random
streams a step draws from.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """`lrresearch.step.<name>` of the flat layout, now in `lrresearch.step.batch`."""
    import importlib
    import warnings

    module = importlib.import_module("lrresearch.step.batch")
    if name.startswith("__") or not hasattr(module, name):
        raise AttributeError(f"module 'lrresearch.step' has no attribute {name!r}")
    warnings.warn(
        f"lrresearch.step.{name} moved to lrresearch.step.batch.{name} (lrresearch 0.2)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(module, name)
