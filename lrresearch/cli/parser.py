"""The `lrresearch` command line's parser: every command, flag, default and example.

`lrresearch.cli.commands` holds the handlers; this module only describes the interface, so `--help`,
`lrresearch list` and the generated CLI reference (`docs/reference/cli.md`) read it
without running anything.
"""

from __future__ import annotations

import argparse
from typing import Any

from lrresearch.cli import study_parser, sweep_parser
from lrresearch.cli.compare_parser import add_compare_parser
from lrresearch.cli.flags import add_gin_flags as _add_gin_flags
from lrresearch.cli.flags import add_output_flags as _add_output_flags

# Each command's `--help` ends with these (argparse epilogs, printed as written).
# tests/cli/test_cli.py parses every line that starts with `lrresearch`, gin bindings included.
EXAMPLES = {
    "train": """\
examples:
  lrresearch train                                   # the built-in default (base.gin)
  lrresearch train --gin_file=strategies/loss_trend.gin --gin_param='Trainer.steps = 500'
  lrresearch train --gin_file=experiments/digits_cnn_cyclical.gin --run_name=cnn
  lrresearch train --gin_file=experiments/digits_cnn_cyclical.gin --run_name=cnn --resume
  lrresearch list controllers                        # what Trainer.controller can be""",
    "profile": """\
examples:
  lrresearch profile                                 # every built-in controller
  lrresearch profile --controllers=GradNormController,LossTrendController --rounds=5
  lrresearch profile --controllers='PolyakController,@MaxChange()' \\
      --gin_param='MaxChange.controller = @PolyakController()'
  lrresearch profile --controllers=GradNormController,@config \\
      --gin_file=experiments/cosine_restarts_times_nudge.gin   # the file's Product""",
    "lr-find": """\
examples:
  lrresearch lr-find
  lrresearch lr-find --gin_file=strategies/constant.gin --num_steps=300
  lrresearch lr-find --binding=WarmupCosineController.base_lr --write_gin=lr.gin""",
    "sweep": sweep_parser.EXAMPLES,
    "compare": """\
examples:
  lrresearch compare runs/sweep-20250101-120000      # every run of a sweep, seeds grouped
  lrresearch compare runs/GradNorm-20250101-120000 \\
      runs/LossTrend-20250101-120500 --out=comparison --target_accuracy=0.9
  lrresearch compare runs/sweep-20250101-120000 --group_by=Trainer.controller
  lrresearch compare runs/sweep-20250101-120000 --sensitivity --metric=eval/accuracy
  lrresearch compare runs/sweep-20250101-120000 --x=examples --export=points.parquet""",
    "list": """\
examples:
  lrresearch list                                    # everything, grouped
  lrresearch list controllers
  lrresearch list wrappers optimizers
  lrresearch list configs                            # the shipped gin files, by --gin_file name""",
}


