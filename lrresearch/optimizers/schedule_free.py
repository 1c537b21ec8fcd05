"""Placeholder: being written (issue 16)."""

from lrresearch.optimizers.whole_step import WholeStepOptimizer


class ScheduleFreeSGD(WholeStepOptimizer):
    """Not yet implemented."""


class ScheduleFreeAdamW(WholeStepOptimizer):
    """Not yet implemented."""
