"""A quiet start: TensorFlow's start-up noise off the terminal, its news kept.

Imported by `lrresearch.cli.commands` before TensorFlow loads. A user's own
`TF_CPP_MIN_LOG_LEVEL` wins: then TensorFlow's C++ output is not filtered at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

# TF's C++ INFO and WARNING lines hide the run's own output; ERROR lines stay.
USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# `I0000 00:00:1795982483.095363    3560 port.cc:153] message`: absl's C++ log format.
_TF_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] (.*)")


def startup_noise_removed(text: str) -> str:
    """TensorFlow's start-up stderr without its noise, everything else kept.

    absl prints what TF's libraries log while they load before TF_CPP_MIN_LOG_LEVEL
    takes effect: a banner and INFO lines ("oneDNN custom operations are on", "Could
    not find cuda drivers"), dropped here as the level would. On a machine without a
    CUDA driver, as TF has just said, "failed call to cuInit ... (303)" is no news
    either; any other ERROR or FATAL line, or cuInit failing with a driver, is kept.
    """
    no_driver = "Could not find cuda drivers on your machine" in text or (
        "failed call to cuInit" in text and _no_cuda_driver()
    )
    kept = []
    for line in text.splitlines(keepends=True):
        if line.startswith("WARNING: All log messages before absl::InitializeLog()"):
            continue
        if m := _TF_LOG_LINE.match(line):
            severity, message = m.groups()
            if severity in "IW" or (no_driver and "failed call to cuInit" in message):
                continue
        kept.append(line)
    return "".join(kept)


def _no_cuda_driver() -> bool:
    """True if the CUDA driver library (libcuda) is not installed: TF said so when it
    loaded, but that may have been before our capture (TF imported earlier)."""
    import ctypes.util

    return ctypes.util.find_library("cuda") is None


@contextlib.contextmanager
def tensorflow_start() -> Iterator[None]:
    """Captures stderr (C++ included) while the caller loads TensorFlow and finds its
    devices (where cuInit runs), then writes it back without the noise."""
    if USER_TF_LOG_LEVEL is not None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sys.stderr.write(startup_noise_removed(captured.read().decode(errors="replace")))
            sys.stderr.flush()


class DropLoopRetracingWarning(logging.Filter):
    """Drops TF's "N out of the last M calls to <function build.<locals>.loop>
    triggered tf.function retracing": every Trainer (one per controller in `profile`,
    one per point in `sweep`) has its own loops, each traced once, but TF counts traces
    per Python code object, so the sixth trainer's first call looks like a retrace."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            "triggered tf.function retracing" in message and "build.<locals>.loop at" in message
        )


@contextlib.contextmanager
def plain_warnings() -> Iterator[None]:
    """lrresearch's own warnings (`DataWarning`, a controller's run warnings) as one
    `warning: ...` line, like the CLI's errors, instead of Python's `file:line:
    Category: message` and a source line; other libraries' warnings unchanged."""
    original = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        if category.__module__.startswith("lrresearch") or filename.startswith(_PACKAGE_DIR):
            return f"warning: {message}\n"
        return original(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = original
