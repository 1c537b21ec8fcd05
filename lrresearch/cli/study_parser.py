"""The parser of `lrresearch tune` (studies on Optuna); `parser.build_parser` adds it."""

from __future__ import annotations

import argparse
from typing import Any

from lrresearch.cli.flags import add_gin_flags, add_output_flags

METHOD_HELP = (
    "a whole method as one arm of the study: NAME=SOURCE, as sweep --method (gin files "
    "and bindings separated by ';', on top of the --gin_file/--gin_param config), e.g. "
    "'cosine=strategies/warmup_cosine.gin'; repeatable: each method is its own Optuna "
    "study <study_name>/NAME with the unprefixed --search axes and its own "
    "(NAME:Configurable.param=...), --trials trials, runs named NAME-NNN-..."
)

TUNE_EXAMPLES = """\
examples:
  lrresearch tune --gin_file=strategies/warmup_cosine.gin \\
      --search='WarmupCosineController.base_lr=loguniform(1e-4, 1e-1)' --trials=20
  lrresearch tune --gin_file=strategies/warmup_cosine.gin --study_name=wc \\
      --search='WarmupCosineController.base_lr=loguniform(1e-4, 1e-1)' \\
      --search='Trainer.batch_size=choice([32, 64, 128])' --trials=40 --workers=2 \\
      --metric=eval/accuracy --pruner=median
  lrresearch tune --resume --study_name=wc             # after Ctrl-C or a killed worker
  lrresearch tune --study_name=vs --trials=10 --method=cosine=strategies/warmup_cosine.gin \
      --method='gn=strategies/grad_norm.gin' --search='Trainer.seed=choice([0, 1, 2])' \
      --search='cosine:WarmupCosineController.base_lr=loguniform(1e-4, 1e-1)' \
      --search='gn:GradNormController.base_lr=loguniform(1e-3, 1)'   # 10 trials each
  lrresearch tune --gin_file=strategies/warmup_cosine.gin --study_name=pg --trials=40 \\
      --search='WarmupCosineController.base_lr=loguniform(1e-4, 1e-1)' \\
      --storage=postgresql://me@dbhost:5432/studies  # then, on other machines:
  lrresearch tune --resume --study_name=pg --storage=postgresql://me@dbhost:5432/studies

--search takes sweep --sample's distributions: uniform(low, high), loguniform(low, high),
intuniform(low, high), logintuniform(low, high), choice([v1, v2, ...]). --sampler grid
needs every axis discrete (choice, or an int range); a grid point whose run fails
(e.g. diverges) is reported in tune.md and not run again. With --method, each method is its own
Optuna study <study_name>/<NAME> with --trials trials of its own; a method that no
--search applies to runs one trial (its config is fixed)."""


def tune_parser(commands: Any) -> None:
    """`lrresearch tune`: an Optuna study, every trial a run directory."""
    from lrresearch.studies import tune_study as tune

    parser = commands.add_parser(
        "tune",
        help="tune gin bindings with Optuna (TPE, random or grid; pruning; parallel and "
        "resumable workers), one run directory per trial",
        description="Run an Optuna study: each trial draws the --search bindings, trains "
        "as `lrresearch train` would into <logdir>/<study_name>/NNN-<param=value>-..., and "
        "reports the final --metric. The study stops when --trials trials are finished "
        "(complete or pruned) across every worker; it prints the trials best first and "
        "writes them to tune.md, next to study.json (the flags), the storage (SQLite by "
        "default) and the HParams experiment.",
        epilog=TUNE_EXAMPLES,
    )
    add_gin_flags(parser)
    parser.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="BINDING=DIST(...)",
        help="a binding and its distribution, as sweep --sample: e.g. "
        "'WarmupCosineController.base_lr=loguniform(1e-4, 1e-1)'; repeatable; "
        "'NAME:BINDING=DIST(...)' for --method NAME only",
    )
    parser.add_argument("--method", action="append", default=[], metavar="NAME=SOURCE",
                        help=METHOD_HELP)  # fmt: skip
    parser.add_argument("--trials", type=int, default=None, metavar="N",
                        help="finished trials (complete + pruned) the study stops at, per "
                        "method with --method; required for a new study (no default)")  # fmt: skip
    parser.add_argument(
        "--sampler",
        choices=tune.SAMPLERS,
        default="tpe",
        help="Optuna's TPESampler, RandomSampler, or GridSampler (every combination of "
        "discrete axes, at most --trials of them)",
    )
    parser.add_argument(
        "--metric", default="eval/loss", help="the eval tag whose final value is the objective"
    )
    parser.add_argument(
        "--direction",
        choices=tune.DIRECTIONS,
        default=None,
        help="default: maximize for an accuracy-like --metric, else minimize",
    )
    parser.add_argument(
        "--pruner",
        choices=tune.PRUNERS,
        default="none",
        help="stop poor trials at an evaluation (Trainer.eval_every); the run gets pruned.json",
    )
    parser.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="an SQLAlchemy URL, e.g. postgresql://user@host:5432/db, shared by workers on "
        "several machines (default: sqlite:///<study folder>/study.db)",
    )
    parser.add_argument("--workers", type=int, default=1, metavar="K",
                        help="worker processes on this machine, each with cores // K "
                        "TensorFlow threads")  # fmt: skip
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the sampler, not of training (default: none, a random seed)",
    )
    logdir_help = "parent of the study folder (default: runs)"
    add_output_flags(parser, "--study_name", "tune-<YYYYmmdd-HHMMSS>", logdir_help)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue or join the study <logdir>/<study_name> with its own flags "
        "(study.json, or the --storage's copy on another machine) until it has its trials; "
        "a trial stopped by Ctrl-C or a killed worker resumes from its checkpoint",
    )
    # Hidden: a worker started by --workers (no final table), and the heartbeat in
    # seconds that a new study records (tests use 1 to find a killed worker quickly).
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--heartbeat", type=int, default=tune.HEARTBEAT_SECONDS, help=argparse.SUPPRESS
    )
