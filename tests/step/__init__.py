"""Tests of `lrresearch.step`: one batch's parts (guard, precision, averaging, random state,
optimizer hyperparameters)."""
