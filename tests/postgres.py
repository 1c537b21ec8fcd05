"""A real PostgreSQL server for the tests that store a study in one (`lrresearch tune
--storage=postgresql://...`): `initdb` into a temporary folder, `pg_ctl start` on a free
loopback port, stopped and deleted afterwards. No mock: the server the users run.

`initdb` refuses to run as root, so as root the server runs as the `postgres` user
(`runuser`), in a folder that user owns (../shared/DESIGN.md, pitfalls). `.ci/run`
installs PostgreSQL when `initdb` is missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

from tests.support import free_port


def postgres_bin(tool: str) -> str | None:
    """The path of a PostgreSQL server program (`initdb`, `pg_ctl`), or None: on PATH, else
    the newest under Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Starts a throwaway PostgreSQL server; yields its SQLAlchemy URL
    (`postgresql://postgres@127.0.0.1:<port>/postgres`, trust authentication)."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError(
            "PostgreSQL's initdb/pg_ctl not found: install the server (Debian: "
            "apt-get install postgresql; .ci/run does)"
        )
    folder = pathlib.Path(tempfile.mkdtemp(prefix="lrresearch-pg-"))
    data, port = folder / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    try:
        subprocess.run(
            _as_server_user([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"]), **run
        )
        options = f"-k {folder} -p {port} -h 127.0.0.1"
        log = str(folder / "server.log")
        start = [pg_ctl, "-D", str(data), "-o", options, "-l", log, "-w", "start"]
        subprocess.run(_as_server_user(start), **run)
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                _as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=120,
            )
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{' '.join(e.cmd)} failed:\n{e.stdout}{e.stderr}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
