"""Per-batch LR controllers: one module per family, all gin configurables."""

from lrresearch.controllers.adaptive import (
    HypergradientController,
    PlateauController,
    PolyakController,
)
from lrresearch.controllers.base import Controller, ControllerOutput
from lrresearch.controllers.chain import Chain
from lrresearch.controllers.compose import (
    Clamp,
    LossNudgeFactor,
    MaxChange,
    Product,
    Warmup,
)
from lrresearch.controllers.parameter_free import (
    DAdaptSGDController,
    DoGController,
    DoWGController,
)
from lrresearch.controllers.pytorch import (
    CosineRestartsController,
    CyclicController,
    OneCycleController,
)
from lrresearch.controllers.schedules import (
    ConstantController,
    WarmupCosineController,
    WSDController,
)
from lrresearch.controllers.seed import (
    CosineCycleController,
    CyclicalController,
    GradNormController,
    LossTrendController,
)
from lrresearch.controllers.timm import TimmCosineController

__all__ = [
    "Chain",
    "Clamp",
    "ConstantController",
    "Controller",
    "ControllerOutput",
    "CosineCycleController",
    "CosineRestartsController",
    "CyclicController",
    "CyclicalController",
    "DAdaptSGDController",
    "DoGController",
    "DoWGController",
    "GradNormController",
    "HypergradientController",
    "LossNudgeFactor",
    "LossTrendController",
    "MaxChange",
    "OneCycleController",
    "PlateauController",
    "PolyakController",
    "Product",
    "TimmCosineController",
    "WSDController",
    "Warmup",
    "WarmupCosineController",
]
