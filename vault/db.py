"""Database engine and schema: SQLite (WAL) by default, PostgreSQL in production.

Every SQLite connection gets WAL, foreign keys, ``recursive_triggers`` (without it ``INSERT OR
REPLACE`` deletes a ledger row without firing the delete trigger) and ``BEGIN IMMEDIATE``
transactions, so writers queue for the lock instead of failing mid-transaction. Ledger tables
are append-only in the database itself: triggers abort UPDATE, DELETE (and on PostgreSQL
TRUNCATE). The one exception is a ledger entry's sealed opening (``LedgerEntry.opening_*``),
which purge and retention must be able to destroy: an UPDATE is refused when it sets any
column the ledger's proofs rest on, and allowed when it touches only those.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, bindparam, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session, create_engine

from vault import models  # also registers the tables on SQLModel.metadata
from vault.errors import ConfigError, StorageUnavailable, VaultMissing
from vault.pgpool import postgres_engine
from vault.sqlite_writers import WriterQueue

__all__ = [
    "APPEND_ONLY_TABLES",
    "MIGRATIONS",
    "READ_ONLY",
    "WRITER_FIRST",
    "append_only_problems",
    "append_only_statements",
    "check_schema",
    "current_revision",
    "deployment_warnings",
    "grant_app_role",
    "head_revision",
    "is_postgres",
    "make_engine",
    "migrate",
    "read_scope",
    "require_existing",
    "schema_revision",
    "session_scope",
]

log = logging.getLogger("vault.db")

APPEND_ONLY_TABLES = ("ledgerentry", "ledgernode", "ledgercheckpoint")
# Execution option marking a transaction that only reads (see session_scope).
READ_ONLY = "vault_read_only"
# Execution option marking a writer that goes before the others of its process on SQLite
# (the ledger's group commit; see vault.sqlite_writers).
WRITER_FIRST = "vault_writer_first"

# The columns of each ledger table an UPDATE may not set: all of them but a ledger entry's
# sealed opening (see the module docstring).
_FIXED_COLUMNS = {
    "ledgerentry": ("seq", "prev_hash", "entry"),
    "ledgernode": (),
    "ledgercheckpoint": (),
}
assert set(_FIXED_COLUMNS) == set(APPEND_ONLY_TABLES)
assert set(models.LEDGER_OPENING_COLUMNS).isdisjoint(_FIXED_COLUMNS["ledgerentry"])


def _update_of(table: str) -> str:
    """``UPDATE`` or ``UPDATE OF <fixed columns>``: what the guard's update trigger fires on."""
    fixed = _FIXED_COLUMNS[table]
    return f"UPDATE OF {', '.join(fixed)}" if fixed else "UPDATE"


# The guard, by trigger name. Stored as written (SQLite keeps the CREATE text, minus
# IF NOT EXISTS), which is how append_only_problems recognises an altered one.
_SQLITE_GUARD = {
    f"{table}_no_{op.lower()}": (
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()}"
        f" BEFORE {_update_of(table) if op == 'UPDATE' else op} ON {table}"
        f" BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
    )
    for table in APPEND_ONLY_TABLES
    for op in ("UPDATE", "DELETE")
}
_SQLITE_TRIGGERS = [
    stmt
    for name, create in _SQLITE_GUARD.items()
    for stmt in (f"DROP TRIGGER IF EXISTS {name}", create)
]

_PG_GUARD_BODY = "BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END"
# pg_trigger.tgtype bits: ROW 1, BEFORE 2, DELETE 8, UPDATE 16, TRUNCATE 32; and the columns
# an UPDATE trigger is limited to ("" for all).
_PG_GUARD = {
    **{
        f"{table}_append_only": (table, 1 | 2 | 8 | 16, ",".join(sorted(_FIXED_COLUMNS[table])))
        for table in APPEND_ONLY_TABLES
    },
    **{f"{table}_no_truncate": (table, 2 | 32, "") for table in APPEND_ONLY_TABLES},
}
_PG_TRIGGERS = [
    f"""CREATE OR REPLACE FUNCTION vault_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       {_PG_GUARD_BODY} $$""",
    *(
        stmt
        for table in APPEND_ONLY_TABLES
        for stmt in (
            f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}",
            f"""CREATE TRIGGER {table}_append_only BEFORE {_update_of(table)} OR DELETE
                ON {table} FOR EACH ROW EXECUTE FUNCTION vault_append_only()""",
            f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
            f"""CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
                FOR EACH STATEMENT EXECUTE FUNCTION vault_append_only()""",
        )
    ),
]


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the vault's connection settings applied."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return postgres_engine(parsed)
    raise ConfigError("VAULT_DATABASE_URL must be a sqlite:// or postgresql:// URL")


