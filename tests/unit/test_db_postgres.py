"""The PostgreSQL engine's connections: reads in autocommit, idle connections checked before use.

Against the test server (VAULT_TEST_DATABASE_URL), each test in a schema of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from tests.conftest import PG_URL, postgres_schema_url, requires_postgres
from vault import pgpool
from vault.db import make_engine, read_scope, session_scope

pytestmark = requires_postgres


@pytest.fixture
def engine() -> Iterator[Engine]:
    with postgres_schema_url() as url:
        engine = make_engine(url)
        try:
            with engine.begin() as connection:
                connection.execute(text("CREATE TABLE note (body text)"))
            yield engine
        finally:
            engine.dispose()


@pytest.fixture
def pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The connections the pool pinged before handing them out (the dialect's own ping)."""
    seen: list[object] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        seen.append(dbapi_connection)
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return seen


def _driver(connection: Connection) -> Any:
    return connection.connection.driver_connection


def _kill(pid: int) -> None:
    """Close a connection from the server's side, as a restart or an idle timeout would."""
    assert PG_URL
    with psycopg.connect(PG_URL, autocommit=True) as killer:
        assert killer.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        connection.commit()
    return int(pid)


def test_a_read_holds_no_transaction_between_statements(engine: Engine) -> None:
    with read_scope(engine) as connection:
        assert connection.execute(text("SELECT count(*) FROM note")).scalar_one() == 0
        # Autocommit: the statement's transaction ended with it, nothing is held open.
        assert _driver(connection).info.transaction_status == TransactionStatus.IDLE
        dbapi = _driver(connection)
    # Back in the pool, the connection is transactional again for the writers who get it next.
    with session_scope(engine) as session:
        assert _driver(session.connection()) is dbapi
        session.execute(text("INSERT INTO note VALUES ('kept')"))
        assert _driver(session.connection()).info.transaction_status == TransactionStatus.INTRANS
    with engine.connect() as connection:
        assert _driver(connection) is dbapi
        connection.execute(text("INSERT INTO note VALUES ('rolled back')"))
        connection.rollback()
        rows = connection.execute(text("SELECT body FROM note")).scalars().all()
    assert rows == ["kept"]


def test_a_connection_used_a_moment_ago_is_handed_out_without_a_ping(
    engine: Engine, pings: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend_pid(engine)  # the fixture's connection, checked in a moment ago
    assert _backend_pid(engine) == first
    assert pings == []
    # The same connection, idle past the limit, is pinged once before it is handed out.
    monkeypatch.setattr(pgpool, "PG_IDLE_PING_SECONDS", 0.0)
    assert _backend_pid(engine) == first
    assert len(pings) == 1


def test_an_idle_connection_the_server_closed_is_replaced_before_use(
    engine: Engine, pings: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = _backend_pid(engine)
    _kill(dead)
    monkeypatch.setattr(pgpool, "PG_IDLE_PING_SECONDS", 0.0)
    with read_scope(engine) as connection:
        # No error: the ping found the connection closed and the pool handed out a new one.
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert pid != dead
    assert pings  # the replacement came from the ping, not from a failed statement


def test_a_busy_connection_the_server_closed_fails_one_statement_then_is_replaced(
    engine: Engine, pings: list[object]
) -> None:
    dead = _backend_pid(engine)
    _kill(dead)
    # Used a moment ago, so handed out unchecked: the statement fails, as a restart under load
    # fails the requests in flight (the service reports StorageUnavailable) ...
    with read_scope(engine) as connection, pytest.raises(OperationalError) as raised:
        connection.execute(text("SELECT 1"))
    assert raised.value.connection_invalidated
    # ... and every connection pooled before the failure is replaced: the next one works.
    with read_scope(engine) as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert pid != dead
    assert pings == []


def test_connections_a_busy_moment_opened_are_kept_for_the_next(engine: Engine) -> None:
    """As many concurrent requests as the API runs threads, twice: the second time reuses the
    first time's connections, so PostgreSQL forks no backend for it (each fork cost more CPU
    than a read: BENCHMARKS.md, issue 14)."""
    threads = 25  # under the API's 40 request threads, over the old pool of 20
    assert threads <= pgpool.POOL_SIZE

    def busy_moment() -> set[int]:
        together = threading.Barrier(threads)
        pids: list[int] = []

        def hold() -> None:
            with read_scope(engine) as connection:
                pid = int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
                together.wait(timeout=30)  # every thread holds its connection at once
                pids.append(pid)  # only once they all did (a broken barrier raises)

        workers = [threading.Thread(target=hold) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert len(set(pids)) == threads
        return set(pids)

    first = busy_moment()
    assert busy_moment() == first
