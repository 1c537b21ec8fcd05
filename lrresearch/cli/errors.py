"""How a command reports bad input: one line on stderr, and its exit code."""

from __future__ import annotations

import re
import sys

# gin appends "In call to configurable 'X' (<function X at 0x...>)" to errors raised
# inside a configurable; our messages already name what is at fault.
_GIN_CALL_NOTE = re.compile(r"\n\s*In call to configurable '[^']*' \(<[^>]*>\)")


def fail(message: str, code: int = 2) -> int:
    message = _GIN_CALL_NOTE.sub("", message)
    print(f"lrresearch: error: {message}", file=sys.stderr, flush=True)
    return code
