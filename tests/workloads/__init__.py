"""Tests of `lrresearch.workloads`: data, models, losses and metrics, the built-in workloads."""
