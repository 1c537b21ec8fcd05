"""Placeholder: being written (issue 16)."""

from lrresearch.optimizers.whole_step import WholeStepOptimizer


class Prodigy(WholeStepOptimizer):
    """Not yet implemented."""


class DAdaptAdam(WholeStepOptimizer):
    """Not yet implemented."""