def require_existing(url: str) -> None:
    """VaultMissing unless an SQLite ``url`` names a database file that exists.

    Checked before :func:`make_engine`, which creates a missing file: a command run in the
    wrong folder must say where it looked, not make an empty vault there and report on it.
    (A PostgreSQL database always exists; its schema is checked once connected.)
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return
    database = parsed.database
    if not database or database == ":memory:" or not os.path.isfile(database):
        where = os.path.abspath(database) if database and database != ":memory:" else url
        raise VaultMissing(
            f"no vault database at {where}: run 'blovault admin init' to create a vault, "
            "or point VAULT_DATA_DIR (or VAULT_DATABASE_URL) at an existing one"
        )


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        path = os.path.abspath(database)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        if not os.path.exists(path):
            # Create the file 0600 before SQLite does (it would honour the umask).
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    engine = create_engine(
        url,
        # A pooled connection serves one thread at a time; the pool keeps the per-connection
        # pragmas below from running on every request.
        connect_args={"check_same_thread": False, "timeout": 30},
        # As many as the server's worker threads (AnyIO's 40, plus the ledger's committer):
        # connections beyond the pool would be opened and closed on every request.
        pool_size=48,
        max_overflow=16,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below); pysqlite's implicit transactions would defer it.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA recursive_triggers=ON",
            f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
            # A log that was started over is cut back to this size (see _WalKeeper).
            f"PRAGMA journal_size_limit={WAL_CHECKPOINT_BYTES}",
            # Each pooled connection keeps a private page cache (2 MiB by default); 64 of them
            # per process duplicate the same hot pages and kept server RSS growing under load.
            # The OS page cache serves the rest, so memory stays bounded at 64 x 512 KiB.
            "PRAGMA cache_size=-512",
            # Freed pages are zeroed, so destroyed keys (purge, rotation) don't linger in the file.
            "PRAGMA secure_delete=ON",
        ):
            cursor.execute(pragma)
        cursor.close()

    queue = keeper = None
    if database and database != ":memory:":
        queue = WriterQueue(os.path.abspath(database) + ".writer-lock")
        keeper = _WalKeeper(os.path.abspath(database) + "-wal")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front, so two of them never deadlock upgrading a
        # read lock; read-only transactions (READ_ONLY) take no lock at all and run beside them.
        options = conn.get_execution_options()
        readonly = options.get(READ_ONLY, False)
        if not readonly and queue is not None and conn.info.get(_QUEUED) is None:
            # Held until the connection goes back to the pool (every write path of the vault
            # returns it right after its COMMIT); a second transaction on the same checkout
            # keeps the turn it has instead of queueing behind itself.
            conn.info[_QUEUED] = queue.enter(first=options.get(WRITER_FIRST, False))
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    def _leave(_dbapi_conn: Any, record: Any, *_rest: Any) -> None:
        # The connection is back in the pool (or gone), so its transaction has ended.
        held = record.info.pop(_QUEUED, None) if record is not None else None
        if held is not None and queue is not None:
            queue.leave(held)

    def _checked_in(dbapi_conn: Any, record: Any) -> None:
        if keeper is not None and record is not None and _QUEUED in record.info:
            # A writer, still holding the writers' turn: no other writer can start meanwhile.
            keeper.after_write(dbapi_conn)
        _leave(dbapi_conn, record)

    event.listen(engine.pool, "checkin", _checked_in)
    for name in ("invalidate", "soft_invalidate", "close"):
        event.listen(engine.pool, name, _leave)

    return engine


BUSY_TIMEOUT_MS = 30_000
# Past this size, the write-ahead log is emptied after a write (see _WalKeeper).
WAL_CHECKPOINT_BYTES = 64 * 1024 * 1024
# How long that checkpoint waits for readers of older snapshots, and how long after one that
# had to give up (a long reader, a ledger export say) the next is tried.
WAL_CHECKPOINT_WAIT_MS = 200
WAL_CHECKPOINT_RETRY_SECONDS = 5.0


class _WalKeeper:
    """Keeps the write-ahead log of a database under constant reads from growing for ever.

    SQLite's automatic checkpoints (PASSIVE) copy the log into the database file but only start
    the log over when no reader is using it. When some reader always holds an older snapshot,
    that never happens: with reads that waited for their ledger entry inside their
    transaction, five minutes of ``bench.load`` took the log to 0.9 GB, and its ``-shm`` index,
    mapped into every server, grew with it. Reads no longer do that (Core._end_snapshot); this
    is the backstop for readers we don't control (a long export, another tool). After a write,
    while the writer still holds the writers' queue (vault.sqlite_writers.WriterQueue), a log
    past WAL_CHECKPOINT_BYTES gets a TRUNCATE checkpoint: it waits up to
    WAL_CHECKPOINT_WAIT_MS for the readers of older snapshots (new readers go to the database
    file once the log is copied), then empties the log. One that has to give up is not tried
    again for WAL_CHECKPOINT_RETRY_SECONDS, so a long reader costs writers one short wait, not
    one each.
    """

    def __init__(self, wal_path: str) -> None:
        self._wal = wal_path
        self._busy = threading.Lock()
        self._not_before = 0.0

    def after_write(self, dbapi_conn: Any) -> None:
        """Checkpoint through ``dbapi_conn`` (outside any transaction) if the log is too long."""
        try:
            size = os.stat(self._wal).st_size
        except OSError:
            return
        if size < WAL_CHECKPOINT_BYTES or time.monotonic() < self._not_before:
            return
        if not self._busy.acquire(blocking=False):
            return
        try:
            done = empty_wal(dbapi_conn, wait_ms=WAL_CHECKPOINT_WAIT_MS)
        except sqlite3.Error as exc:
            log.warning("write-ahead log checkpoint failed: %s", type(exc).__name__)
            done = False
        finally:
            self._busy.release()
        if not done:
            self._not_before = time.monotonic() + WAL_CHECKPOINT_RETRY_SECONDS


def empty_wal(dbapi_conn: Any, *, wait_ms: int) -> bool:
    """Copy the write-ahead log into the database file and empty it (a TRUNCATE checkpoint)
    through ``dbapi_conn``, outside any transaction; False if a reader of an older snapshot
    still held the log after ``wait_ms``, and some of it stays.

    Until it returns True, the old versions of pages a change overwrote (destroyed keys, say)
    may still be in the log, and in the database file until the log's copies replace them.
    """
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(wait_ms)}")
        try:
            busy, _, _ = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()
    return not busy


_QUEUED = "vault_writer_lock"


def is_postgres(engine: Engine) -> bool:
    """True for a PostgreSQL engine."""
    return engine.dialect.name == "postgresql"


MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _alembic_config(connection: Connection) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def append_only_statements(dialect: str) -> list[str]:
    """SQL that makes the ledger tables append-only on ``dialect`` (used by migrations, and
    to restore the guard); replaces triggers of the same names."""
    return list(_PG_TRIGGERS if dialect == "postgresql" else _SQLITE_TRIGGERS)


def _words(sql: str) -> str:
    return " ".join(sql.replace("IF NOT EXISTS ", "").split())


def append_only_problems(connection: Connection) -> list[str]:
    """What is wrong with the ledger tables' append-only triggers; empty when all are intact.

    Someone with the schema owner's rights can drop, disable or rewrite them; ``ledger verify``
    would still catch a rewritten ledger afterwards, but the vault should not go on appending
    to tables that no longer refuse rewrites.
    """
    if connection.dialect.name == "postgresql":
        return _pg_guard_problems(connection)
    stored: dict[str, str] = {
        name: sql
        for name, sql in connection.execute(
            text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        )
    }
    problems = []
    for name, create in _SQLITE_GUARD.items():
        if name not in stored:
            problems.append(f"trigger {name} is missing")
        elif _words(stored[name]) != _words(create):
            problems.append(f"trigger {name} was altered")
    return problems


# Every trigger on the ledger tables (the ones this connection's search_path finds), in one
# round trip.
_PG_GUARD_TRIGGERS = text(
    "SELECT c.relname, t.tgname, t.tgtype, t.tgenabled, t.tgqual IS NULL AS unconditional,"
    " (SELECT coalesce(string_agg(a.attname, ',' ORDER BY a.attname), '') FROM pg_attribute a"
    "  WHERE a.attrelid = c.oid AND a.attnum = ANY(t.tgattr::int2[])) AS columns,"
    " t.tgfoid = to_regprocedure('vault_append_only()') AS guard_function"
    " FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
    " WHERE c.relname IN :tables AND pg_table_is_visible(c.oid)"
).bindparams(bindparam("tables", value=list(APPEND_ONLY_TABLES), expanding=True))


def _pg_guard_problems(connection: Connection) -> list[str]:
    problems = []
    body = connection.execute(
        text("SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure('vault_append_only()')")
    ).scalar()
    if body is None or _words(body) != _words(_PG_GUARD_BODY):
        problems.append("function vault_append_only() is missing or altered")
    found = {(row.relname, row.tgname): row for row in connection.execute(_PG_GUARD_TRIGGERS)}
    for name, (table, kind, columns) in _PG_GUARD.items():
        row = found.get((table, name))
        if row is None:
            problems.append(f"trigger {name} is missing")
        elif row.tgenabled not in ("O", "A"):
            problems.append(f"trigger {name} is disabled")
        elif not (
            row.tgtype == kind
            and row.unconditional
            and row.columns == columns
            and row.guard_function
        ):
            problems.append(f"trigger {name} was altered")
    return problems


def migrate(engine: Engine) -> str:
    """Upgrade the schema to the newest revision and make sure the ledger's append-only guard
    is in place (restoring it if it was dropped or altered); returns the revision. Run as the
    schema owner."""
    try:
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), "head")
            if is_postgres(engine):
                # A deployment granted at an older revision lacked every table added since
                # (web sessions, officer keys, seizure records...) and failed at run time.
                for role in _app_roles(connection):
                    _grant(connection, role)
            problems = append_only_problems(connection)
            if problems:
                log.warning("restoring the ledger's append-only guard: %s", "; ".join(problems))
                for statement in append_only_statements(connection.dialect.name):
                    connection.execute(text(statement))
            return current_revision(connection) or ""
    except DBAPIError as exc:  # OperationalError on SQLite, ProgrammingError etc. on PostgreSQL
        # What failed, for the operator to act on (a statement of a migration, or the
        # connection): schema names and SQL errors, never a row's content. Rolled back.
        reason = str(exc.orig).strip().splitlines()[0][:300] if str(exc.orig).strip() else ""
        raise StorageUnavailable(
            f"database migration failed, nothing changed: {type(exc.orig).__name__}: {reason}"
        ) from None


def current_revision(connection: Connection) -> str | None:
    """The schema revision the database is at (None for an empty database)."""
    return MigrationContext.configure(connection).get_current_revision()


def schema_revision(engine: Engine) -> str | None:
    """The revision ``engine``'s database is at; None when no vault schema is there."""
    try:
        with engine.connect() as connection:
            return current_revision(connection)
    except OperationalError as exc:
        raise StorageUnavailable(f"database unavailable: {type(exc.orig).__name__}") from None


