"""Tests of `lrresearch.keras_fit`: `ControlledModel` and `PerBatchSummaries` in Keras `fit`."""
