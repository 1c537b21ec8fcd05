"""Writes a page of measured results under `docs/`, with where and how it was measured.

Used by the scripts in `tools/` that measure (results, benchmarks, parity checks): each
writes its own page, so a figure in the docs always comes with its date, machine,
versions and the command that produced it, and re-running the command refreshes it.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> str:
    """`<CPU model> (<n> cores), <OS>`."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{model} ({os.cpu_count()} cores), {platform.system()} {platform.release()}"


def versions() -> str:
    """Python, TensorFlow, Keras, TensorBoard, and the lrresearch commit."""
    import keras
    import tensorboard
    import tensorflow as tf

    try:
        commit = subprocess.run(
            ["git", "-C", REPO, "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras "
        f"{keras.__version__}, TensorBoard {tensorboard.__version__}, lrresearch {commit}"
    )


def write_page(relative: str, title: str, body: str, seconds: float) -> str:
    """Writes `docs/...` (`relative` to the repository) with a header naming the date,
    machine, versions and the command line of this process; returns the path."""
    command = "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    header = (
        f"# {title}\n\n"
        f"<!-- Written by `{command}`; re-run it to refresh this page. -->\n\n"
        f"Measured on {datetime.date.today().isoformat()} by `{command}` "
        f"({seconds / 60:.1f} min), on {machine()}; {versions()}.\n\n"
    )
    path = os.path.join(REPO, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(header + body.rstrip() + "\n")
    return path


class _Tee:
    """A stream that writes to the real stdout and keeps a copy."""

    def __init__(self, stream):
        self.stream, self.parts = stream, []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def getvalue(self) -> str:
        return "".join(self.parts)


def run_and_write(main, relative: str, title: str, intro: str = "") -> None:
    """Runs `main()` with its printed output kept, then writes it to `docs/...` as a
    page (a text block after `intro`) with the date, machine, versions and command."""
    import contextlib
    import time

    start = time.perf_counter()
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        result = main()
    body = (intro.strip() + "\n\n" if intro else "") + "```text\n" + tee.getvalue() + "```\n"
    path = write_page(relative, title, body, time.perf_counter() - start)
    print(f"wrote {path}")
    return result
