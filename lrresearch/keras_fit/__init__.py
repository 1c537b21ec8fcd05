"""Per-batch LR control inside Keras `model.fit`: `ControlledModel` (the controller in
`train_step`), `PerBatchSummaries` (every batch in TensorBoard) and `lr_find` (the LR
range test on a user's own model and pipeline).

Usage:
    from lrresearch.keras_fit import ControlledModel, PerBatchSummaries, lr_find
"""

from lrresearch import moved
from lrresearch.keras_fit.log import PerBatchSummaries
from lrresearch.keras_fit.model import ControlledModel
from lrresearch.keras_fit.range_test import lr_find

__all__ = ["ControlledModel", "PerBatchSummaries", "lr_find"]
__getattr__ = moved.forward("lrresearch.keras_fit")
