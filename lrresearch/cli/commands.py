"""`lrresearch` command line: `lrresearch train --gin_file=... --gin_param=...`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lrresearch.cli import tune_command
from lrresearch.cli.errors import fail as _fail
from lrresearch.cli.notes import note_methods as _note_methods
from lrresearch.cli.notes import note_shadowed as _note_shadowed
from lrresearch.cli.parser import build_parser

# Before TensorFlow loads: its C++ start-up chatter hides the run's own output.
from lrresearch.logs import quiet


def _parse_config(args: argparse.Namespace) -> int | None:
    """Parses the gin files and bindings, then creates the configured `tf.distribute`
    strategy (before anything else touches TensorFlow's runtime). Returns an exit code
    on failure, None on success. `--resume` with no `--gin_file` parses the run's own
    `config.gin` (`run_config`), which then stands as the command's gin file."""
    from lrresearch.config import parse as config
    from lrresearch.config import run_config
    from lrresearch.training import distribute

    saved = None
    if getattr(args, "resume", False):
        saved = run_config.saved_config(args.logdir, args.run_name)
    try:
        found = []
        if saved is None or args.gin_file:
            _note_shadowed(args.gin_file, args.gin_search_path)
            found = config.parse(args.gin_file, args.gin_param, args.gin_search_path)
            skipped = []
        else:
            skipped = run_config.parse(saved, args.gin_param)
        if saved is not None and not args.quiet:
            line = run_config.describe(saved, args.gin_param, skipped, args.gin_file)
            print(line, flush=True)
        args.gin_file = found or ([saved] if saved else [])  # where errors point
        distribute.get_strategy()
    except config.ConfigError as e:
        return _fail(str(e))
    except distribute.DistributionError as e:
        return _fail(str(e))
    except ValueError as e:
        return _fail(config.explain_call_error(e, args.gin_file, args.gin_param))
    return None


def train(args: argparse.Namespace) -> int:
    from lrresearch.config import parse as config
    from lrresearch.training import distribute
    from lrresearch.training.outer_loop import (
        DiskFullError,
        NonFiniteLossError,
        TrainingInterrupted,
    )
    from lrresearch.training.run_dir import RunDirExistsError
    from lrresearch.training.trainer import Trainer
    from lrresearch.workloads.data import DataError
    from lrresearch.workloads.tf_data_cache import CacheLockError

    if args.resume and not args.run_name:
        return _fail("--resume needs --run_name (the run to continue)")
    if (failed := _parse_config(args)) is not None:
        return failed
    try:
        trainer = Trainer(strategy=distribute.get_strategy())
        result = trainer.fit(
            logdir=args.logdir, run_name=args.run_name, quiet=args.quiet, resume=args.resume
        )
    except (RunDirExistsError, DataError, OSError) as e:
        return _fail(str(e))
    except (NonFiniteLossError, DiskFullError, CacheLockError) as e:
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
    from lrresearch.config import parse as config
    from lrresearch.studies import profile as profiling
    from lrresearch.training.run_dir import RunDirExistsError

    for name in ("rounds", "block_batches", "trace_batches"):
        if getattr(args, name) < 1:
            return _fail(f"--{name} must be >= 1, got {getattr(args, name)}")
    if (failed := _parse_config(args)) is not None:
        return failed
    controllers = [c.strip() for c in args.controllers.split(",")] if args.controllers else None
    optimizers = [o.strip() for o in args.optimizers.split(",")] if args.optimizers else []
    say = (lambda message: None) if args.quiet else (lambda m: print(m, flush=True))
    try:
        out_dir, rows = profiling.profile(
            controllers,
            optimizers,
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
    from lrresearch.config import parse as config
    from lrresearch.studies import lr_find as finder
    from lrresearch.training.run_dir import RunDirExistsError
    from lrresearch.workloads.data import DataError

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
    from lrresearch.config import parse as config
    from lrresearch.studies import sweep as sweeps
    from lrresearch.studies.sweep_resume import resume_sweep
    from lrresearch.training.run_dir import RunDirExistsError

    say = (lambda message: None) if args.quiet else (lambda m: print(m, flush=True))
    if args.resume and not args.sweep_name:
        return _fail("--resume needs --sweep_name (the sweep to continue)")
    given = {"gin_files": args.gin_file, "sweeps": args.sweep, "samples": args.sample}
    given.update(sweep_random=args.sweep_random, seed=args.seed, methods=args.method)
    _note_shadowed(args.gin_file, args.gin_search_path)
    _note_methods(args)
    try:
        if args.resume:
            sweep_dir, points = resume_sweep(
                args.logdir,
                args.sweep_name,
                given,
                args.gin_param,
                progress=say,
                search_path=args.gin_search_path,
            )
        else:
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
                search_path=args.gin_search_path,
                methods=args.method,
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
    failed = [p for p in points if p.status != "ok"]  # "ok" before a --resume counts
    print(
        f"sweep: {len(points) - len(failed)}/{len(points)} runs ok -> {sweep_dir}; "
        f"lrresearch board {sweep_dir}",
        flush=True,
    )
    return 1 if failed else 0


def compare(args: argparse.Namespace) -> int:
    from lrresearch.analysis import compare as comparing
    from lrresearch.analysis.grouped import CompareOptions
    from lrresearch.cli.compare_parser import sensitivity_bindings

    out = args.out or args.paths[0]
    options = CompareOptions(
        group_by=tuple(args.group_by),
        x=args.x,
        metric=args.metric,
        sensitivity=sensitivity_bindings(args.sensitivity),
        within_pct=args.within_pct,
        export=args.export,
    )
    try:
        markdown, _ = comparing.compare(
            args.paths,
            out,
            args.target_accuracy,
            args.target_loss,
            args.change_pct,
            allow_damaged=args.allow_damaged,
            options=options,
        )
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        return _fail(str(e))  # DamagedRunError is a ValueError
    print(markdown)
    written = "compare.md, compare.csv, compare_groups.csv and compare.png"
    if options.sensitivity is not None:
        written += ", sensitivity.md, sensitivity.csv and sensitivity.png"
    print(f"wrote {written} to {out}" + (f"; exported to {args.export}" if args.export else ""))
    return 0


def list_command(args: argparse.Namespace) -> int:
    from lrresearch.cli import listing

    groups = [args.what] if isinstance(args.what, str) else args.what
    print(listing.render(listing.GROUPS if "all" in groups else groups))
    return 0


def board(args: argparse.Namespace) -> int:
    from lrresearch.logs import board as boards

    if not 0 <= args.port <= 65535:
        return _fail(f"--port must be in 0..65535, got {args.port}")
    try:
        logdirs, spec = boards.resolve_logdirs(args.logdirs, args.logdir_flags, args.logdir_spec)
        code = boards.serve(logdirs, port=args.port, host=args.host, logdir_spec=spec)
    except ValueError as e:
        return _fail(str(e))
    if code == 130:
        print(
            "lrresearch: board: interrupted (Ctrl-C or SIGTERM); TensorBoard stopped",
            file=sys.stderr,
        )
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started: list[bool] = []
    try:
        return _run(args, started)
    except KeyboardInterrupt:
        # Ctrl-C while TensorFlow loads (seconds): one line, not its import traceback.
        if started:
            return _fail(f"{args.command}: interrupted (Ctrl-C)", code=130)
        return _fail(
            f"interrupted (Ctrl-C) before `lrresearch {args.command}` started; nothing was "
            "started or written",
            code=130,
        )


# The flag that names a command's output directory, checked before any work.
_NAME_FLAGS = {
    "train": "run_name",
    "profile": "run_name",
    "lr-find": "run_name",
    "sweep": "sweep_name",
    "tune": "study_name",
}


def _check_name(args: argparse.Namespace) -> int | None:
    """Exit code 2 and one line if the output directory's name is not a plain one."""
    from lrresearch.training.run_dir import check_run_name

    if (flag := _NAME_FLAGS.get(args.command)) is not None:
        try:
            check_run_name(getattr(args, flag), f"--{flag}")
        except ValueError as e:
            return _fail(str(e))
    return None


def _run(args: argparse.Namespace, started: list[bool]) -> int:
    """Loads TensorFlow quietly, then runs the command (`started` gets an entry)."""
    command = {
        "train": train,
        "profile": profile,
        "lr-find": lr_find,
        "sweep": sweep,
        "tune": tune_command.tune,
        "compare": compare,
        "board": board,
        "list": list_command,
    }[args.command]
    if args.command == "board":
        # TensorBoard runs in a process of its own: not loading TensorFlow here starts
        # it seconds sooner.
        started.append(True)
        return command(args)
    with quiet.tensorflow_start():
        import tensorflow as tf

        tf.config.list_physical_devices()  # where cuInit runs
    if (failed := _check_name(args)) is not None:
        return failed
    retracing = quiet.DropLoopRetracingWarning()
    tf.get_logger().addFilter(retracing)
    try:
        started.append(True)
        with quiet.plain_warnings():
            return command(args)
    except RuntimeError as e:
        # gin raises RuntimeError when a configurable with a required argument (such
        # as `npz_file.path`) is called without a binding for it.
        from lrresearch.config import parse as config

        gin_files, gin_params = getattr(args, "gin_file", []), getattr(args, "gin_param", [])
        if (message := config.explain_missing_binding(e, gin_files, gin_params)) is None:
            raise
        return _fail(message)
    finally:
        tf.get_logger().removeFilter(retracing)


if __name__ == "__main__":
    sys.exit(main())
