"""``blovault ledger verify`` on the database: every entry, every stored node, every checkpoint.

The walk itself is :mod:`vault.ledger.verify` (shared with the offline verifier); this module
feeds it from the database. Verification reads every row, so it skips SQLAlchemy's result
layer: plain DB-API cursors, keyset batches, only the entry bytes and node hashes on the fast
path. Stored columns the fast path doesn't fetch (the link column, sequence numbers) are
compared with the entry bytes by the database itself.

With ``workers`` > 1 a large ledger is split into that many aligned ranges, walked at once by
forked processes, and stitched: each range starts from the Merkle frontier and previous leaf
stored at its start, and must end exactly where the next one starts. That path can only
confirm an intact ledger; on any doubt the whole ledger is walked again in one process, which
names the first bad entry exactly as a single-process run would.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import multiprocessing
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from sqlmodel import Session

from vault.ledger import log, merkle, note
from vault.ledger.verify import (
    BLOCK_LEVEL,
    RangeOutcome,
    Row,
    Start,
    VerifyResult,
    open_checkpoints,
    stored_node_problem,
    verify_entries,
    verify_range,
)

__all__ = [
    "MIN_PARALLEL",
    "confirm_in_parallel",
    "verify_database",
]

# Below this many entries one process is quicker than forking.
MIN_PARALLEL = 1 << 16

# Statements use named parameters (":lo"), rewritten for drivers that want "%(lo)s".
_ENTRIES_SQL = "SELECT entry FROM ledgerentry WHERE seq >= :lo ORDER BY seq LIMIT :n"
_ROWS_SQL = "SELECT seq, prev_hash, entry FROM ledgerentry WHERE seq >= :lo ORDER BY seq LIMIT :n"
_HASHES_SQL = (
    "SELECT hash FROM ledgernode WHERE level = :level AND idx >= :lo AND idx < :hi ORDER BY idx"
)
_NODES_SQL = (
    "SELECT idx, hash FROM ledgernode WHERE level = :level AND idx >= :lo AND idx < :hi"
    " ORDER BY idx"
)
_NODE_SQL = "SELECT hash FROM ledgernode WHERE level = :level AND idx = :idx"
_SEQ_RANGE_SQL = "SELECT count(*), min(seq), max(seq) FROM ledgerentry"
_LEAF_COUNT_SQL = "SELECT count(*) FROM ledgernode WHERE level = 0"
# The first entry whose link column is not the hex link that ends its bytes.
_LINK_COLUMN_SQL = {
    "sqlite": "SELECT min(seq) FROM ledgerentry WHERE seq >= :lo AND seq < :hi"
    " AND lower(hex(prev_hash)) != CAST(substr(entry, -64) AS TEXT)",
    "postgresql": "SELECT min(seq) FROM ledgerentry WHERE seq >= :lo AND seq < :hi"
    " AND encode(prev_hash, 'hex')"
    " != convert_from(substring(entry FROM octet_length(entry) - 63), 'UTF8')",
}


@dataclass
class _Db:
    """A DB-API connection and what it takes to speak to it."""

    connection: Any
    dialect: str
    paramstyle: str

    @classmethod
    def of(cls, session: Session) -> _Db:
        connection = session.connection()
        dialect = connection.dialect
        return cls(connection.connection.driver_connection, dialect.name, dialect.paramstyle)

    def query(self, sql: str) -> Callable[[dict[str, int]], list[Any]]:
        """``run(params) -> rows`` for one statement, on one cursor."""
        if self.paramstyle == "pyformat":
            sql = re.sub(r":(\w+)", r"%(\1)s", sql)
        cursor = self.connection.cursor()

        def run(params: dict[str, int]) -> list[Any]:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

        return run

    def one(self, sql: str, **params: int) -> Any:
        return self.query(sql)(params)[0]


class _StoredEntries:
    """The stored entries (an EntrySource): all of them, or ``start`` .. ``stop - 1`` of a
    ledger whose sequence numbers are already known to be exactly 0..n-1."""

    def __init__(self, db: _Db, *, start: int | None = None, stop: int | None = None) -> None:
        self._db = db
        self._start = start
        self._stop = stop
        self._entries = db.query(_ENTRIES_SQL)
        self._rows = db.query(_ROWS_SQL)

    def _limit(self, lo: int, n: int) -> int:
        return n if self._stop is None else max(0, min(n, self._stop - lo))

    def entries(self, lo: int, n: int) -> list[bytes]:
        n = self._limit(lo, n)
        return [r[0] for r in self._entries({"lo": lo, "n": n})] if n else []

    def rows(self, lo: int, n: int) -> list[Row]:
        n = self._limit(lo, n)
        rows = self._rows({"lo": lo, "n": n}) if n else []
        return [(r[0], bytes(r[1]), bytes(r[2])) for r in rows]

    def first_suspect(self) -> int | None:
        if self._start is None:
            count, low, high = self._db.one(_SEQ_RANGE_SQL)
            if count and (low, high) != (0, count - 1):
                return 0  # sequence numbers are not exactly 0..count-1: check every row
        lo = self._start or 0
        hi = (1 << 62) if self._stop is None else self._stop
        (first,) = self._db.one(_LINK_COLUMN_SQL[self._db.dialect], lo=lo, hi=hi)
        return None if first is None else int(first)


class _StoredNodes:
    """The stored Merkle nodes (a NodeSource)."""

    def __init__(self, db: _Db) -> None:
        self._hashes = db.query(_HASHES_SQL)
        self._nodes = db.query(_NODES_SQL)

    def hashes(self, level: int, lo: int, hi: int) -> list[bytes]:
        return [r[0] for r in self._hashes({"level": level, "lo": lo, "hi": hi})]

    def indexed(self, level: int, lo: int, hi: int) -> dict[int, bytes]:
        return {r[0]: bytes(r[1]) for r in self._nodes({"level": level, "lo": lo, "hi": hi})}


def verify_database(
    session: Session,
    *,
    origin: str,
    verifier: note.Verifier,
    progress: Callable[[int], None] | None = None,
    block_level: int = BLOCK_LEVEL,
    workers: int = 1,
    min_parallel: int = MIN_PARALLEL,
) -> VerifyResult:
    """Verify chain, leaves, tree and every stored checkpoint of the database's ledger.

    ``workers`` > 1 forks that many processes for a ledger of at least ``min_parallel``
    entries. Never pass it from a process with threads that may hold locks (a server).
    """
    try:
        checkpoints, db, leaf_count = _prepare(session, origin, verifier)
    except note.NoteError as exc:
        return VerifyResult(
            ok=False,
            size=log.size(session),
            root="",
            checkpoint_size=None,
            problem=f"a stored checkpoint does not verify: {exc}",
        )
    result = None
    if workers > 1:
        result = _in_parallel(
            db, checkpoints, workers, min_parallel, block_level, leaf_count, progress
        )
    if result is None:
        result = verify_entries(
            _StoredEntries(db),
            checkpoints=checkpoints,
            nodes=_StoredNodes(db),
            leaf_count=leaf_count,
            progress=progress,
            block_level=block_level,
        )
    if result.ok:
        bad = _check_stored_tree(_StoredNodes(db), result.size, from_level=block_level + 1)
        if bad is not None:
            return VerifyResult(
                ok=False,
                size=result.size,
                root="",
                checkpoint_size=result.checkpoint_size,
                first_bad_seq=bad[0],
                problem=bad[1],
            )
    return result


def confirm_in_parallel(
    session: Session,
    *,
    origin: str,
    verifier: note.Verifier,
    workers: int,
    block_level: int = BLOCK_LEVEL,
    min_parallel: int = MIN_PARALLEL,
) -> VerifyResult | None:
    """The parallel path alone: an ok result for the entries and the nodes up to
    ``block_level``, or None when it could not confirm them (then only a single-process walk
    says what is wrong). For tests and benchmarks; :func:`verify_database` uses it."""
    try:
        checkpoints, db, leaf_count = _prepare(session, origin, verifier)
    except note.NoteError:
        return None
    return _in_parallel(db, checkpoints, workers, min_parallel, block_level, leaf_count, None)


def _prepare(
    session: Session, origin: str, verifier: note.Verifier
) -> tuple[list[note.Checkpoint], _Db, int]:
    """The signature-checked checkpoints (NoteError if one fails), the raw connection and the
    number of stored leaves."""
    checkpoints = open_checkpoints(log.checkpoint_notes(session), verifier, origin)
    db = _Db.of(session)
    (leaf_count,) = db.one(_LEAF_COUNT_SQL)
    return checkpoints, db, leaf_count


def _in_parallel(
    db: _Db,
    checkpoints: Sequence[note.Checkpoint],
    workers: int,
    min_parallel: int,
    block_level: int,
    leaf_count: int,
    progress: Callable[[int], None] | None,
) -> VerifyResult | None:
    """An ok result if the ranges all check out and join up; None to walk it all again."""
    count, low, high = db.one(_SEQ_RANGE_SQL)
    if count < max(min_parallel, 2) or leaf_count != count or (low, high) != (0, count - 1):
        return None
    if any(c.size > count for c in checkpoints):
        return None
    block = 1 << block_level
    cuts = {(count * i // workers) // block * block for i in range(1, workers)}
    ranges = list(itertools.pairwise(sorted({0, count, *cuts})))
    starts: list[Start | None] = [None]
    for lo, _ in ranges[1:]:
        start = _stored_start(db, lo)
        if start is None:
            return None
        starts.append(start)

    def inside(lo: int, hi: int) -> list[note.Checkpoint]:
        return [c for c in checkpoints if (lo < c.size or c.size == 0 == lo) and c.size <= hi]

    context = multiprocessing.get_context("fork")
    children = []
    connect = _connector(db)
    for (lo, hi), start in zip(ranges[1:], starts[1:], strict=True):
        receive, send = context.Pipe(duplex=False)
        child = context.Process(
            target=_walk_range,
            args=(send, connect, db.dialect, db.paramstyle, hi, start, inside(lo, hi), block_level),
            daemon=True,
        )
        child.start()
        send.close()
        children.append((child, receive))
    try:
        first_hi = ranges[0][1]
        report = None if progress is None else (lambda n: progress(n * count // first_hi))
        outcomes = [
            verify_range(
                _StoredEntries(db, start=0, stop=first_hi),
                start=None,
                checkpoints=inside(0, first_hi),
                nodes=_StoredNodes(db),
                block_level=block_level,
                progress=report,
            )
        ]
        for child, receive in children:
            with contextlib.suppress(EOFError):
                outcome = receive.recv()
                outcomes.append(outcome if isinstance(outcome, RangeOutcome) else _FAILED)
            child.join()
    finally:
        for child, receive in children:
            receive.close()
            if child.is_alive():
                child.kill()
                child.join()
    if not _joined_up(ranges, outcomes, starts):
        return None
    if progress:
        progress(count)
    root = merkle.CompactRange.from_hashes(count, outcomes[-1].frontier).root()
    return VerifyResult(
        ok=True,
        size=count,
        root=base64.b64encode(root).decode(),
        checkpoint_size=max((c.size for c in checkpoints), default=None),
    )


_FAILED = RangeOutcome(False, 0, (), None)


def _joined_up(
    ranges: Sequence[tuple[int, int]],
    outcomes: Sequence[RangeOutcome],
    starts: Sequence[Start | None],
) -> bool:
    """Whether every range checked out, up to its end, and ended where the next one starts."""
    if len(outcomes) != len(ranges):
        return False
    for (_, hi), outcome, following in zip(ranges, outcomes, [*starts[1:], None], strict=True):
        if not outcome.ok or outcome.size != hi:
            return False
        if following is not None and (outcome.frontier, outcome.last_leaf) != (
            following.frontier,
            following.prev_leaf,
        ):
            return False
    return True


def _stored_start(db: _Db, seq: int) -> Start | None:
    """The frontier and previous leaf as stored at ``seq`` (None if a node is missing)."""
    node = db.query(_NODE_SQL)
    found = []
    for level, idx in [*merkle.root_nodes(seq), (0, seq - 1)]:
        rows = node({"level": level, "idx": idx})
        if not rows:
            return None
        found.append(bytes(rows[0][0]))
    return Start(seq, tuple(found[:-1]), found[-1])


def _connector(db: _Db) -> Callable[[], Any]:
    """Opens a new DB-API connection like ``db``'s, for a forked child (which must never use
    the parent's connections)."""
    connection = db.connection
    if db.dialect == "sqlite":
        ((_, _, path),) = [r for r in connection.execute("PRAGMA database_list") if r[1] == "main"]
        sqlite = type(connection)

        def open_sqlite() -> Any:
            return sqlite(f"file:{path}?mode=ro", uri=True)

        return open_sqlite
    info = connection.info  # psycopg: host, port, dbname, user, options (the search_path)
    params = info.get_parameters()
    password = info.password
    module = type(connection)

    def open_postgres() -> Any:
        return module.connect(**params, **({"password": password} if password else {}))

    return open_postgres


