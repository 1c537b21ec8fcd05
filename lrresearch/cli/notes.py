"""Notes on stderr before a command runs: a user's gin file hiding a shipped one, a
`--gin_param` that a `--method` binds again (`sweep`, `tune`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def note_shadowed(gin_files: Sequence[str], search_path: Sequence[str]) -> None:
    """Says which file a `--gin_file` name or an `include` means when the user's own
    file of that name hides a shipped one (`files.shadowed`)."""
    from lrresearch.config import files

    for note in files.shadowed(gin_files, search_path):
        print(f"note: {note}", file=sys.stderr, flush=True)


def note_methods(args: argparse.Namespace) -> None:
    """Says which `--gin_param`s a `--method` of `sweep` or `tune` binds again
    (`methods.overridden`) and which of its files hide shipped ones; a bad `--method`
    is the command's to report."""
    from lrresearch.config import parse as config
    from lrresearch.studies import methods

    if args.resume or not args.method:
        return
    try:
        parsed = methods.parse_methods(args.method, args.gin_search_path)
    except config.ConfigError:
        return
    note_shadowed([name for m in parsed for name in m.gin_files], args.gin_search_path)
    for note in methods.overridden(args.gin_file, args.gin_param, parsed, args.gin_search_path):
        print(f"note: {note}", file=sys.stderr, flush=True)
