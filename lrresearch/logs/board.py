"""`lrresearch board`: TensorBoard started so that it serves every batch of every run.

TensorBoard keeps 1,000 points per scalar tag by default (reservoir sampling), so a
2,000-batch run silently shows half its batches, spikes included. Measured here with
TensorBoard 2.21.0 through its HTTP API (`/data/plugin/scalars/scalars`) on a
2,000-batch run: the default served 1,000 `lr` points, `--samples_per_plugin=scalars=0`
served none (0 is the scalars plugin's downsampling target, not "keep all"), and
`scalars=100000` served all 2,000. A bound far above the run's length costs nothing
until points exist: 10,000,000 used as much memory as 1,000 (~720 MB for the server
and its data server, most of it TensorFlow's import).
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO

# Points kept and served per scalar tag: a run of a million batches loses none.
SCALARS_BOUND = 1_000_000
# Histograms kept per tag: every one of a 100,000-batch run at the default
# `histogram_every = 100`. The Histograms tab draws 51 of them whatever the bound
# (`HistogramsPlugin.SAMPLE_SIZE`); the Time Series tab draws up to this many.
HISTOGRAMS_BOUND = 1_000
# How long TensorBoard gets to exit after each signal, in seconds.
STOP_SECONDS = 5.0

# The start of absl's C++ log lines (`I0000 00:00:...`), as `quiet` reads them.
_ABSL_LINE = re.compile(r"^[IWEF]\d{4} ")
_STEPS_BINDING = re.compile(r"^Trainer\.steps\s*=\s*(\d+)\s*$", re.M)
# A URI (`gs://bucket/runs`), never a `name:DIR` pair (TensorBoard's own pattern).
_URI = re.compile(r"[a-zA-Z][0-9a-zA-Z.]*://.*")


def longest_run(logdirs: Sequence[str]) -> int:
    """The largest `Trainer.steps` in the `config.gin` of any run under `logdirs`
    (0 if there is none yet)."""
    longest = 0
    for logdir in logdirs:
        root = pathlib.Path(logdir)
        if not root.is_dir():
            continue
        for config in root.rglob("config.gin"):
            try:
                text = config.read_text(errors="replace")
            except OSError:
                continue
            for match in _STEPS_BINDING.finditer(text):
                longest = max(longest, int(match.group(1)))
    return longest


def samples_per_plugin(logdirs: Sequence[str]) -> str:
    """The `--samples_per_plugin` value that serves every scalar point of every run
    under `logdirs` (and of runs started later, up to `SCALARS_BOUND` batches)."""
    scalars = max(SCALARS_BOUND, longest_run(logdirs))
    return f"scalars={scalars},histograms={HISTOGRAMS_BOUND}"


def _logdir_flags(logdirs: Sequence[str]) -> list[str]:
    """`--logdir DIR` for one directory; `--logdir_spec name:DIR,...` for several
    (TensorBoard then uses its slower Python loader, and says so)."""
    if len(logdirs) == 1:
        return ["--logdir", logdirs[0]]
    for logdir in logdirs:
        if "," in logdir:
            raise ValueError(
                f"LOGDIR {logdir!r} contains a comma, which TensorBoard's --logdir_spec "
                "cannot hold; pass that directory alone or rename it"
            )
    names: dict[str, int] = {}
    specs = []
    for logdir in logdirs:
        name = os.path.basename(os.path.normpath(os.path.abspath(logdir))) or "root"
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            name = f"{name}_{names[name]}"
        specs.append(f"{name}:{os.path.abspath(logdir)}")
    return ["--logdir_spec", ",".join(specs)]


def parse_logdir_spec(spec: str) -> list[tuple[str | None, str]]:
    """TensorBoard's `--logdir_spec` (`name:DIR,name2:DIR2`; a bare `DIR` or an
    absolute `/a:b` path has no name) as `(name, DIR)` pairs, as TensorBoard reads it
    (`data_ingester._parse_event_files_spec`). Raises `ValueError` on an empty entry."""
    pairs: list[tuple[str | None, str]] = []
    for entry in spec.split(","):
        named = ":" in entry and not _URI.match(entry) and not entry.startswith("/")
        name, _, path = entry.partition(":") if named else (None, "", entry)
        if not path or name == "":
            missing = "directory" if path == "" else "name before its ':'"
            raise ValueError(
                f"--logdir_spec must be NAME:DIR[,NAME:DIR...] (TensorBoard's syntax), got "
                f"{spec!r}: entry {entry!r} has no {missing}"
            )
        pairs.append((name, path))
    return pairs


def resolve_logdirs(
    positional: Sequence[str], flags: Sequence[str], spec: str | None
) -> tuple[list[str], str | None]:
    """The directories to serve, from `lrresearch board`'s LOGDIR arguments, its
    `--logdir` flags and its `--logdir_spec` (TensorBoard's spellings), and the spec to
    pass on (None: named here). No directory at all means `runs`. Raises `ValueError`
    naming the flags when they disagree."""
    if spec is not None:
        if positional or flags:
            given = " ".join([*positional, *(f"--logdir {d}" for d in flags)])
            raise ValueError(
                "--logdir_spec names every directory itself; give it alone, or give the "
                f"directories as LOGDIR / --logdir instead (got --logdir_spec and {given})"
            )
        return [path for _, path in parse_logdir_spec(spec)], spec
    if positional and flags and list(positional) != list(flags):
        raise ValueError(
            "give the directories as LOGDIR arguments or with --logdir, not both: got "
            f"LOGDIR {' '.join(positional)} and --logdir {' '.join(flags)}"
        )
    return list(positional or flags or ["runs"]), None


def tensorboard_command(
    logdirs: Sequence[str], port: int, host: str, logdir_spec: str | None = None
) -> list[str]:
    """The `tensorboard` command line `lrresearch board` runs (without the Python
    interpreter in front); `logdir_spec`, if given, is passed on as it is (its
    directories are `logdirs`)."""
    return [
        "tensorboard",
        *(["--logdir_spec", logdir_spec] if logdir_spec else _logdir_flags(logdirs)),
        "--port",
        str(port),
        "--host",
        host,
        f"--samples_per_plugin={samples_per_plugin(logdirs)}",
    ]


def view_command(run_dir: str) -> str:
    """`lrresearch board <the run's logdir>`: the run and the runs beside it."""
    return shlex.join(["lrresearch", "board", os.path.dirname(os.path.normpath(run_dir)) or "."])


def url(host: str, port: int) -> str:
    shown = "localhost" if host in ("", "0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def _forward_stderr(stream: IO[str], out: IO[str]) -> None:
    """Copies TensorBoard's stderr to ours without TensorFlow's start-up noise (the
    oneDNN banner, "Could not find cuda drivers", cuInit failing with no driver)."""
    from lrresearch.logs import quiet

    dropped = False
    for line in stream:
        # A dropped INFO record's second line ("To enable the following instructions:
        # AVX2 ...") carries no log prefix of its own.
        if dropped and line.strip() and not _ABSL_LINE.match(line):
            continue
        kept = quiet.startup_noise_removed(line)
        dropped = not kept
        if kept:
            out.write(kept)
            out.flush()


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to TensorBoard's process group (it and its data server), then SIGKILL,
    each given `STOP_SECONDS`.

    SIGTERM, not SIGINT: TensorBoard exits on it at once (~1.3 s here), while a SIGINT
    is ignored by a TensorBoard started from a shell's background job (it inherits the
    ignored SIGINT)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=STOP_SECONDS)
            os.killpg(process.pid, signal.SIGKILL)  # a data server left behind
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            pass
        return


def serve(
    logdirs: Sequence[str],
    port: int = 6006,
    host: str = "127.0.0.1",
    say: Callable[[str], None] | None = None,
    logdir_spec: str | None = None,
) -> int:
    """Runs TensorBoard on `logdirs` until it exits or Ctrl-C (or SIGTERM) stops it.

    TensorBoard runs in its own session, so the terminal's Ctrl-C reaches only this
    process, which then stops TensorBoard and its data server and waits for both.
    Returns 0 if TensorBoard exited by itself with 0, 130 after Ctrl-C or SIGTERM, 2
    if it failed (a port in use, say; its own message is on stderr).
    """
    say = say or (lambda message: print(message, flush=True))
    command = tensorboard_command(logdirs, port, host, logdir_spec)
    missing = [d for d in logdirs if not _URI.match(d) and not os.path.isdir(d)]
    if missing:
        say(f"note: {', '.join(missing)} does not exist yet; runs appear as they are written")
    say(f"TensorBoard at {url(host, port)} (Ctrl-C to stop), every batch served:")
    say("  " + shlex.join(command))
    # Smoothing 0 through the URL: TensorBoard's default 0.6 hides single-batch moves.
    say(f"the LR first, unsmoothed: {url(host, port)}#custom_scalars&_smoothingWeight=0")
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM raises KeyboardInterrupt here, so it stops TensorBoard as Ctrl-C does.
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    process = forwarder = None
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", *command[1:]],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group (process_group= needs 3.11)
        )
        forwarder = threading.Thread(
            target=_forward_stderr, args=(process.stderr, sys.stderr), daemon=True
        )
        forwarder.start()
        code = process.wait()
        _stop(process)  # a data server left behind
    except KeyboardInterrupt:
        # Also while TensorBoard starts: stopped at once, one line (`cli.main`), no
        # traceback.
        if process is not None:
            _stop(process)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if forwarder is not None:
            forwarder.join(timeout=STOP_SECONDS)
    return 0 if code == 0 else 2
