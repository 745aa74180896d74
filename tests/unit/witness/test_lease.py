"""vault.witness.lease: one witness publisher per vault, across processes.

SQLite's lease is a file lock, shown across two real processes; PostgreSQL's an advisory lock
keyed by schema, shown across connections and schemas. The publishing thread is shown to run
rounds only while it holds the lease.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine, create_engine

from tests.conftest import postgres_schema_url, requires_postgres
from vault.db import make_engine, migrate
from vault.witness.lease import PublisherLease
from vault.witness.publisher import Publisher
from vault.witness.running import PublishingThread

HOLD = """
import sys, time
from vault.db import make_engine
from vault.witness.lease import PublisherLease
lease = PublisherLease(make_engine(sys.argv[1]))
print(lease.held(), flush=True)
sys.stdin.readline()
"""


def _sqlite(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'vault.db'}")
    migrate(engine)
    return engine


def test_sqlite_lease_is_one_process_at_a_time(tmp_path: Path) -> None:
    engine = _sqlite(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(engine.url)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline().strip() == "True"
        ours = PublisherLease(engine)
        assert ours.held() is False
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
        assert ours.held() is True  # freed with the process
        assert ours.held() is True  # and kept
        other = PublisherLease(engine)
        assert other.held() is False
        ours.release()
        assert other.held() is True
        other.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lock_file = tmp_path / "vault.db.witness-publisher.lock"
    assert oct(lock_file.stat().st_mode & 0o777) == "0o600"


@requires_postgres
def test_postgres_lease_is_one_per_schema() -> None:
    with postgres_schema_url() as first_url, postgres_schema_url() as second_url:
        first, again, second = (make_engine(u) for u in (first_url, first_url, second_url))
        try:
            holder, rival, elsewhere = (PublisherLease(e) for e in (first, again, second))
            assert holder.held() is True
            assert rival.held() is False
            assert elsewhere.held() is True  # another vault's schema: its own lease
            assert holder.held() is True
            holder.release()  # unlocked, though its connection goes back to the pool
            assert rival.held() is True
            assert PublisherLease(first).held() is False
            rival.release()
            elsewhere.release()
        finally:
            for engine in (first, again, second):
                engine.dispose()


class _Counting:
    """A publisher that only counts its rounds (what the lease gates; no witness involved)."""

    def __init__(self) -> None:
        self.rounds = 0

    def publish_once(self) -> None:
        self.rounds += 1

    def lag(self) -> list[Any]:
        return []


def test_only_the_lease_holder_runs_publishing_rounds(tmp_path: Path) -> None:
    engine = _sqlite(tmp_path)
    publishers = [_Counting(), _Counting()]
    threads = [
        PublishingThread(engine=engine, publisher=cast(Publisher, p), cadence=0.01)
        for p in publishers
    ]
    threads[0].start()
    deadline = time.monotonic() + 10
    while publishers[0].rounds < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    threads[1].start()
    time.sleep(0.3)
    assert publishers[0].rounds > 3
    assert publishers[1].rounds == 0
    threads[0].stop()  # gives the lease up: the other takes over
    while publishers[1].rounds == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert publishers[1].rounds > 0
    threads[1].stop()
    assert not any(t.name == "witness-publisher" for t in threading.enumerate())


def test_a_private_database_needs_no_lease() -> None:
    assert PublisherLease(create_engine("sqlite://")).held() is True