def head_revision() -> str:
    """The newest schema revision this code knows."""
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def check_schema(engine: Engine, *, require_guard: bool = True) -> None:
    """ConfigError unless the database is at the newest revision with the ledger's append-only
    guard intact (production: no auto-upgrade, no repair). ``require_guard=False`` only logs a
    missing guard: for verifying the ledger, which is most needed exactly then."""
    try:
        with engine.connect() as connection:
            current = current_revision(connection)
            if current != head_revision():
                raise ConfigError(
                    f"database schema is at {current or 'nothing'}, this vault needs "
                    f"{head_revision()}: run 'blovault admin migrate' as the schema owner"
                )
            problems = append_only_problems(connection)
    except OperationalError as exc:
        raise StorageUnavailable(f"database unavailable: {type(exc.orig).__name__}") from None
    if problems:
        message = (
            f"the ledger tables are not append-only ({'; '.join(problems)}): run 'blovault "
            "admin migrate' as the schema owner to restore the guard, and 'blovault ledger "
            "verify' to check the ledger"
        )
        if require_guard:
            raise ConfigError(message)
        log.warning("%s", message)


def deployment_warnings(engine: Engine) -> list[str]:
    """What about the database its operator should fix, though the vault runs on it."""
    if not is_postgres(engine):
        return []
    try:
        with engine.connect() as connection:
            autovacuum = connection.execute(text("SELECT current_setting('autovacuum')")).scalar()
    except OperationalError as exc:
        raise StorageUnavailable(f"database unavailable: {type(exc.orig).__name__}") from None
    if autovacuum == "on":
        return []
    # The listing's plans are the planner's, made for the table sizes of the last ANALYZE:
    # without autovacuum a growing vault is planned as the small one it was (README,
    # "Production").
    return [
        "PostgreSQL's autovacuum is off: listings are planned for the table sizes of the last "
        "ANALYZE and slow down as the vault grows; turn it on, or ANALYZE as the vault grows"
    ]


