"""Per-batch LR controllers: one module per family, all gin configurables."""

from lrresearch.controllers.base import Controller, ControllerOutput
from lrresearch.controllers.pytorch import (
    CosineRestartsController,
    CyclicController,
    OneCycleController,
)
from lrresearch.controllers.schedules import ConstantController, WarmupCosineController
from lrresearch.controllers.seed import (
    CyclicalController,
    GradNormController,
    LossTrendController,
)

__all__ = [
    "ConstantController",
    "Controller",
    "ControllerOutput",
    "CosineRestartsController",
    "CyclicController",
    "CyclicalController",
    "GradNormController",
    "LossTrendController",
    "OneCycleController",
    "WarmupCosineController",
]