class HelpFormatter(argparse.HelpFormatter):
    """Examples printed as written (a text of several lines is kept as it is; a
    one-line description is wrapped); every flag's help ends with its default (unless
    it says it already, the flag is required, or it is a switch: off unless given)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.required
            or action.nargs == 0
            or action.default is argparse.SUPPRESS
            or "default" in text
        ):
            return text
        shown = "none" if action.default == [] else "%(default)s"
        return f"{text} (default: {shown})".strip()


def _list_parser(commands: Any) -> None:
    """`lrresearch list`: what a gin file can name."""
    from lrresearch.cli import listing

    lister = commands.add_parser(
        "list",
        help="list controllers, wrappers, optimizers, datasets, models, losses and metrics "
        "with their gin names, and the shipped gin files",
        description="Print what a gin file can name, grouped: each entry's gin spelling "
        "with its arguments' defaults, and the first sentence of its docstring (configs: "
        "the shipped gin files by --gin_file name, with their first comment).",
    )
    lister.add_argument(
        "what",
        nargs="*",
        choices=(*listing.GROUPS, "all"),
        default="all",
        metavar="GROUP",
        help=f"any of {', '.join(listing.GROUPS)} or all (default: all)",
    )


def _train_parser(commands: Any) -> None:
    """`lrresearch train`: one run."""
    train = commands.add_parser(
        "train",
        help="train one run (the built-in default with no --gin_file)",
        description="Train one run and log every batch to TensorBoard.",
    )
    _add_gin_flags(train)
    _add_output_flags(
        train,
        "--run_name",
        "<controller>-<YYYYmmdd-HHMMSS>, the controller's class without 'Controller' "
        "(GradNorm-...), after the optimizer's name when it sets its own step: "
        "Prodigy-WarmupCosine-...",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue <logdir>/<run_name> from its newest intact checkpoint (a run "
        "that does not exist, or has no checkpoint yet, is started); needs --run_name. "
        "With no --gin_file the run's own config.gin is used, --gin_params on top",
    )


def _profile_parser(commands: Any) -> None:
    """`lrresearch profile`: per-batch overhead of each controller."""
    prof = commands.add_parser(
        "profile",
        help="per-batch overhead of each controller vs a constant-LR baseline, with traces",
        description="Time every controller against a constant-LR baseline (interleaved "
        "blocks, one process), capture one profiler trace per controller, and write "
        "overhead.csv, overhead.md and overhead.png. Model, data, optimizer and "
        "steps_per_loop come from the gin config.",
    )
    _add_gin_flags(prof)
    prof.add_argument(
        "--controllers",
        default=None,
        metavar="A,B,...",
        help="controllers to compare, comma-separated: built-in names, or gin references "
        "such as @MaxChange() or @smooth/MaxChange() built with the --gin_file/--gin_param "
        "bindings, or @config for the gin config's Trainer.controller; each row is labelled "
        "as written (default: every built-in standalone controller). Quote a list with a "
        "reference for the shell: --controllers='A,@MaxChange()'",
    )
    prof.add_argument(
        "--optimizers",
        default=None,
        metavar="A,B,...",
        help="optimizers to add, comma-separated (e.g. Prodigy,DAdaptAdam,Mechanic,"
        "ScheduleFreeAdamW): one row each, ConstantController with that optimizer in place "
        "of the gin config's, with the state it adds",
    )
    _add_output_flags(
        prof,
        "--run_name",
        "profile-<YYYYmmdd-HHMMSS>",
        "parent of the profile directory (default: runs)",
    )
    prof.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    prof.add_argument("--block_batches", type=int, default=400, help="batches per timed block")
    prof.add_argument(
        "--trace_batches",
        type=int,
        default=40,
        help="batches in each profiler trace; keep it under ~100",
    )


def _lr_find_parser(commands: Any) -> None:
    """`lrresearch lr-find`: the LR range test."""
    find = commands.add_parser(
        "lr-find",
        help="LR range test: ramp the LR per batch on a throwaway model, suggest an LR",
        description="Ramp the LR (exponentially, or linearly with --mode=linear) from "
        "--start_lr to --end_lr over --num_steps batches on a fresh copy of the "
        "gin-configured model, stop when the smoothed loss diverges, print four suggestions "
        "(steepest descent, min/10, and fastai's valley and slide), and write lr_find.png "
        "and the summaries to a new run directory.",
    )
    _add_gin_flags(find)
    find.add_argument("--start_lr", type=float, default=1e-6)
    find.add_argument("--end_lr", type=float, default=10.0)
    find.add_argument("--num_steps", type=int, default=200, help="batches (default 200)")
    find.add_argument(
        "--smoothing", type=float, default=0.98, help="EMA decay of the loss (default 0.98)"
    )
    find.add_argument(
        "--diverge_factor",
        type=float,
        default=4.0,
        help="stop once the smoothed loss exceeds this times its minimum",
    )
    find.add_argument(
        "--mode",
        choices=("exponential", "linear"),
        default="exponential",
        help="the ramp from --start_lr to --end_lr (default exponential; linear as "
        "PyTorch Lightning's lr_find(mode='linear'))",
    )
    find.add_argument(
        "--suggestion",
        choices=("steepest", "min10", "valley", "slide"),
        default="steepest",
        help="which suggestion goes into the printed binding (default steepest; valley "
        "and slide are fastai's, valley its default); all four are printed and plotted",
    )
    find.add_argument(
        "--binding",
        default="ConstantController.lr",
        help="gin parameter the suggestion is printed for (default ConstantController.lr)",
    )
    find.add_argument(
        "--write_gin",
        default=None,
        metavar="FILE",
        help="also write the binding to this new .gin file (never overwritten)",
    )
    _add_output_flags(find, "--run_name", "lr-find-<YYYYmmdd-HHMMSS>")


def _sweep_parser(commands: Any) -> None:
    """`lrresearch sweep` (its flags in `sweep_parser`)."""
    sweep_parser.add_sweep_parser(commands, _add_gin_flags, _add_output_flags)


def _board_parser(commands: Any) -> None:
    """`lrresearch board`: TensorBoard serving every batch."""
    board = commands.add_parser(
        "board",
        help="start TensorBoard on run directories, serving every batch of every run",
        description="Start TensorBoard on LOGDIR (default: runs) with --samples_per_plugin "
        "raised so that every scalar point of every run is served (TensorBoard keeps only "
        "1,000 per tag by default, so longer runs lose batches, spikes included). Prints "
        "the URL and the plain `tensorboard` command; Ctrl-C stops it.",
        epilog="""examples:
  lrresearch board                                   # every run under runs/
  lrresearch board runs/sweep-20261129-104344        # one sweep (or one run)
  lrresearch board runs other_runs --port 6007       # several directories
  lrresearch board --logdir runs                     # TensorBoard's spelling
  lrresearch board --logdir_spec a:runs/sweep-a,b:runs/sweep-b   # named: a/<run>, b/<run>""",
    )
    board.add_argument(
        "logdirs",
        nargs="*",
        default=[],
        metavar="LOGDIR",
        help="directories holding runs (default: runs)",
    )
    board.add_argument(
        "--logdir",
        action="append",
        default=[],
        dest="logdir_flags",
        metavar="DIR",
        help="a directory holding runs, as TensorBoard's --logdir; repeatable; the same "
        "as LOGDIR (default: runs)",
    )
    board.add_argument(
        "--logdir_spec",
        default=None,
        metavar="NAME:DIR,...",
        help="TensorBoard's named directories (runs show as NAME/<run>); instead of "
        "LOGDIR and --logdir (default: none)",
    )
    board.add_argument("--port", type=int, default=6006, help="(default: 6006)")
    board.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 serves other machines too (default: 127.0.0.1)",
    )


def build_parser() -> argparse.ArgumentParser:
    from lrresearch import __version__

    parser = argparse.ArgumentParser(
        prog="lrresearch",
        description="Per-batch learning-rate control for TensorFlow, seen in TensorBoard.",
    )
    parser.add_argument("--version", action="version", version=f"lrresearch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for add in (
        _train_parser,
        _profile_parser,
        _lr_find_parser,
        _sweep_parser,
        add_compare_parser,
        _board_parser,
        study_parser.tune_parser,
    ):
        add(commands)
    _list_parser(commands)
    for name, command in commands.choices.items():
        _explorable(command, EXAMPLES.get(name))
    return parser


def _explorable(command: argparse.ArgumentParser, examples: str | None) -> None:
    """A command's `--help` for a newcomer: its examples block, and every flag's
    default (a flag with no help of its own gets its default as its help)."""
    command.formatter_class = HelpFormatter
    command.epilog = command.epilog or examples
    for action in command._actions:  # argparse has no public list of a parser's flags
        if action.option_strings and action.help is None:
            action.help = "(default: %(default)s)"
