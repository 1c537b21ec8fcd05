"""`lrresearch tune --workers K`: K worker processes on this machine, one study.

Each worker is `lrresearch tune --resume --study_name NAME --logdir DIR --worker` (the
same command that joins the study from anywhere), in a session of its own so that a
terminal's Ctrl-C reaches it once, through this process: the parent forwards SIGINT
and SIGTERM to every worker (each stops after its current compiled call, its trial
re-queued), prints their lines prefixed `[wN]`, and waits for them all. Each worker
gets `max(1, cores // K)` TensorFlow intra-op threads (`TF_NUM_INTRAOP_THREADS`), so K
workers share the cores rather than each taking all of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any


def cores() -> int:
    """CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_command(
    index: int, study_dir: str, study_name: str, storage: str | None, quiet: bool = False
) -> list[str]:
    """The command line of worker `index` (0, 1, ...)."""
    command = [sys.executable, "-u", "-m", "lrresearch", "tune", "--resume", f"--worker={index}"]
    command += ["--study_name", study_name, "--logdir", os.path.dirname(study_dir) or "."]
    if storage:
        command += ["--storage", storage]
    return command + (["--quiet"] if quiet else [])


def _relay(process: subprocess.Popen, label: str, progress: Callable[[str], None]) -> None:
    for line in process.stdout:
        progress(f"[{label}] {line.rstrip()}")


def run_workers(
    commands: Sequence[Sequence[str]],
    progress: Callable[[str], None] = print,
    env: dict[str, str] | None = None,
) -> list[int]:
    """Starts one process per command, forwards SIGINT/SIGTERM to them, relays their
    output and waits; returns their exit codes (130: interrupted)."""
    env = dict(os.environ if env is None else env)
    env.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, cores() // len(commands))))
    processes = [
        subprocess.Popen(
            list(command), stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        for command in commands
    ]
    relays = [
        threading.Thread(target=_relay, args=(p, f"w{i}", progress), daemon=True)
        for i, p in enumerate(processes)
    ]
    for relay in relays:
        relay.start()
    pids = ", ".join(f"w{i} pid {p.pid}" for i, p in enumerate(processes))
    threads = env["TF_NUM_INTRAOP_THREADS"]
    progress(f"tune: {len(processes)} workers ({pids}); TF intra-op threads: {threads} each")

    def forward(signum: int, frame: Any) -> None:
        del frame
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            previous[s] = signal.signal(s, forward)
    try:
        codes = [process.wait() for process in processes]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for relay in relays:
        relay.join(timeout=10)
    return codes
