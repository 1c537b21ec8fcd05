"""Placeholder: being written (issue 16)."""

from lrresearch.optimizers.whole_step import WholeStepOptimizer


class Mechanic(WholeStepOptimizer):
    """Not yet implemented."""
