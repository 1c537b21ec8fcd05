"""`lrresearch` command line: `lrresearch train --gin_file=... --gin_param=...`."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

# Before TensorFlow loads: its C++ start-up chatter hides the run's own output.
from lrresearch import quiet

# Each command's `--help` ends with these (argparse epilogs, printed as written).
# tests/test_cli.py parses every line that starts with `lrresearch`, gin bindings included.
EXAMPLES = {
    "train": """\
examples:
  lrresearch train                                   # the built-in default (gin/base.gin)
  lrresearch train --gin_file=gin/strategies/loss_trend.gin --gin_param='Trainer.steps = 500'
  lrresearch train --gin_file=gin/experiments/digits_cnn_cyclical.gin --run_name=cnn
  lrresearch train --gin_file=gin/experiments/digits_cnn_cyclical.gin --run_name=cnn --resume
  lrresearch list controllers                        # what Trainer.controller can be""",
    "profile": """\
examples:
  lrresearch profile                                 # every built-in controller
  lrresearch profile --controllers=GradNormController,LossTrendController --rounds=5""",
    "lr-find": """\
examples:
  lrresearch lr-find
  lrresearch lr-find --gin_file=gin/strategies/constant.gin --num_steps=300
  lrresearch lr-find --binding=WarmupCosineController.base_lr --write_gin=lr.gin""",
    "sweep": """\
examples:
  lrresearch sweep --sweep='Trainer.seed=[0, 1, 2]'
  lrresearch sweep --gin_file=gin/strategies/loss_trend.gin \\
      --sweep='LossTrendController.window=[50, 100, 200]' --sweep='Trainer.seed=[0, 1]'
  lrresearch sweep --gin_file=gin/strategies/loss_trend.gin --sweep_random=8 --seed=1 \\
      --sample='LossTrendController.max_lr=loguniform(1e-3, 1)' \\
      --sample='Trainer.batch_size=choice([32, 64, 128])'
  lrresearch sweep --sweep_random=4 --sample='Trainer.batch_size=choice([32, 64, 128])' \\
      --sweep='Trainer.controller=[@GradNormController(), @ConstantController()]'

distributions for --sample (gin syntax; each binding has its own seeded generator):
  uniform(low, high)         a float in [low, high)
  loguniform(low, high)      a float, each decade equally likely (0 < low)
  intuniform(low, high)      an int in [low, high], both included
  logintuniform(low, high)   an int in [low, high], log-uniform (1 <= low)
  choice([v1, v2, ...])      one of the gin values (numbers, strings, @Name(), tuples)
With --sweep as well, every grid combination runs at the same drawn points.""",
    "compare": """\
examples:
  lrresearch compare runs/sweep-20250101-120000      # every run of a sweep
  lrresearch compare runs/GradNormController-20250101-120000 \\
      runs/LossTrendController-20250101-120500 --out=comparison --target_accuracy=0.9""",
    "list": """\
examples:
  lrresearch list                                    # everything, grouped
  lrresearch list controllers
  lrresearch list wrappers optimizers""",
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


def _add_gin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gin_file",
        action="append",
        default=[],
        metavar="FILE",
        help="gin config file; repeat to layer files (later ones win)",
    )
    parser.add_argument(
        "--gin_param",
        action="append",
        default=[],
        metavar="BINDING",
        help="a gin binding such as 'Trainer.steps = 500'; repeatable, applied after the files",
    )


def _add_output_flags(
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


def _list_parser(commands: Any) -> None:
    """`lrresearch list`: what a gin file can name."""
    from lrresearch import listing

    lister = commands.add_parser(
        "list",
        help="list controllers, wrappers, optimizers, datasets, models, losses and metrics "
        "with their gin names",
        description="Print what a gin file can name, grouped: each entry's gin spelling "
        "with its arguments' defaults, and the first sentence of its docstring.",
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
    _add_output_flags(train, "--run_name", "<controller>-<YYYYmmdd-HHMMSS>")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue <logdir>/<run_name> from its newest intact checkpoint (a run "
        "that does not exist, or has no checkpoint yet, is started); needs --run_name",
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
        help="controller configurables to compare (default: every built-in)",
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
    """`lrresearch sweep`: the cross product of gin bindings."""
    sweep = commands.add_parser(
        "sweep",
        help="run a grid (--sweep) and/or random points (--sweep_random, --sample) of gin "
        "bindings, one run directory per point",
        description="Run every combination of the --sweep values (and, with "
        "--sweep_random=N, each at N points drawn from the --sample distributions), one "
        "after another, each as `lrresearch train` would, into one sweep directory; a "
        "failed run is reported at the end and does not stop the others. The sweep "
        "directory carries sweep.json (every point's bindings and drawn values) and the "
        "HParams experiment, so TensorBoard's HParams tab lists every run.",
    )
    _add_gin_flags(sweep)
    sweep.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="BINDING=[V1, V2]",
        help="e.g. 'Trainer.seed=[0, 1, 2]' or "
        "'Trainer.controller=[@GradNormController(), @LossTrendController()]';"
        " repeat for a cross product",
    )
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
        "'Trainer.batch_size=choice([32, 64, 128])'; repeatable; needs --sweep_random",
    )
    sweep.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the --sample draws (not of training: sweep Trainer.seed for that)",
    )
    _add_output_flags(sweep, "--sweep_name", "sweep-<YYYYmmdd-HHMMSS>")


