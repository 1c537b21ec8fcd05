"""Trials per minute of `lrresearch tune` at `--workers 1` and `--workers 2`: the command
users run, in a subprocess, on a fixed small study; SQLite (the default storage) and,
with `--postgres`, 2 workers on a throwaway PostgreSQL server.

    python tools/bench_tune_workers.py [--rounds 3] [--trials 8] [--steps 2000] [--postgres]
    python tools/bench_tune_workers.py --quick [--postgres]  # a smoke run, page not written

Every round runs each configuration once, back to back (1 worker, 2 workers, ...), and
the ratio to 1 worker is taken within the round, so a slower or busier moment of the
machine weighs on both sides. A configuration's time is the whole command's wall time
(start-up, study creation, every trial, the final table), as a user waits for it; trials
per minute = trials / that time. Each worker runs TensorFlow with `cores // K` intra-op
threads (`lrresearch.studies.tune_workers`), so on a machine with few cores the gain of
a second worker comes from overlapping what one trial leaves idle (start-up, tracing,
evaluation, Python between compiled calls), not from more arithmetic.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from measured_page import run_and_write

INTRO = (
    "`lrresearch tune` on a fixed study (the default digits MLP, `strategies/warmup_cosine.gin`, "
    "its `base_lr` drawn log-uniformly by the random sampler, a fixed seed), the whole "
    "command timed as a user waits for it, configurations interleaved round by round; "
    "trials per minute and the ratio to 1 worker in the same round. What it means for "
    "`--workers`: [studies on several workers](../guide/studies.md#how-many-workers)."
)
SEARCH = "WarmupCosineController.base_lr=loguniform(1e-3, 1e-1)"


def study_flags(trials: int, steps: int) -> list[str]:
    """The fixed study: `trials` trials of `steps` batches, evaluated twice."""
    params = [f"Trainer.steps = {steps}", f"Trainer.eval_every = {max(1, steps // 2)}"]
    flags = ["--gin_file=strategies/warmup_cosine.gin", f"--search={SEARCH}"]
    flags += [f"--gin_param={p}" for p in params]
    return [*flags, f"--trials={trials}", "--sampler=random", "--seed=0", "--quiet"]


def run_study(logdir: str, name: str, flags: list[str], workers: int, storage: str | None) -> float:
    """Runs one study to its end; its wall time in seconds."""
    command = [sys.executable, "-m", "lrresearch", "tune", f"--logdir={logdir}"]
    command += [f"--study_name={name}", f"--workers={workers}", *flags]
    if storage:
        command.append(f"--storage={storage}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return seconds


def _postgres_bin(tool: str) -> str | None:
    """`initdb`/`pg_ctl`/`postgres` on PATH, else Debian's newest /usr/lib/postgresql/*/bin."""
    import glob

    found = shutil.which(tool)
    versions = glob.glob(f"/usr/lib/postgresql/*/bin/{tool}")
    newest = sorted(
        versions, key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0
    )
    return found or (newest[-1] if newest else None)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server on a free loopback port; yields its URL. As root
    it runs as the `postgres` user (`initdb` refuses root). A copy of the tests' helper
    (`tests/postgres.py`): tools do not import the tests."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise SystemExit("--postgres: initdb/pg_ctl not found (Debian: apt-get install postgresql)")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = tempfile.mkdtemp(prefix="bench-pg-")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, run = os.path.join(folder, "data"), {"check": True, "capture_output": True}
    try:
        subprocess.run([*as_user, initdb, "-D", data, "-A", "trust", "-U", "postgres"], **run)
        options = f"-k {folder} -p {port} -h 127.0.0.1"
        log = os.path.join(folder, "server.log")
        subprocess.run(
            [*as_user, pg_ctl, "-D", data, "-o", options, "-l", log, "-w", "start"], **run
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], **run)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def study_versions(postgres: bool) -> str:
    """Optuna, SQLAlchemy (and psycopg and the PostgreSQL server with `--postgres`)."""
    import optuna
    import sqlalchemy

    parts = [f"Optuna {optuna.__version__}", f"SQLAlchemy {sqlalchemy.__version__}"]
    if postgres:
        import psycopg

        server = subprocess.run(
            [_postgres_bin("postgres") or "postgres", "--version"], capture_output=True, text=True
        ).stdout.strip()
        parts += [f"psycopg {psycopg.__version__}", server or "PostgreSQL (version unknown)"]
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8, help="trials per study")
    parser.add_argument("--steps", type=int, default=2000, help="batches per trial")
    parser.add_argument("--postgres", action="store_true", help="also 2 workers on PostgreSQL")
    parser.add_argument("--quick", action="store_true", help="1 round, 2 trials of 50 batches")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.trials, args.steps = 1, 2, 50
    flags = study_flags(args.trials, args.steps)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cores: {cores}; {study_versions(args.postgres)}")
    print(f"study: {args.trials} trials of {args.steps} batches; tune {shlex.join(flags)}\n")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_server()) if args.postgres else None
        configs = {"1 worker, SQLite": (1, None), "2 workers, SQLite": (2, None)}
        if url:
            configs["2 workers, PostgreSQL"] = (2, url)
        seconds: dict[str, list[float]] = {name: [] for name in configs}
        logdir = stack.enter_context(tempfile.TemporaryDirectory())
        for r in range(args.rounds):
            for i, (name, (workers, storage)) in enumerate(configs.items()):
                wall = run_study(logdir, f"r{r}-c{i}", flags, workers, storage)
                seconds[name].append(wall)
                rate = args.trials / wall * 60
                print(f"round {r + 1}: {name}: {wall:.1f} s, {rate:.2f} trials/min", flush=True)
    base = seconds["1 worker, SQLite"]
    span = f"median, min..max over {args.rounds} rounds"
    print(f"\n| configuration | trials/min (median) | x 1 worker ({span}) |")
    print("|---|---|---|")
    for name, values in seconds.items():
        ratios = [b / v for v, b in zip(values, base, strict=True)]  # rate ratio
        rate = statistics.median(args.trials / v * 60 for v in values)
        print(
            f"| {name} | {rate:.2f} | {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}..{max(ratios):.2f}) |"
        )
    return 0


if __name__ == "__main__":
    if "--quick" in sys.argv:  # a smoke run: printed, not written over the measured page
        sys.exit(main())
    sys.exit(
        run_and_write(main, "docs/benchmarks/tune-workers.md", "lrresearch tune: workers", INTRO)
    )
