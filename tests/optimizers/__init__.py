"""Tests of `lrresearch.optimizers`, against numpy transcriptions of the authors' code."""