def _compare_parser(commands: Any) -> None:
    """`lrresearch compare`: tables and plots of runs."""
    comp = commands.add_parser(
        "compare",
        help="table and plots comparing runs or sweeps (read with TensorBoard's loader)",
        description="For each run (a directory with an `lr` series, or the runs one level "
        "below a sweep directory): final and best eval metrics, steps to a target, mean "
        "LR, number of LR changes larger than --change_pct, time per step; and PNG plots "
        "of LR, smoothed loss and gradient norm against step for all runs.",
    )
    comp.add_argument(
        "paths", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="runs, or sweeps of runs"
    )
    comp.add_argument(
        "--out", default=None, help="folder for compare.md/.csv/.png (default: the first path)"
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
  lrresearch board runs other_runs --port 6007       # several directories""",
    )
    board.add_argument(
        "logdirs",
        nargs="*",
        default=["runs"],
        metavar="LOGDIR",
        help="directories holding runs (default: runs)",
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
        _compare_parser,
        _board_parser,
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


# gin appends "In call to configurable 'X' (<function X at 0x...>)" to errors raised
# inside a configurable; our messages already name what is at fault.
_GIN_CALL_NOTE = re.compile(r"\n\s*In call to configurable '[^']*' \(<[^>]*>\)")


def _fail(message: str, code: int = 2) -> int:
    message = _GIN_CALL_NOTE.sub("", message)
    print(f"lrresearch: error: {message}", file=sys.stderr, flush=True)
    return code


def _parse_config(args: argparse.Namespace) -> int | None:
    """Parses the gin files and bindings, then creates the configured `tf.distribute`
    strategy (before anything else touches TensorFlow's runtime). Returns an exit code
    on failure, None on success."""
    from lrresearch import config, distribute

    try:
        config.parse(args.gin_file, args.gin_param)
        distribute.get_strategy()
    except config.ConfigError as e:
        return _fail(str(e))
    except distribute.DistributionError as e:
        return _fail(str(e))
    except ValueError as e:
        return _fail(config.explain_call_error(e, args.gin_file, args.gin_param))
    return None


def train(args: argparse.Namespace) -> int:
    from lrresearch import config, distribute
    from lrresearch.data import DataError
    from lrresearch.trainer import (
        DiskFullError,
        NonFiniteLossError,
        RunDirExistsError,
        Trainer,
        TrainingInterrupted,
    )

    if (failed := _parse_config(args)) is not None:
        return failed
    try:
        trainer = Trainer(strategy=distribute.get_strategy())
        if args.resume and not args.run_name:
            return _fail("--resume needs --run_name (the run to continue)")
        result = trainer.fit(
            logdir=args.logdir, run_name=args.run_name, quiet=args.quiet, resume=args.resume
        )
    except (RunDirExistsError, DataError, OSError) as e:
        return _fail(str(e))
    except (NonFiniteLossError, DiskFullError) as e:
        return _fail(str(e), code=1)
    except TrainingInterrupted as e:
        return _fail(str(e), code=130)
    except KeyboardInterrupt:
        return _fail("interrupted before training started; nothing to resume", code=130)
    except ValueError as e:
        # Constructor checks name the configurable and parameter; add where it was bound.
        return _fail(config.explain_call_error(e, args.gin_file, args.gin_param))
    print(result.summary_line(), flush=True)
    return 0


def profile(args: argparse.Namespace) -> int:
    from lrresearch import config, profiling
    from lrresearch.trainer import RunDirExistsError

    for name in ("rounds", "block_batches", "trace_batches"):
        if getattr(args, name) < 1:
            return _fail(f"--{name} must be >= 1, got {getattr(args, name)}")
    if (failed := _parse_config(args)) is not None:
        return failed
    controllers = [c.strip() for c in args.controllers.split(",")] if args.controllers else None
    say = (lambda message: None) if args.quiet else (lambda m: print(m, flush=True))
    try:
        out_dir, rows = profiling.profile(
            controllers,
            logdir=args.logdir,
            run_name=args.run_name,
            rounds=args.rounds,
            block_batches=args.block_batches,
            trace_batches=args.trace_batches,
            progress=say,
        )
    except (RunDirExistsError, OSError) as e:
        return _fail(str(e))
    except ValueError as e:
        return _fail(config.explain_call_error(e, args.gin_file, args.gin_param))
    print(profiling.format_table(rows))
    print(
        f"wrote overhead.csv, overhead.md, overhead.png and one Profile run per "
        f"controller to {out_dir}; view with: lrresearch board {out_dir}",
        flush=True,
    )
    return 0


def lr_find(args: argparse.Namespace) -> int:
    from lrresearch import config
    from lrresearch import lr_find as finder
    from lrresearch.data import DataError
    from lrresearch.trainer import RunDirExistsError

    if args.write_gin and os.path.exists(args.write_gin):
        return _fail(
            f"--write_gin: {args.write_gin!r} exists and is never overwritten; pick a new file name"
        )
    if (failed := _parse_config(args)) is not None:
        return failed
    say = (lambda message: None) if args.quiet else (lambda m: print(m, flush=True))
    try:
        result = finder.lr_find(
            args.start_lr,
            args.end_lr,
            args.num_steps,
            args.smoothing,
            args.diverge_factor,
            logdir=args.logdir,
            run_name=args.run_name,
            progress=say,
            mode=args.mode,
        )
    except (RunDirExistsError, DataError, OSError, finder.NoDescentError) as e:
        return _fail(str(e))
    except ValueError as e:
        return _fail(config.explain_call_error(e, args.gin_file, args.gin_param))
    binding = result.binding(args.binding, args.suggestion)
    stop = (
        f"stopped at divergence after {len(result.lrs)} batches"
        if result.stopped_early
        else f"ran all {len(result.lrs)} batches"
    )
    print(f"lr-find: {stop}; suggestions: {result.summary()}")
    print(binding)
    if args.write_gin:
        with open(args.write_gin, "x") as f:
            f.write(f"# lr-find ({result.run_dir}): {result.summary()}\n{binding}\n")
    print(f"plot: {os.path.join(result.run_dir, 'lr_find.png')}", flush=True)
    return 0


def sweep(args: argparse.Namespace) -> int:
    from lrresearch import config
    from lrresearch import sweep as sweeps
    from lrresearch.trainer import RunDirExistsError

    say = (lambda message: None) if args.quiet else (lambda m: print(m, flush=True))
    try:
        sweep_dir, points = sweeps.run_sweep(
            args.gin_file,
            args.gin_param,
            args.sweep,
            logdir=args.logdir,
            sweep_name=args.sweep_name,
            progress=say,
            samples=args.sample,
            random_points=args.sweep_random,
            seed=args.seed,
        )
    except config.ConfigError as e:
        return _fail(str(e))
    except (RunDirExistsError, OSError, ValueError) as e:
        return _fail(str(e))
    except sweeps.SweepInterrupted as e:
        print(sweeps.report(e.points), flush=True)
        return _fail(str(e), code=130)
    except KeyboardInterrupt:
        return _fail(
            "interrupted before the sweep started, or at once by a second Ctrl-C "
            "(runs already written are kept)",
            code=130,
        )
    print(sweeps.report(points))
    failed = [p for p in points if not p.result]
    print(
        f"sweep: {len(points) - len(failed)}/{len(points)} runs ok -> {sweep_dir}; "
        f"lrresearch board {sweep_dir}",
        flush=True,
    )
    return 1 if failed else 0


def compare(args: argparse.Namespace) -> int:
    from lrresearch import compare as comparing

    out = args.out or args.paths[0]
    try:
        markdown, _ = comparing.compare(
            args.paths,
            out,
            args.target_accuracy,
            args.target_loss,
            args.change_pct,
            allow_damaged=args.allow_damaged,
        )
    except (FileNotFoundError, FileExistsError, KeyError, comparing.DamagedRunError) as e:
        return _fail(str(e))
    print(markdown)
    print(f"wrote compare.md, compare.csv and compare.png to {out}", flush=True)
    return 0


def list_command(args: argparse.Namespace) -> int:
    from lrresearch import listing

    groups = [args.what] if isinstance(args.what, str) else args.what
    print(listing.render(listing.GROUPS if "all" in groups else groups))
    return 0


def board(args: argparse.Namespace) -> int:
    from lrresearch import board as boards

    if not 0 <= args.port <= 65535:
        return _fail(f"--port must be in 0..65535, got {args.port}")
    try:
        return boards.serve(args.logdirs, port=args.port, host=args.host)
    except ValueError as e:
        return _fail(str(e))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {
        "train": train,
        "profile": profile,
        "lr-find": lr_find,
        "sweep": sweep,
        "compare": compare,
        "board": board,
        "list": list_command,
    }[args.command]
    with quiet.tensorflow_start():
        import tensorflow as tf

        tf.config.list_physical_devices()  # where cuInit runs
    retracing = quiet.DropLoopRetracingWarning()
    tf.get_logger().addFilter(retracing)
    try:
        with quiet.plain_warnings():
            return command(args)
    except RuntimeError as e:
        # gin raises RuntimeError when a configurable with a required argument (such
        # as `npz_file.path`) is called without a binding for it.
        from lrresearch import config

        gin_files, gin_params = getattr(args, "gin_file", []), getattr(args, "gin_param", [])
        if (message := config.explain_missing_binding(e, gin_files, gin_params)) is None:
            raise
        return _fail(message)
    finally:
        tf.get_logger().removeFilter(retracing)


if __name__ == "__main__":
    sys.exit(main())
