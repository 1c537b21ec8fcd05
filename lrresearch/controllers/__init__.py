"""Per-batch LR controllers: one module per family, all gin configurables."""

from lrresearch.controllers.adaptive import (
    HypergradientController,
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
from lrresearch.controllers.decay import (
    ExponentialDecayController,
    InverseSqrtController,
    InverseTimeDecayController,
    PolynomialDecayController,
)
from lrresearch.controllers.follow_lr import DecayFollowsLR
from lrresearch.controllers.keras_schedule import ScheduleController
from lrresearch.controllers.ngn import AdaGradNormController, NGNController
from lrresearch.controllers.parameter_free import (
    DAdaptSGDController,
    DoGController,
    DoWGController,
)
from lrresearch.controllers.plateau import PlateauController
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
from lrresearch.controllers.steps import (
    MultiStepController,
    PiecewiseConstantController,
    StepController,
)
from lrresearch.controllers.timm import TimmCosineController

__all__ = [
    "AdaGradNormController",
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
    "DecayFollowsLR",
    "DoGController",
    "DoWGController",
    "ExponentialDecayController",
    "GradNormController",
    "HypergradientController",
    "InverseSqrtController",
    "InverseTimeDecayController",
    "LossNudgeFactor",
    "LossTrendController",
    "MaxChange",
    "MultiStepController",
    "NGNController",
    "OneCycleController",
    "PiecewiseConstantController",
    "PlateauController",
    "PolyakController",
    "PolynomialDecayController",
    "Product",
    "ScheduleController",
    "StepController",
    "TimmCosineController",
    "WSDController",
    "Warmup",
    "WarmupCosineController",
]
