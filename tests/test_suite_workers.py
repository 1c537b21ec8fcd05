"""The suite's split between pytest-xdist workers (tests/conftest.py) keeps every session
fixture in one worker: each file that asks for one is listed in `SHARED_RUNS`."""

from __future__ import annotations

import ast
import pathlib

from tests.conftest import LONGEST_FIRST, SHARED_RUNS

TESTS = pathlib.Path(__file__).parent


def files_asking_for(fixture: str) -> set[str]:
    """Test files (relative to tests/) with a test or fixture taking `fixture` as argument."""
    found = set()
    for path in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and fixture in {a.arg for a in node.args.args}:
                found.add(path.relative_to(TESTS).as_posix())
    return found


def test_every_file_using_a_session_run_shares_its_worker():
    for fixture, files in SHARED_RUNS.items():
        using = files_asking_for(fixture)
        assert using, f"no test asks for {fixture}: drop it from SHARED_RUNS"
        assert using == set(files), (
            f"{fixture} is used by {sorted(using)}; SHARED_RUNS lists {sorted(files)}: "
            "list every file that uses it, or each worker trains it again"
        )


def test_every_longest_first_scope_exists():
    """A renamed or deleted file in `LONGEST_FIRST` would be skipped without a word."""
    for scope in LONGEST_FIRST:
        exists = scope in SHARED_RUNS or (TESTS.parent / scope).is_file()
        assert exists, f"LONGEST_FIRST lists {scope}: no such SHARED_RUNS group or file"
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
