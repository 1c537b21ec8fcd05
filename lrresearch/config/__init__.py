"""Configuration: gin parsing with errors that name the file and line, the researcher's own
modules, references on the command line, the config `--resume` uses.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """`lrresearch.config.<name>` of the flat layout, now in `lrresearch.config.parse`."""
    import importlib
    import importlib.util
    import warnings

    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # A submodule (`from lrresearch.config import files`): Python imports it when
        # this raises, instead of taking `parse`'s name for it with a warning.
        raise AttributeError(name)
    module = importlib.import_module("lrresearch.config.parse")
    if name.startswith("__") or not hasattr(module, name):
        raise AttributeError(f"module 'lrresearch.config' has no attribute {name!r}")
    warnings.warn(
        f"lrresearch.config.{name} moved to lrresearch.config.parse.{name} (lrresearch 0.2)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(module, name)
