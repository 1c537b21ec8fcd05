"""Keras classes a gin file may name: optimizers, LR schedules, losses and metrics, in
one place.

As gin's own `gin/tf/external_configurables.py`: registering third-party classes is
this module's only job, so it happens once, when `config.parse` imports it. A gin file
then writes them under their Keras spelling::

    Trainer.optimizer = @keras.optimizers.AdamW
    keras.optimizers.AdamW.weight_decay = 1e-4
    Trainer.loss = @keras.losses.Huber()
    keras.losses.Huber.delta = 0.5
    Trainer.metrics = [@keras.metrics.MeanAbsoluteError()]
    ScheduleController.schedule = @keras.optimizers.schedules.CosineDecay()
    keras.optimizers.schedules.CosineDecay.decay_steps = 1000

Losses and metrics that share a class name (`MeanSquaredError`, `BinaryCrossentropy`,
...) need the `keras.losses.` or `keras.metrics.` prefix; gin calls the short name
ambiguous. `REGISTERED` lists every name registered here (`config` suggests from it).
"""

from __future__ import annotations

import gin
import keras

_OPTIMIZERS = (
    "SGD",
    "Adam",
    "AdamW",
    "RMSprop",
    "Adagrad",
    "Adadelta",
    "Adamax",
    "Nadam",
    "Lion",
)
_SCHEDULES = (
    "CosineDecay",
    "CosineDecayRestarts",
    "ExponentialDecay",
    "InverseTimeDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
)
_LOSSES = (
    "MeanSquaredError",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanSquaredLogarithmicError",
    "Huber",
    "LogCosh",
    "SparseCategoricalCrossentropy",
    "CategoricalCrossentropy",
    "BinaryCrossentropy",
    "BinaryFocalCrossentropy",
    "CategoricalFocalCrossentropy",
    "KLDivergence",
    "Poisson",
    "CosineSimilarity",
    "Hinge",
    "SquaredHinge",
    "CategoricalHinge",
)
_METRICS = (
    "Mean",
    "MeanSquaredError",
    "RootMeanSquaredError",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanSquaredLogarithmicError",
    "LogCoshError",
    "CosineSimilarity",
    "R2Score",
    "Accuracy",
    "BinaryAccuracy",
    "CategoricalAccuracy",
    "SparseCategoricalAccuracy",
    "TopKCategoricalAccuracy",
    "SparseTopKCategoricalAccuracy",
    "SparseCategoricalCrossentropy",
    "CategoricalCrossentropy",
    "BinaryCrossentropy",
    "KLDivergence",
    "Poisson",
    "AUC",
    "Precision",
    "Recall",
)


def _register(module_name: str, class_names: tuple[str, ...]) -> list[str]:
    """Registers `keras.<module>.<Name>` for each name; returns the full names.

    A name that is already registered (by a caller that did it before this module
    existed) is left as it is: gin refuses a second registration."""
    module = keras
    for attribute in module_name.split(".")[1:]:  # keras.optimizers.schedules
        module = getattr(module, attribute)
    names = []
    for class_name in class_names:
        selector = f"{module_name}.{class_name}"
        try:
            gin.get_configurable(selector)
        except (KeyError, ValueError):
            gin.external_configurable(getattr(module, class_name), module=module_name)
        names.append(selector)
    return names


REGISTERED: tuple[str, ...] = (
    *_register("keras.optimizers", _OPTIMIZERS),
    *_register("keras.optimizers.schedules", _SCHEDULES),
    *_register("keras.losses", _LOSSES),
    *_register("keras.metrics", _METRICS),
)
