"""Flags several commands share (the gin configuration, the output directory); the
parsers of `parser.py` and `study_parser.py` add them."""

from __future__ import annotations

import argparse


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gin_file",
        action="append",
        default=[],
        metavar="FILE",
        help="gin config file: a path, or a shipped file's name (strategies/loss_trend.gin, "
        "see `lrresearch list configs`); repeat to layer files (later ones win)",
    )
    search_help = "a folder of yours where --gin_file names and gin `include`s are looked "
    search_help += "up after the working directory, before the shipped files; repeatable"
    parser.add_argument("--gin_search_path", action="append", default=[], metavar="DIR",
                        help=search_help)  # fmt: skip
    parser.add_argument(
        "--gin_param",
        action="append",
        default=[],
        metavar="BINDING",
        help="a gin binding such as 'Trainer.steps = 500'; repeatable, applied after the files",
    )


def add_output_flags(
    parser: argparse.ArgumentParser,
    name_flag: str,
    default_name: str,
    logdir_help: str = "parent of the run directory (default: runs)",
) -> None:
    """`--logdir`, the output directory's name flag and `--quiet`, shared by commands."""
    parser.add_argument("--logdir", default="runs", help=logdir_help)
    parser.add_argument(
        name_flag,
        default=None,
        help=f"directory name (default: {default_name}); an existing one is never overwritten",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
