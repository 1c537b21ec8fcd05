"""The test PostgreSQL server (tests/postgres.py) starts, stores and is gone after."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.postgres import postgres_server

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.database]


def test_a_throwaway_server_stores_and_stops():
    with postgres_server() as url:
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.text("create table t (x int)"))
            connection.execute(sa.text("insert into t values (7)"))
        with engine.connect() as connection:
            assert connection.execute(sa.text("select sum(x) from t")).scalar() == 7
        engine.dispose()
    with pytest.raises(sa.exc.OperationalError):
        sa.create_engine(url, connect_args={"connect_timeout": 2}).connect()
