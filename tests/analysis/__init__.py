"""Tests of `lrresearch.analysis`: `compare` and what it reads."""