@contextmanager
def session_scope(
    engine: Engine, *, readonly: bool = False, writer_first: bool = False
) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any error.

    ``readonly`` sessions must not write: on SQLite they take no write lock. A
    ``writer_first`` session's transaction takes the process's turn to write on SQLite before
    the other writers waiting for it (see vault.sqlite_writers).
    """
    with Session(engine, expire_on_commit=False) as session:
        try:
            if readonly or writer_first:
                # Marked on the connection before its BEGIN (see _on_begin). Not through an
                # engine.execution_options() copy: every event on such a copy goes through
                # joined dispatchers, which cost every statement of every read.
                session.connection(
                    execution_options={READ_ONLY: True} if readonly else {WRITER_FIRST: True}
                )
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def read_scope(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction on a plain connection: for hot lookups that need no ORM session.

    Takes no write lock on SQLite (see _on_begin); writing through it is a bug. The
    transaction begins with the first statement; ``connection.commit()`` ends it early (a
    caller about to wait, see Core._write), and the next statement begins another. Whatever is
    open at the end is rolled back, which for a read is the same as a commit.

    On PostgreSQL the connection is in autocommit instead: each statement is a transaction of
    its own. At READ COMMITTED, PostgreSQL's default, that is all a transaction of several
    statements gives a reader anyway (every statement takes a new snapshot); it saves
    each read the round trips of its BEGIN and COMMIT, and leaves no transaction open ("idle
    in transaction", holding back VACUUM) while Python works between statements.
    """
    with engine.connect() as connection:
        connection.execution_options(**_READ_OPTIONS.get(engine.dialect.name, _READ_ONLY))
        yield connection


