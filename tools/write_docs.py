"""Writes the reference pages under `docs/reference/` from the code (`lrresearch.cli.docgen`).

Run after changing a tag, a controller's docstring or signature, a `Trainer` argument
or a CLI flag: `python tools/write_docs.py`. `tests/test_docs.py` fails until the pages
on disk match the code.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    from lrresearch.cli import docgen

    changed = 0
    for relative, text in docgen.pages().items():
        path = os.path.join(REPO, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        old = None
        if os.path.exists(path):
            with open(path) as f:
                old = f.read()
        if old != text:
            with open(path, "w") as f:
                f.write(text)
            changed += 1
            print(f"wrote {relative}")
    print(f"{changed} of {len(docgen.pages())} pages changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