def _walk_range(
    send: Connection,
    connect: Callable[[], Any],
    dialect: str,
    paramstyle: str,
    stop: int,
    start: Start,
    checkpoints: list[note.Checkpoint],
    block_level: int,
) -> None:
    """Child process: walk ``start.seq`` .. ``stop - 1`` on a connection of its own."""
    outcome = _FAILED
    try:
        db = _Db(connect(), dialect, paramstyle)
        outcome = verify_range(
            _StoredEntries(db, start=start.seq, stop=stop),
            start=start,
            checkpoints=checkpoints,
            nodes=_StoredNodes(db),
            block_level=block_level,
        )
    except Exception:  # noqa: BLE001 - any failure here means: walk it all in one process
        outcome = _FAILED
    send.send(outcome)
    send.close()


def _check_stored_tree(
    nodes: _StoredNodes, size: int, *, from_level: int = 1, batch: int = 1 << 15
) -> tuple[int, str] | None:
    """Every stored node from ``from_level`` up must hash its two stored children, and every
    complete node must be there. With the levels below already proved against the entries,
    this proves the whole stored tree, so every proof drawn from it is right. Streams each
    level in batches: the primary key (level, idx) makes a full batch exactly the nodes
    lo..hi-1, so only counts and hashes are compared. Returns (first entry under the bad
    node, why) or None."""
    level = from_level
    while size >> level:
        complete = size >> level
        for lo in range(0, complete, batch):
            hi = min(complete, lo + batch)
            children = nodes.hashes(level - 1, 2 * lo, 2 * hi)
            stored = nodes.hashes(level, lo, hi)
            computed = merkle.parents(children)
            if stored == computed and len(stored) == hi - lo:
                continue
            bad = next(
                (lo + i for i, (a, b) in enumerate(zip(stored, computed, strict=False)) if a != b),
                lo + min(len(stored), len(computed)),
            )
            present = len(stored) == hi - lo
            return bad << level, stored_node_problem(level, bad, present)
        level += 1
    return None