_READ_ONLY = {READ_ONLY: True}
_READ_OPTIONS = {"postgresql": _READ_ONLY | {"isolation_level": "AUTOCOMMIT"}}


_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def grant_app_role(engine: Engine, role: str) -> None:
    """PostgreSQL: let ``role`` run the service but never change or delete ledger rows.

    The role gets SELECT, INSERT, UPDATE and DELETE on the vault's other tables and only
    SELECT and INSERT on the ledger tables (and UPDATE of a ledger entry's sealed opening); the
    triggers stop even the owner from rewriting history, and this stops the service's own
    credentials from disabling them.
    """
    if not is_postgres(engine):
        raise ConfigError("database roles exist on PostgreSQL only")
    if not _ROLE.fullmatch(role):
        raise ConfigError("role names are lowercase letters, digits and '_'")
    with engine.begin() as conn:
        _grant(conn, role)


def _app_roles(conn: Connection) -> list[str]:
    """The roles granted as the service before (they may append to the ledger), the owner
    aside: a migration grants them the tables it adds."""
    return [
        row[0]
        for row in conn.exec_driver_sql(
            "SELECT DISTINCT grantee FROM information_schema.role_table_grants "
            "WHERE table_schema = current_schema() AND table_name = 'ledgerentry' "
            "AND privilege_type = 'INSERT' AND grantee <> current_user AND grantee <> 'PUBLIC'"
        )
        if _ROLE.fullmatch(row[0])
    ]


def _grant(conn: Connection, role: str) -> None:
    """grant_app_role's grants, in ``conn``'s transaction."""
    schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
    tables = [
        row[0]
        for row in conn.exec_driver_sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
    ]
    conn.exec_driver_sql(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
    conn.exec_driver_sql(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO {role}')
    for table in tables:
        if table in APPEND_ONLY_TABLES:
            conn.exec_driver_sql(f'REVOKE ALL ON "{table}" FROM {role}')
            conn.exec_driver_sql(f'GRANT SELECT, INSERT ON "{table}" TO {role}')
            if table == "ledgerentry":  # purge and retention destroy sealed openings
                opening = ", ".join(models.LEDGER_OPENING_COLUMNS)
                conn.exec_driver_sql(f'GRANT UPDATE ({opening}) ON "{table}" TO {role}')
        elif table == "alembic_version":
            conn.exec_driver_sql(f'REVOKE ALL ON "{table}" FROM {role}')
            conn.exec_driver_sql(f'GRANT SELECT ON "{table}" TO {role}')
        else:
            conn.exec_driver_sql(f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{table}" TO {role}')
