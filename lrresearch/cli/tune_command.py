"""`lrresearch tune`: the handler (flags -> `studies.tune`, exceptions -> exit codes)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from lrresearch.cli.errors import fail as _fail

# A --metric whose larger values are better (the default --direction maximizes it).
_HIGHER_IS_BETTER = re.compile(r"acc|auc|precision|recall|f1|iou|top", re.IGNORECASE)


def _direction(metric: str, given: str | None) -> str:
    """The `--direction`: as given, else inferred from the metric's name; a pair that
    looks reversed is named in a warning (loosely: a user's metric may be anything)."""
    likely = "maximize" if _HIGHER_IS_BETTER.search(metric.removeprefix("eval/")) else "minimize"
    if given and given != likely:
        print(
            f"warning: --direction {given} with --metric {metric}: check that is what you "
            f"mean ({likely} is usual for it)",
            file=sys.stderr,
            flush=True,
        )
    return given or likely


def _given(args: argparse.Namespace, settings: Any, spec: Any) -> None:
    """`--resume` runs the study's own flags: one given differently is an error."""
    from lrresearch.config import parse as config

    given = {
        "--gin_file": (args.gin_file, [], list(spec.gin_files)),
        "--gin_param": (args.gin_param, [], list(spec.gin_params)),
        "--search": (args.search, [], list(spec.search)),
        "--method": (args.method, [], list(spec.methods)),
        "--trials": (args.trials, None, settings.trials),
        "--sampler": (args.sampler, "tpe", settings.sampler),
        "--metric": (args.metric, "eval/loss", settings.metric),
        "--direction": (args.direction, None, settings.direction),
        "--pruner": (args.pruner, "none", settings.pruner),
        "--seed": (args.seed, None, settings.seed),
    }
    for flag, (value, default, own) in given.items():
        if value != default and value != own:
            raise config.ConfigError(
                f"tune --resume: {flag} is {value!r}, but the study's own is {own!r}; a "
                f"study keeps its flags: leave {flag} out, or start a new study with "
                "another --study_name"
            )


def _start(args: argparse.Namespace) -> tuple[str, Any, Any]:
    """The study: joined (`--resume`) or created; `(folder, spec, settings)`."""
    from lrresearch.config import parse as config
    from lrresearch.studies import tune_study as tune

    if args.resume:
        study_dir, spec, settings = tune.join(args.logdir, args.study_name, args.storage)
        _given(args, settings, spec)
        tune.check(spec, settings)  # its gin files may have changed since
        return study_dir, spec, settings
    if args.trials is None:
        raise config.ConfigError("tune needs --trials N, the number of trials to finish")
    spec = tune.StudySpec(
        name="",
        gin_files=tuple(args.gin_file),
        gin_params=tuple(args.gin_param),
        search=tuple(args.search),
        search_path=tuple(os.path.abspath(p) for p in args.gin_search_path),
        methods=tuple(args.method),
    )
    settings = tune.Settings(
        trials=args.trials,
        sampler=args.sampler,
        metric=args.metric,
        direction=_direction(args.metric, args.direction),
        pruner=args.pruner,
        seed=args.seed,
        storage=args.storage,
        heartbeat=args.heartbeat,
    )
    study_dir, spec = tune.create(args.logdir, args.study_name, spec, settings)
    return study_dir, spec, settings


def _run(args: argparse.Namespace, study_dir: str, spec: Any, settings: Any, say: Any) -> None:
    """Trains the study's trials here, or in `--workers` processes."""
    from lrresearch.config import parse as config
    from lrresearch.studies import tune, tune_workers

    if args.workers == 1:
        tune.run_worker(study_dir, spec, settings, say, args.worker or 0)
        return
    commands = [
        tune_workers.worker_command(i, study_dir, spec.name, settings.storage, args.quiet)
        for i in range(args.workers)
    ]
    codes = tune_workers.run_workers(commands, say)
    if 130 in codes:  # Ctrl-C or SIGTERM, forwarded to every worker
        raise tune.TuneInterrupted(tune.interrupted_message(study_dir, spec, settings, None))
    if 2 in codes:  # bad input found by a worker (its error is above)
        raise config.ConfigError("a worker stopped on bad input (its error is above)")
    if failed := [f"w{i} exit {c}" for i, c in enumerate(codes) if c]:
        # A worker that died leaves its trial to the others (after its heartbeat stops).
        say(f"tune: workers that did not end cleanly: {', '.join(failed)}")


def tune(args: argparse.Namespace) -> int:
    from lrresearch.config import parse as config
    from lrresearch.studies import tune
    from lrresearch.studies.tune_storage import masked
    from lrresearch.training.run_dir import RunDirExistsError

    say = (lambda message: None) if args.quiet else (lambda m: print(m, flush=True))
    if args.resume and not args.study_name:
        return _fail("--resume needs --study_name (the study to continue or join)")
    if args.workers < 1 or (args.worker is not None and args.workers != 1):
        return _fail(f"--workers must be >= 1, got {args.workers}")
    if args.heartbeat < 1:
        return _fail(f"--heartbeat must be >= 1 (seconds), got {args.heartbeat}")
    try:
        from lrresearch.cli.notes import note_methods

        note_methods(args)  # a --gin_param a --method binds again, a file hiding a shipped one
        study_dir, spec, settings = _start(args)
        if args.worker is None:
            where = masked(settings.storage_url(study_dir))
            per = " per method" if spec.methods else ""
            say(f"tune: study {study_dir} ({settings.trials} trials{per}, storage {where})")
        _run(args, study_dir, spec, settings, say)
    except config.ConfigError as e:
        return _fail(str(e))
    except (RunDirExistsError, OSError, ValueError) as e:
        return _fail(str(e))
    except tune.TuneInterrupted as e:
        if args.worker is not None:  # the parent prints how to continue
            lines = str(e).splitlines()
            return _fail(lines[1].strip() if len(lines) > 2 else lines[0], code=130)
        print(tune.finish(study_dir, spec, settings), flush=True)
        return _fail(str(e), code=130)
    except KeyboardInterrupt:
        return _fail("tune: interrupted before the study started", code=130)
    if args.worker is not None:
        return 0
    print(tune.finish(study_dir, spec, settings), flush=True)
    finished, total = tune.finished_count(study_dir, spec, settings)
    print(
        f"tune: {finished}/{total} trials finished -> {study_dir}; lrresearch board {study_dir}",
        flush=True,
    )
    if finished < total:
        return _fail(
            f"tune: the study has {finished} of its {total} trials finished; continue "
            f"it with: {tune.resume_command(study_dir, spec, settings)}",
            code=1,
        )
    return 0
