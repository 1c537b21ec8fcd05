"""The `lrresearch` command line: the parser, the commands, `list` and the generated
reference pages. `main` is the console script (`lrresearch = "lrresearch.cli:main"`).
"""

from __future__ import annotations

from collections.abc import Sequence

from lrresearch import moved


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one `lrresearch` command; returns its exit code (0 done, 1 a run
    that failed while training, 2 bad input, 130 interrupted)."""
    from lrresearch.cli import commands  # loads TensorFlow only after `quiet` set it up

    return commands.main(argv)


__getattr__ = moved.forward("lrresearch.cli")
