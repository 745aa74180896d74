"""The PostgreSQL engine's pool: connections checked before use only when they have been idle.

Kept apart from :mod:`vault.db`, which builds the engines and holds what both databases share.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import InvalidatePoolError
from sqlmodel import create_engine

__all__ = ["PG_IDLE_PING_SECONDS", "POOL_OVERFLOW", "POOL_SIZE", "postgres_engine"]

# A pooled PostgreSQL connection that has not been used for longer than this is checked with a
# round trip before it is handed out: a restart of the server, or its idle timeout, may have
# closed it meanwhile. One used more recently is handed out as it is.
PG_IDLE_PING_SECONDS = 5.0
_LAST_USED = "vault_last_used"

# Connections kept open a process: one for each request thread the API runs at once (AnyIO's
# default limit, 40), so the pool keeps every connection its load has needed. SQLAlchemy closes
# a connection opened beyond the pool's size when it is returned: with 20, every request past
# the 20th concurrent one forked a PostgreSQL backend and closed it again (1,017 sessions in a
# 30 s read load, 58 with 40; reads/s +30 %, BENCHMARKS.md, issue 14).
POOL_SIZE = 40
# And a few more, opened and closed as needed, for the ledger's committer and other background
# threads when every request thread holds one.
POOL_OVERFLOW = 10


def postgres_engine(url: URL) -> Engine:
    """A PostgreSQL engine whose pool checks only idle connections before handing them out.

    Not ``pool_pre_ping``, which pings on every checkout: under load that was a round trip per
    request, for connections that had been in use a moment before. A connection that is found
    closed while in use instead fails that one statement (StorageUnavailable), and SQLAlchemy
    then invalidates every connection pooled before it, so a restart costs the requests in
    flight, not every one after it.
    """
    engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
    dialect = engine.dialect

    def _used(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:  # None: a connection detached from the pool
            record.info[_LAST_USED] = time.monotonic()

    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get(_LAST_USED)
        if last is not None and time.monotonic() - last < PG_IDLE_PING_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except dialect.loaded_dbapi.Error as exc:
            if not dialect.is_disconnect(exc, dbapi_conn, None):
                raise
            # As pool_pre_ping does: this connection and every one pooled before it are
            # replaced (the pool retries the checkout with a new connection).
            raise InvalidatePoolError("a pooled connection was closed by the server") from exc
        record.info[_LAST_USED] = time.monotonic()

    event.listen(engine.pool, "connect", _used)
    event.listen(engine.pool, "checkin", _used)
    event.listen(engine.pool, "checkout", _checkout)
    return engine
