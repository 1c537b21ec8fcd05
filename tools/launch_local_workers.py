"""Runs an `lrresearch train` command as a multi-worker cluster on this machine.

    python tools/launch_local_workers.py --workers 2 -- \\
        lrresearch train --gin_file strategies/grad_norm.gin --run_name mw

starts one process per worker, each with its own `TF_CONFIG` (the same cluster of
127.0.0.1 ports, its own task index) and `distribution.strategy = "multi_worker"`
appended to its bindings. Worker 0 is the chief: it owns the run directory and writes
the summaries and checkpoints; the others write nothing there. Output lines are
prefixed `[worker-i]`. If one worker fails, the others are stopped (a
`MultiWorkerMirroredStrategy` worker would otherwise wait for its peers forever), and
the launcher exits with the failed worker's code. Ctrl-C (or SIGTERM) on the launcher
stops every worker at the same step with a checkpoint there; exit code 130, continue
with `--resume`.

On a real cluster there is no launcher: set `TF_CONFIG` on each host (see the README)
and run the same command there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

GRACE = 30.0  # seconds the workers get to checkpoint after Ctrl-C


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    """The `TF_CONFIG` of worker `index` in a cluster of local `ports`."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def worker_command(command: list[str], run_name: str) -> list[str]:
    """The command each worker runs: `lrresearch` through this Python, the strategy
    binding appended, and `--run_name` added if it was missing (all workers must agree
    on it)."""
    if command and command[0] == "lrresearch":
        command = [sys.executable, "-m", "lrresearch", *command[1:]]
    command = [*command, "--gin_param", 'distribution.strategy = "multi_worker"']
    if not any(a == "--run_name" or a.startswith("--run_name=") for a in command):
        command += ["--run_name", run_name]
    return command


def _pump(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(f"{prefix}{line}")
        out.flush()


def _wait(processes: list[subprocess.Popen], seconds: float) -> None:
    end = time.monotonic() + seconds
    while any(p.poll() is None for p in processes) and time.monotonic() < end:
        time.sleep(0.2)


def _interrupt(signum: int, frame) -> None:
    del frame
    raise KeyboardInterrupt(signal.Signals(signum).name)


def launch(command: list[str], workers: int, timeout: float) -> int:
    """Runs `command` on `workers` local workers; returns 0 if all succeeded, else the
    first failure's exit code (130 after Ctrl-C or SIGTERM, 124 on timeout)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    command = worker_command(command, f"multiworker-{stamp}")
    ports = free_ports(workers)
    print(f"launch: {workers} workers on 127.0.0.1:{ports}: {' '.join(command)}", flush=True)
    # SIGTERM (e.g. from a scheduler) stops the cluster like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    processes, pumps = [], []
    for i in range(workers):
        env = dict(os.environ, TF_CONFIG=tf_config(ports, i))
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Own session: a terminal's Ctrl-C reaches the launcher only, which passes
            # one SIGINT to each worker (a second one would stop a worker at once).
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        processes.append(process)
        pump = threading.Thread(target=_pump, args=(process.stdout, f"[worker-{i}] ", sys.stdout))
        pump.start()
        pumps.append(pump)
    deadline = time.monotonic() + timeout
    code = 0
    try:
        while any(p.poll() is None for p in processes):
            failed = [p for p in processes if p.poll() not in (None, 0)]
            if failed:
                # The others wait for the failed one in their next all-reduce, forever:
                # nothing left to save consistently, so they are killed.
                code = failed[0].returncode
                print(f"launch: stopping the other workers after exit code {code}", flush=True)
                break
            if time.monotonic() > deadline:
                code = 124
                print(f"launch: the {timeout:.0f} s timeout: stopping the workers", flush=True)
                _stop_gracefully(processes)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        code = 130
        _stop_gracefully(processes)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait()
        for pump in pumps:
            pump.join()
    if code == 0:
        code = next((p.returncode for p in processes if p.returncode != 0), 0)
    print(f"launch: workers exited with {[p.returncode for p in processes]}", flush=True)
    return code


def _stop_gracefully(processes: list[subprocess.Popen]) -> None:
    """One SIGINT to each worker: they agree on a step, save a checkpoint there and
    exit 130 (see `lrresearch.training.distribute.CoordinatedStop`); killed after `GRACE` s."""
    print(f"launch: stopping the workers; up to {GRACE:.0f} s to save a checkpoint", flush=True)
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    _wait(processes, GRACE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s [--workers N] [--timeout S] -- lrresearch train [flags]",
    )
    parser.add_argument("--workers", type=int, default=2, help="number of worker processes")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="stop all workers after this many seconds"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --, e.g. -- lrresearch train --run_name mw")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    return launch(command, args.workers, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
