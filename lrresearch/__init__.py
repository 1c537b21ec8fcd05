"""lrresearch: per-batch learning-rate control for TensorFlow, in-graph, seen in TensorBoard.

The public names load lazily, so `lrresearch.cli.commands` can configure TensorFlow's logging
before TensorFlow is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

from lrresearch import moved

__version__ = "0.1.0"

_EXPORTS = {
    "Controller": "lrresearch.controllers",
    "ControllerOutput": "lrresearch.controllers",
    "ConstantController": "lrresearch.controllers",
    "CyclicalController": "lrresearch.controllers",
    "GradNormController": "lrresearch.controllers",
    "LossTrendController": "lrresearch.controllers",
    "WarmupCosineController": "lrresearch.controllers",
    "MovingAverage": "lrresearch.controllers.signals",
    "Signals": "lrresearch.controllers.signals",
    "make_signals": "lrresearch.controllers.signals",
    "Trainer": "lrresearch.training.trainer",
    "ControlledModel": "lrresearch.keras_fit",
    "PerBatchSummaries": "lrresearch.keras_fit",
}
__all__ = sorted(_EXPORTS)
moved.install()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lrresearch' has no attribute {name!r}")
