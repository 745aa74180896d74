"""Transactions on SQLite: read-only ones take no write lock, writers take it first and
queue for it on an OS lock."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, text

from vault import db, sqlite_writers
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


def lock_is_free(path: Path) -> bool:
    """Whether another descriptor could take the writers' lock right now."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_writers_hold_the_queue_lock_for_their_transaction_only(
    engine: Engine, tmp_path: Path
) -> None:
    lock = tmp_path / "db.sqlite.writer-lock"
    with session_scope(engine, readonly=True) as session:
        session.execute(text("SELECT count(*) FROM t"))
        assert lock_is_free(lock)
    with session_scope(engine) as session:
        session.execute(text("INSERT INTO t VALUES (1)"))
        assert not lock_is_free(lock)
    assert lock_is_free(lock)

    def failing_write() -> None:
        with session_scope(engine) as session:
            session.execute(text("INSERT INTO t VALUES (2)"))
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        failing_write()
    assert lock_is_free(lock)
    assert oct(lock.stat().st_mode & 0o777) == "0o600"


def test_a_writer_waits_its_turn_then_goes_ahead(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued behind a holder it waits; behind one that never lets go, it gives up queueing
    after WRITER_QUEUE_SECONDS and writes anyway (SQLite's own lock still guards the data)."""
    lock = tmp_path / "db.sqlite.writer-lock"
    with session_scope(engine) as session:  # creates the lock file
        session.execute(text("INSERT INTO t VALUES (1)"))
    holder = os.open(lock, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    wrote = threading.Event()

    def writer() -> None:
        with session_scope(engine) as session:
            session.execute(text("INSERT INTO t VALUES (2)"))
        wrote.set()

    thread = threading.Thread(target=writer)
    try:
        thread.start()
        assert not wrote.wait(0.5), "a writer went ahead while another held the queue"
    finally:
        os.close(holder)  # releases the lock
    assert wrote.wait(10)
    thread.join()

    stuck = os.open(lock, os.O_RDWR)
    fcntl.flock(stuck, fcntl.LOCK_EX)
    try:
        monkeypatch.setattr(sqlite_writers, "WRITER_QUEUE_SECONDS", 0.2)
        with session_scope(engine) as session:
            session.execute(text("INSERT INTO t VALUES (3)"))
    finally:
        os.close(stuck)
    with read_scope(engine) as connection:
        assert connection.execute(text("SELECT count(*) FROM t")).scalar_one() == 3


def test_writers_of_one_process_wait_in_turn_and_one_polls_the_file_lock(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another process holds the file lock, a process's waiting writers sleep on its own
    lock: one thread polls the file (20 polling threads cost more CPU than the writes did)."""
    lock = tmp_path / "db.sqlite.writer-lock"
    with session_scope(engine) as session:  # creates the lock file
        session.execute(text("INSERT INTO t VALUES (0)"))
    pollers: set[int] = set()
    flock = fcntl.flock

    def counted(fd: int, operation: int) -> None:
        pollers.add(threading.get_ident())
        flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", counted)
    holder = os.open(lock, os.O_RDWR)
    flock(holder, fcntl.LOCK_EX)  # another process's writer, say

    def writer(value: int) -> None:
        with session_scope(engine) as session:
            session.execute(text("INSERT INTO t VALUES (:v)"), {"v": value})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(1, 9)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(0.3 / len(threads))
        assert len(pollers) == 1, f"{len(pollers)} threads polled the file lock"
    finally:
        os.close(holder)
    for thread in threads:
        thread.join(10)
    with read_scope(engine) as connection:
        assert connection.execute(text("SELECT count(*) FROM t")).scalar_one() == 9


def test_the_ledgers_group_commit_writes_before_the_writers_queued_ahead_of_it(
    engine: Engine, tmp_path: Path
) -> None:
    """While another process holds the file lock, three writers of this process queue; a
    ``writer_first`` transaction that comes after them is the next to write once it is free."""
    lock = tmp_path / "db.sqlite.writer-lock"
    with session_scope(engine) as session:  # creates the lock file
        session.execute(text("INSERT INTO t VALUES (0)"))
    holder = os.open(lock, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process's writer, say

    def writer(value: int, *, first: bool = False) -> None:
        with session_scope(engine, writer_first=first) as session:
            session.execute(text("INSERT INTO t VALUES (:v)"), {"v": value})

    queued = [threading.Thread(target=writer, args=(n,)) for n in (1, 2, 3)]
    ahead = threading.Thread(target=writer, args=(100,), kwargs={"first": True})
    try:
        for thread in queued:
            thread.start()
        time.sleep(0.5)  # one of them polls the file lock, the other two wait their turn
        ahead.start()
        time.sleep(0.5)
    finally:
        os.close(holder)
    for thread in [*queued, ahead]:
        thread.join(10)
    with read_scope(engine) as connection:
        order = connection.execute(text("SELECT n FROM t ORDER BY rowid")).scalars().all()
    # The poller already had the process's turn; the group commit is next.
    assert order[:2] == [0, order[1]], order
    assert order[1] in (1, 2, 3), order
    assert order[2] == 100, order
    assert sorted(order) == [0, 1, 2, 3, 100]


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the threads never queued"
        time.sleep(0.005)


def test_a_turn_goes_to_a_first_thread_but_not_twice_while_another_waits() -> None:
    """The process's turn to write: a first thread (the group commit) goes before the others
    waiting, but when first threads keep coming the others still get every other turn."""
    turn = sqlite_writers.Turn()
    holders: list[str] = []
    guard = threading.Lock()

    def take(name: str, first: bool) -> None:
        assert turn.acquire(first=first, timeout=10)
        with guard:
            holders.append(name)
        turn.release()

    assert turn.acquire(first=False, timeout=1)  # held by this test
    threads = [threading.Thread(target=take, args=(f"other{n}", False)) for n in (1, 2)]
    threads += [threading.Thread(target=take, args=(f"first{n}", True)) for n in (1, 2)]
    for thread in threads[:2]:
        thread.start()
    _wait_until(lambda: turn._waiting[False] == 2)
    for thread in threads[2:]:
        thread.start()
    _wait_until(lambda: turn._waiting[True] == 2)
    turn.release()
    for thread in threads:
        thread.join(10)
    kinds = [name.rstrip("12") for name in holders]
    # Came last, went first; then the kinds take turns while both wait.
    assert kinds == ["first", "other", "first", "other"], holders


def test_a_turn_not_given_within_the_timeout_is_refused() -> None:
    turn = sqlite_writers.Turn()
    assert turn.acquire(first=False, timeout=1)
    assert not turn.acquire(first=True, timeout=0.05)
    assert not turn.acquire(first=False, timeout=0.05)
    turn.release()
    # A first waiter that gave up left nothing behind: the next taker gets the turn at once.
    assert turn.acquire(first=False, timeout=0.05)
    turn.release()


def test_two_write_transactions_on_one_checkout_keep_their_turn(
    engine: Engine, tmp_path: Path
) -> None:
    """A second BEGIN on the same connection must not queue behind its own lock."""
    lock = tmp_path / "db.sqlite.writer-lock"
    with engine.connect() as connection:
        with connection.begin():
            connection.execute(text("INSERT INTO t VALUES (1)"))
        done = threading.Event()

        def second() -> None:
            with connection.begin():
                connection.execute(text("INSERT INTO t VALUES (2)"))
            done.set()

        thread = threading.Thread(target=second)
        thread.start()
        assert done.wait(5), "the second transaction queued behind its own connection"
        thread.join()
        assert not lock_is_free(lock)
    assert lock_is_free(lock)


def grow_log_under_reads(engine: Engine, wal: Path, *, writes: int = 300) -> int:
    """Write ``writes`` 8 KiB rows while two threads keep a read transaction open at every
    moment (their snapshots overlap); the largest the write-ahead log got."""
    with session_scope(engine) as session:
        session.execute(text("CREATE TABLE IF NOT EXISTS blobs (b BLOB)"))
    stop = threading.Event()

    def read_forever(offset: float) -> None:
        stop.wait(offset)
        while not stop.is_set():
            with read_scope(engine) as connection:
                connection.execute(text("SELECT count(*) FROM blobs")).scalar_one()
                stop.wait(0.004)

    readers = [threading.Thread(target=read_forever, args=(d,)) for d in (0.0, 0.002)]
    for reader in readers:
        reader.start()
    largest = 0
    try:
        for _ in range(writes):
            with session_scope(engine) as session:
                session.execute(text("INSERT INTO blobs VALUES (:b)"), {"b": os.urandom(8192)})
            largest = max(largest, wal.stat().st_size)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    return largest


def test_a_log_under_constant_reads_grows_without_the_checkpoint(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The condition the keeper is for: SQLite's own checkpoints never start the log over.
    monkeypatch.setattr(db, "WAL_CHECKPOINT_BYTES", 1 << 40)
    largest = grow_log_under_reads(engine, tmp_path / "db.sqlite-wal")
    assert largest > 2 * 1024 * 1024  # 300 writes of 8 KiB, all still in the log


def test_a_log_under_constant_reads_is_emptied_past_its_limit(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "WAL_CHECKPOINT_BYTES", 256 * 1024)
    # A checkpoint can lose its race with the readers (then it gives up after
    # WAL_CHECKPOINT_WAIT_MS); here the next writer tries again at once.
    monkeypatch.setattr(db, "WAL_CHECKPOINT_RETRY_SECONDS", 0.0)
    largest = grow_log_under_reads(engine, tmp_path / "db.sqlite-wal")
    # The limit, plus the few writes that land while a checkpoint that lost its race waits.
    assert largest < 256 * 1024 + 256 * 1024
    with read_scope(engine) as connection:
        assert connection.execute(text("SELECT count(*) FROM blobs")).scalar_one() == 300


def test_a_checkpoint_blocked_by_a_long_reader_gives_up_and_waits_to_retry(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "WAL_CHECKPOINT_BYTES", 64 * 1024)
    tried: list[bool] = []
    checkpoint = db.empty_wal

    def counted(dbapi_conn: object, *, wait_ms: int) -> bool:
        tried.append(checkpoint(dbapi_conn, wait_ms=wait_ms))
        return tried[-1]

    monkeypatch.setattr(db, "empty_wal", counted)
    with session_scope(engine) as session:
        session.execute(text("CREATE TABLE blobs (b BLOB)"))
    with read_scope(engine) as long_reader:  # an export, say: holds its snapshot throughout
        long_reader.execute(text("SELECT count(*) FROM t")).scalar_one()
        for _ in range(20):
            with session_scope(engine) as session:
                session.execute(text("INSERT INTO blobs VALUES (:b)"), {"b": os.urandom(8192)})
        wal_size = (tmp_path / "db.sqlite-wal").stat().st_size
    # It tried once, gave up (the reader's snapshot needs the log) and did not try again for
    # the writers after it; the writes all went through.
    assert tried == [False]
    assert wal_size > 20 * 8192
    with session_scope(engine) as session:  # the reader is gone, but the retry is not due
        session.execute(text("INSERT INTO blobs VALUES (x'00')"))
    assert tried == [False]
