"""Transactions on SQLite: read-only ones take no write lock, writers take it first."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, text

from vault.db import make_engine, read_scope, session_scope


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with session_scope(engine) as session:
        session.execute(text("CREATE TABLE t (n INTEGER)"))
    yield engine
    engine.dispose()


def statements(engine: Engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _k, sql, *_rest: seen.append(sql))
    return seen


def test_readonly_begins_deferred_and_writers_immediate(engine: Engine) -> None:
    seen = statements(engine)
    with session_scope(engine, readonly=True) as session:
        session.execute(text("SELECT count(*) FROM t"))
    with session_scope(engine) as session:
        session.execute(text("INSERT INTO t VALUES (1)"))
    with read_scope(engine) as connection:
        connection.execute(text("SELECT n FROM t"))
    assert seen == [
        "BEGIN",
        "SELECT count(*) FROM t",
        "BEGIN IMMEDIATE",
        "INSERT INTO t VALUES (1)",
        "BEGIN",
        "SELECT n FROM t",
    ]


def count_readonly(engine: Engine, scope: str) -> int:
    if scope == "session":
        with session_scope(engine, readonly=True) as session:
            return int(session.execute(text("SELECT count(*) FROM t")).scalar_one())
    with read_scope(engine) as connection:
        return int(connection.execute(text("SELECT count(*) FROM t")).scalar_one())


@pytest.mark.parametrize("scope", ["session", "connection"])
def test_readonly_reads_while_a_writer_holds_the_lock(engine: Engine, scope: str) -> None:
    """A read must not queue behind a writer (BEGIN IMMEDIATE would wait for its lock)."""
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with session_scope(engine) as session:
            session.execute(text("INSERT INTO t VALUES (1)"))
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(10)
        done = threading.Event()

        def reader() -> None:
            # The writer's row is not committed yet: a reader sees the table without it.
            if count_readonly(engine, scope) == 0:
                done.set()

        read = threading.Thread(target=reader)
        read.start()
        # Generous: the reader needs no lock, so only a broken read-only path waits here.
        assert done.wait(5), "a read-only transaction waited for the writer (or saw its row)"
        read.join()
    finally:
        release.set()
        thread.join()
