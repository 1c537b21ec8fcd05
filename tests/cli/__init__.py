"""Tests of `lrresearch.cli`: the command line, run for real, and its help."""
