"""Tests of `lrresearch.training`: the trainer, its loops, resume, recovery, distribution."""
