"""Tests of `lrresearch.studies`: sweep, sampling, profile, lr-find."""
