"""`lrresearch compare`'s flags (called from `parser.build_parser`; its examples are in
`parser.EXAMPLES`). The defaults and choices come from `lrresearch.analysis`, their one
home."""

from __future__ import annotations

import argparse
from typing import Any

from lrresearch.analysis.axes import X_KINDS
from lrresearch.analysis.sensitivity import WITHIN_PCT

# `--sensitivity` given without a binding: every swept LR-valued binding.
EVERY_LR_BINDING = ""


def add_compare_parser(commands: Any) -> None:
    """`lrresearch compare`: tables and plots of runs and of groups of runs."""
    comp = commands.add_parser(
        "compare",
        help="table and plots comparing runs or sweeps, grouped over seeds (TensorBoard's loader)",
        description="For each group of runs (runs equal in everything but Trainer.seed, "
        "read from their config.gin, or equal in the --group_by bindings): n, mean ± "
        "sample std of final and best eval metrics and of steps to a target; then for each "
        "run (a directory with an `lr` series, or the runs one level below a sweep or study "
        "directory): final and best eval metrics, steps to a target, mean LR, number of LR "
        "changes larger than --change_pct, time per step; and PNG plots of LR, smoothed "
        "loss and gradient norm (each group's mean with a ± std band) against --x.",
    )
    comp.add_argument(
        "paths", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="runs, or sweeps of runs"
    )
    comp.add_argument(
        "--out",
        default=None,
        help="folder for compare.md/.csv/.png, compare_groups.csv and sensitivity.* "
        "(default: the first path)",
    )
    comp.add_argument(
        "--target_accuracy",
        type=float,
        default=0.95,
        help="'steps to target' counts batches until eval/accuracy reaches this",
    )
    comp.add_argument(
        "--target_loss",
        type=float,
        default=0.2,
        help="'steps to target' counts batches until eval/loss falls to this",
    )
    comp.add_argument(
        "--change_pct",
        type=float,
        default=10.0,
        help="an LR change larger than this percentage counts as a change",
    )
    comp.add_argument(
        "--allow_damaged",
        action="store_true",
        help="compare runs with truncated or damaged event files up to the damage "
        "(marked 'damaged'); without it they are an error (exit 2)",
    )
    _add_group_flags(comp)


def _add_group_flags(comp: argparse.ArgumentParser) -> None:
    comp.add_argument(
        "--group_by",
        action="append",
        default=[],
        metavar="BINDING",
        help="group runs by the values of this gin binding (repeatable; all other "
        "differences ignored) instead of grouping runs that differ only in Trainer.seed",
    )
    comp.add_argument(
        "--x",
        choices=X_KINDS,
        default=X_KINDS[0],
        help="x axis of the curves: batches, examples seen (steps x Trainer.batch_size) or "
        "wall time in seconds since the run's first event (a resumed run's stop excluded)",
    )
    comp.add_argument(
        "--metric",
        default="eval/loss",
        help="eval tag of the --sensitivity figure and of the curves' last panel",
    )
    comp.add_argument(
        "--sensitivity",
        action="append",
        nargs="?",
        const=EVERY_LR_BINDING,
        default=None,
        metavar="BINDING",
        help="also write sensitivity.md/.csv/.png: the final --metric against each swept "
        "LR-valued binding (parameter lr, learning_rate, *_lr, eta...), or the BINDING "
        "named (repeatable); parameter-free strategies as a horizontal band (default: off)",
    )
    comp.add_argument(
        "--within_pct",
        type=float,
        default=WITHIN_PCT,
        help="the sensitivity table's width of the LR range within this percentage of the "
        "best mean (in decades)",
    )
    comp.add_argument(
        "--export",
        default=None,
        metavar="FILE",
        help="write every scalar point of every run as one tidy table (run, group, step, "
        "tag, value, wall_time) to FILE, .csv or .parquet (pyarrow; never overwritten) "
        "(default: no export)",
    )


def sensitivity_bindings(values: list[str] | None) -> tuple[str, ...] | None:
    """`--sensitivity`'s values as `CompareOptions.sensitivity`: None (not given), ()
    (every swept LR binding) or the bindings named."""
    if values is None:
        return None
    return tuple(v for v in values if v != EVERY_LR_BINDING)
