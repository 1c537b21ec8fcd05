"""Shared fixtures: short training runs trained once per session, and `user_code`.

The helpers the tests share (reading events, a small trainer, the CLI in a subprocess,
...) are in `tests/support.py`; fixtures are here, so pytest finds them for every folder.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest

from tests.support import GIN_DIR, SEED_RUNS, USER_CODE, Run, train


@pytest.fixture
def user_code(monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """`USER_CODE` on `sys.path` for this test: gin's `import user_pkg.workload` works."""
    monkeypatch.syspath_prepend(str(USER_CODE))
    return USER_CODE


@pytest.fixture(scope="session")
def seed_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Run]:
    """`seed_run(name)` trains the named seed-strategy run once per session."""
    logdir = tmp_path_factory.mktemp("seed_runs")
    cache: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in cache:
            gin_file, params = SEED_RUNS[name]
            cache[name] = train(logdir, [GIN_DIR / gin_file], params)
        return cache[name]

    return get
