"""`lrresearch sweep`'s flags, default and examples (moved out of `cli.parser`, which
calls `add_sweep_parser` from `build_parser`).

`parser.py` imports this module, so the flags it shares with every command (`--gin_file`
and friends, `--logdir` and friends) are passed in rather than imported back.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

# The command's `--help` ends with these; tests/test_doc_commands.py parses every
# line that starts with `lrresearch` (through `parser.EXAMPLES`).
EXAMPLES = """\
examples:
  lrresearch sweep --sweep='Trainer.seed=[0, 1, 2]'
  lrresearch sweep --gin_file=strategies/loss_trend.gin \\
      --sweep='LossTrendController.window=[50, 100, 200]' --sweep='Trainer.seed=[0, 1]'
  lrresearch sweep --gin_file=strategies/loss_trend.gin --sweep_random=8 --seed=1 \\
      --sample='LossTrendController.max_lr=loguniform(1e-3, 1)' \\
      --sample='Trainer.batch_size=choice([32, 64, 128])'
  lrresearch sweep --sweep_random=4 --sample='Trainer.batch_size=choice([32, 64, 128])' \\
      --sweep='Trainer.controller=[@GradNormController(), @ConstantController()]'
  lrresearch sweep --method=cosine=strategies/warmup_cosine.gin \\
      --method=prodigy=strategies/prodigy.gin \\
      --method='const=Trainer.controller = @ConstantController(); ConstantController.lr = 0.05' \\
      --sweep='cosine:WarmupCosineController.base_lr=[0.01, 0.1]' --sweep='Trainer.seed=[0, 1, 2]'
  lrresearch sweep --resume --sweep_name=sweep-20250101-120000   # after Ctrl-C

distributions for --sample (gin syntax; each binding has its own seeded generator):
  uniform(low, high)         a float in [low, high)
  loguniform(low, high)      a float, each decade equally likely (0 < low)
  intuniform(low, high)      an int in [low, high], both included
  logintuniform(low, high)   an int in [low, high], log-uniform (1 <= low)
  choice([v1, v2, ...])      one of the gin values (numbers, strings, @Name(), tuples)
With --sweep as well, every grid combination runs at the same drawn points.
With --method, each method runs the unprefixed axes and those prefixed NAME: (its own)."""

METHOD_HELP = (
    "a whole method as one value of an axis: NAME=SOURCE, SOURCE gin files (names ending "
    "in .gin, found as --gin_file's) and gin bindings separated by ';', applied on top of "
    "the --gin_file/--gin_param config, e.g. 'cosine=strategies/warmup_cosine.gin' or "
    "'prodigy=Trainer.optimizer = @Prodigy; Trainer.controller = @ConstantController()'; "
    "repeatable: each method runs the unprefixed --sweep/--sample axes and its own, "
    "written NAME:Configurable.param=..., and its runs are named NNN-NAME-..."
)


def add_sweep_parser(
    commands: Any,
    add_gin_flags: Callable[[argparse.ArgumentParser], None],
    add_output_flags: Callable[..., None],
) -> None:
    """`lrresearch sweep`: the cross product of gin bindings, per `--method` if any."""
    sweep = commands.add_parser(
        "sweep",
        help="run a grid (--sweep) and/or random points (--sweep_random, --sample) of gin "
        "bindings, one run directory per point",
        description="Run every combination of the --sweep values (and, with "
        "--sweep_random=N, each at N points drawn from the --sample distributions), one "
        "after another, each as `lrresearch train` would, into one sweep directory; a "
        "failed run is reported at the end and does not stop the others. With --method, "
        "the whole methods are one more axis, each with axes of its own. The sweep "
        "directory carries sweep.json (every point's method, bindings and drawn values) "
        "and the HParams experiment, so TensorBoard's HParams tab lists every run.",
    )
    add_gin_flags(sweep)
    sweep.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="BINDING=[V1, V2]",
        help="e.g. 'Trainer.seed=[0, 1, 2]' or "
        "'Trainer.controller=[@GradNormController(), @LossTrendController()]';"
        " repeat for a cross product; 'NAME:BINDING=[...]' for --method NAME only",
    )
    sweep.add_argument("--method", action="append", default=[], metavar="NAME=SOURCE",
                       help=METHOD_HELP)  # fmt: skip
    sweep.add_argument(
        "--sweep_random",
        type=int,
        default=0,
        metavar="N",
        help="draw N random points from the --sample distributions (0: grid only)",
    )
    sweep.add_argument(
        "--sample",
        action="append",
        default=[],
        metavar="BINDING=DIST(...)",
        help="e.g. 'LossTrendController.max_lr=loguniform(1e-3, 1)' or "
        "'Trainer.batch_size=choice([32, 64, 128])'; repeatable; needs --sweep_random; "
        "'NAME:BINDING=DIST(...)' for --method NAME only",
    )
    sweep.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the --sample draws (not of training: sweep Trainer.seed for that)",
    )
    add_output_flags(sweep, "--sweep_name", "sweep-<YYYYmmdd-HHMMSS>")
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep <logdir>/<sweep_name> with its own flags (its sweep.json): "
        "finished runs are skipped, a stopped one resumes from its checkpoint, the rest "
        "run; --gin_params apply on top; needs --sweep_name",
    )
