"""One witness publisher per vault at a time, however many server processes serve it.

``blovault serve --workers N``, or several servers behind a load balancer, each start the
publisher thread. Witnesses accept one checkpoint per size and answer a publisher whose idea of
their state is stale with a conflict, so N publishers mostly make conflicts and duplicate
signatures. The lease decides which one publishes: the first to take it keeps it until it
stops (or its process dies, which frees it); the others check again each round.

* SQLite: an exclusive ``flock`` on a file beside the database (one host, which SQLite already
  requires of every process using the file). The kernel drops it with the process.
* PostgreSQL: a session-level advisory lock on a connection held for the purpose, keyed by the
  vault's schema, so vaults in other schemas of the same database don't contend. The server
  drops it with the connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from vault.db import is_postgres

__all__ = ["PublisherLease"]

_NAME = b"blo-vault/witness-publisher/v1\x00"


class PublisherLease:
    """Whether this process is the vault's witness publisher (:meth:`held`)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._fd: int | None = None
        self._connection: Connection | None = None
        self._key = 0

    def held(self) -> bool:
        """True if this process holds the lease, taking it if it is free. Never waits."""
        if self._fd is not None or self._connection is not None:
            return self._still_held()
        if is_postgres(self._engine):
            return self._take_advisory_lock()
        return self._take_file_lock()

    def release(self) -> None:
        """Give the lease up (another process takes it at its next round)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        if self._connection is not None:
            # Unlocked explicitly: closing only hands the connection back to the pool, whose
            # session would go on holding the lock.
            with contextlib.suppress(SQLAlchemyError):
                self._connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                self._connection.commit()
            with contextlib.suppress(SQLAlchemyError):
                self._connection.close()
            self._connection = None

    def _take_file_lock(self) -> bool:
        database = self._engine.url.database
        if not database or database == ":memory:":
            return True  # a database no other process can open: nobody to share with
        path = Path(database).with_name(Path(database).name + ".witness-publisher.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _take_advisory_lock(self) -> bool:
        try:
            connection = self._engine.connect()
        except SQLAlchemyError:
            return False
        try:
            schema = connection.execute(text("SELECT current_schema()")).scalar_one()
            self._key = _key(str(schema))
            taken = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key})
            got = bool(taken.scalar_one())
            connection.commit()  # the lock is the session's: it outlives the transaction
        except SQLAlchemyError:
            connection.close()
            return False
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

    def _still_held(self) -> bool:
        """A held file lock stays held; an advisory lock is lost if its connection was."""
        if self._connection is None:
            return True
        try:
            self._connection.execute(text("SELECT 1")).scalar_one()
            self._connection.commit()
        except SQLAlchemyError:
            self.release()
            return self.held()
        return True


def _key(schema: str) -> int:
    """A signed 64-bit advisory lock key for this vault's schema."""
    digest = hashlib.sha256(_NAME + schema.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
