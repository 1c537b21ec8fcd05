"""lrresearch: per-batch learning-rate control for TensorFlow, in-graph, seen in TensorBoard."""

from lrresearch.controllers import (
    ConstantController,
    Controller,
    ControllerOutput,
    CyclicalController,
    GradNormController,
    LossTrendController,
    WarmupCosineController,
)
from lrresearch.signals import MovingAverage, Signals, make_signals

__all__ = [
    "ConstantController",
    "Controller",
    "ControllerOutput",
    "CyclicalController",
    "GradNormController",
    "LossTrendController",
    "MovingAverage",
    "Signals",
    "WarmupCosineController",
    "make_signals",
]
__version__ = "0.1.0"
