"""The database side of the ledger: append inside the caller's transaction, checkpoint, prove.

Appends are serialised: SQLite's ``BEGIN IMMEDIATE`` already holds the one write lock, and on
PostgreSQL a transaction-scoped advisory lock is taken before reading the head. The unique
``prev_hash`` and primary-key ``seq`` are the last line of defence: two writers that somehow
read the same head can't both commit, so the chain can't fork.

Each append also stores the Merkle tree's newly completed nodes (``LedgerNode``), so roots and
proofs need O(log n) reads, and signing a checkpoint never re-reads the log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, and_, bindparam, func, insert, or_, text
from sqlalchemy import select as sa_select
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from vault.db import session_scope
from vault.errors import InvalidInput, LedgerCorrupt, StorageUnavailable
from vault.ledger import commit, merkle, note
from vault.ledger.entry import GENESIS_PREV, Entry, leaf_hash
from vault.models import (
    LedgerCheckpoint,
    LedgerEntry,
    LedgerNode,
    utcnow,
)

__all__ = [
    "Actor",
    "GroupAppender",
    "OpeningSink",
    "Record",
    "append",
    "append_many",
    "checkpoint_notes",
    "consistency_proof",
    "entry_bytes",
    "inclusion_proof",
    "iter_entries",
    "latest_checkpoint",
    "leaf_count",
    "root",
    "sign_checkpoint",
    "size",
]

# Arbitrary constant naming the ledger's advisory lock on PostgreSQL.
_PG_LOCK_KEY = 0x424C4F56  # "BLOV"; the two-int advisory lock form takes 32-bit keys


@dataclass(frozen=True)
class Actor:
    """Who did something, as recorded in the ledger."""

    user: str
    agency: str = ""
    country: str = ""


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        # One lock per schema: several vaults may share a database in separate schemas.
        session.execute(
            text("SELECT pg_advisory_xact_lock(:k, hashtext(current_schema()))"),
            {"k": _PG_LOCK_KEY},
        )


_NODE_QUERIES: dict[int, Any] = {}


def _node_query(count: int) -> Any:
    """SELECT of ``count`` nodes by primary key: an OR of lookups, which both databases answer
    from the index (a row-value IN makes SQLite scan the table). Built once per count, so
    SQLAlchemy compiles it once."""
    query = _NODE_QUERIES.get(count)
    if query is None:
        wanted = or_(
            *(
                and_(
                    col(LedgerNode.level) == bindparam(f"l{i}"),
                    col(LedgerNode.idx) == bindparam(f"i{i}"),
                )
                for i in range(count)
            )
        )
        query = _NODE_QUERIES[count] = select(
            LedgerNode.level, LedgerNode.idx, LedgerNode.hash
        ).where(wanted)
    return query


def _nodes(session: Session, ids: Sequence[merkle.NodeID]) -> dict[merkle.NodeID, bytes]:
    """Fetch the named complete nodes in one query."""
    unique = sorted(set(ids))
    if not unique:
        return {}
    params: dict[str, int] = {}
    for i, (level, idx) in enumerate(unique):
        params[f"l{i}"], params[f"i{i}"] = level, idx
    rows = session.execute(_node_query(len(unique)), params).all()
    return {(level, idx): bytes(digest) for level, idx, digest in rows}


# The Merkle frontier after the last append, per database: (tree size, last leaf, frontier).
# Valid only while the database's head is that very leaf at that size, which each append
# checks first; otherwise (another process appended, a transaction rolled back) it reloads.
_FRONTIERS: dict[str, tuple[int, bytes, merkle.CompactRange]] = {}


def _database_key(session: Session) -> str:
    return session.connection().engine.url.render_as_string(hide_password=True)


def _frontier(session: Session, size_now: int, head_leaf: bytes) -> merkle.CompactRange:
    cached = _FRONTIERS.get(_database_key(session))
    if cached is not None and cached[0] == size_now and cached[1] == head_leaf:
        return cached[2].copy()
    ids = merkle.root_nodes(size_now)
    get = _getter(session, ids)
    return merkle.CompactRange.from_hashes(size_now, [get(lv, ix) for lv, ix in ids])


def _getter(session: Session, ids: Sequence[merkle.NodeID]) -> merkle.GetNode:
    found = _nodes(session, ids)

    def get(level: int, idx: int) -> bytes:
        try:
            return found[(level, idx)]
        except KeyError:
            raise LedgerCorrupt(f"Merkle node ({level}, {idx}) is missing") from None

    return get


@dataclass(frozen=True)
class Record:
    """What an entry says, before the log gives it a sequence number, time and link."""

    actor: Actor
    action: str
    decision: str
    reason: str
    policy: str
    package: str = ""
    file: str = ""
    release: str = ""
    subject: str = ""
    handling: str = ""


class OpeningSink(Protocol):
    """Turns the opening of a committed entry into the values of its row's ``opening_*``
    columns (sealed), in the transaction that appends the entry; all but ``opening_at``, which
    the insert takes from the database's clock, and ``opening_key`` (only openings moved from
    revision 0007 have a key of their own)."""

    def __call__(
        self, session: Session, record: Record, opening: commit.Opening
    ) -> dict[str, Any]: ...


def _encode(
    record: Record, seq: int, now_us: int, prev: str, sink: OpeningSink | None
) -> tuple[bytes, commit.Opening | None]:
    """The entry's bytes: version 1 without a sink, else version 2 and its opening."""
    if sink is None:
        return _encode_v1(record, seq, now_us, prev), None
    actor = record.actor
    return commit.encode_values(
        seq,
        now_us,
        (record.action, record.decision, record.policy),
        # commit.SENSITIVE's order
        (
            actor.user,
            actor.agency,
            actor.country,
            record.package,
            record.file,
            record.release,
            record.subject,
            record.reason,
            record.handling,
        ),
        prev,
    )


def _encode_v1(record: Record, seq: int, now_us: int, prev: str) -> bytes:
    entry = Entry(
        seq=seq,
        time_us=now_us,
        actor_user=record.actor.user,
        actor_agency=record.actor.agency,
        actor_country=record.actor.country,
        action=record.action,
        package=record.package,
        file=record.file,
        release=record.release,
        subject=record.subject,
        decision=record.decision,
        reason=record.reason,
        handling=record.handling,
        policy=record.policy,
        prev=prev,
    )
    return entry.encode()


def append(session: Session, **fields: Any) -> int:
    """Append one entry (see :class:`Record` for the fields) in the session's transaction."""
    return append_many(session, [Record(**fields)])[0]


_INSERT_ENTRY = insert(LedgerEntry.__table__)  # type: ignore[attr-defined]
# A committed entry's row, with its opening: the opening's time comes from the database's clock
# rather than a bound datetime, which SQLAlchemy converts and formats in Python on every append.
_INSERT_COMMITTED = _INSERT_ENTRY.values(opening_at=func.now())
_INSERT_NODE = insert(LedgerNode.__table__)  # type: ignore[attr-defined]
# The head entry; built once (building it cost more than running it, per batch).
_HEAD = (
    sa_select(col(LedgerEntry.seq), col(LedgerEntry.entry))
    .order_by(col(LedgerEntry.seq).desc())
    .limit(1)
)


def append_many(
    session: Session, records: Sequence[Record], *, sink: OpeningSink | None = None
) -> list[int]:
    """Append entries (and their new tree nodes) in the session's transaction; return seqs.

    With a ``sink`` the entries are version 2 (vault.ledger.commit), stored with the sink's
    sealed openings in their own rows.

    Reads the head entry and the tree's frontier once (O(log n) nodes), then builds every
    entry, link and node in memory and inserts them together, so a batch costs little more
    than one entry.
    """
    _lock(session)
    head = session.connection().execute(_HEAD).first()
    if head is None:
        size_now, head_leaf, prev = 0, b"", GENESIS_PREV
    else:
        size_now, head_leaf = head[0] + 1, leaf_hash(bytes(head[1]))
        prev = head_leaf.hex()
    frontier = _frontier(session, size_now, head_leaf)
    entries: list[dict[str, Any]] = []  # without an opening (version 1, or public)
    committed: list[dict[str, Any]] = []  # with one
    nodes: list[dict[str, Any]] = []
    seqs: list[int] = []
    now_us = time.time_ns() // 1000
    for offset, record in enumerate(records):
        seq = size_now + offset
        data, opening = _encode(record, seq, now_us, prev, sink)
        leaf = leaf_hash(data)
        row = {"seq": seq, "prev_hash": bytes.fromhex(prev), "entry": data}
        if opening is None or sink is None:
            entries.append(row)
        else:
            committed.append(row | sink(session, record, opening))
        nodes.extend(
            {"level": n.level, "idx": n.idx, "hash": n.hash} for n in frontier.append(leaf)
        )
        prev = leaf.hex()
        seqs.append(seq)
    if nodes:  # every entry adds a leaf
        # Core inserts on the session's connection: the ORM's bulk path costs more than the
        # commit's fsync at these batch sizes. (Each statement's rows name the same columns.)
        connection = session.connection()
        for statement, rows in ((_INSERT_ENTRY, entries), (_INSERT_COMMITTED, committed)):
            if rows:
                connection.execute(statement, rows)
        connection.execute(_INSERT_NODE, nodes)
        _FRONTIERS[_database_key(session)] = (frontier.size, bytes.fromhex(prev), frontier)
    return seqs


def size(session: Session) -> int:
    """Number of entries."""
    last = session.exec(
        select(LedgerEntry.seq).order_by(col(LedgerEntry.seq).desc()).limit(1)
    ).first()
    return 0 if last is None else last + 1


def root(session: Session, tree_size: int) -> bytes:
    """Merkle root of the first ``tree_size`` entries, from stored nodes."""
    ids = merkle.root_nodes(tree_size)
    return merkle.root_at(tree_size, _getter(session, ids))


def inclusion_proof(session: Session, index: int, tree_size: int) -> list[bytes]:
    """RFC 9162 inclusion proof of entry ``index`` in the tree of ``tree_size`` entries."""
    if not 0 <= index < tree_size:
        raise InvalidInput(f"entry {index} is not in a tree of {tree_size} entries")
    plan = merkle.inclusion_proof_nodes(index, tree_size)
    return merkle.resolve_proof(plan, _getter(session, [i for group in plan for i in group]))


def consistency_proof(session: Session, old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 consistency proof between two tree sizes."""
    if not 0 <= old_size <= new_size:
        raise InvalidInput("a consistency proof needs 0 <= old size <= new size")
    plan = merkle.consistency_proof_nodes(old_size, new_size)
    return merkle.resolve_proof(plan, _getter(session, [i for group in plan for i in group]))


def entry_bytes(session: Session, seq: int) -> bytes:
    """The stored bytes of one entry."""
    row = session.get(LedgerEntry, seq)
    if row is None:
        raise InvalidInput(f"no ledger entry {seq}")
    return row.entry


def iter_entries(
    session: Session, *, start: int = 0, stop: int | None = None, batch: int = 5000
) -> Iterator[tuple[int, bytes]]:
    """``(seq, bytes)`` in sequence order, fetched in batches."""
    next_seq = start
    while stop is None or next_seq < stop:
        query = select(LedgerEntry.seq, LedgerEntry.entry).where(col(LedgerEntry.seq) >= next_seq)
        if stop is not None:
            query = query.where(col(LedgerEntry.seq) < stop)
        rows = session.exec(query.order_by(col(LedgerEntry.seq)).limit(batch)).all()
        if not rows:
            return
        yield from ((s, bytes(e)) for s, e in rows)
        next_seq = rows[-1][0] + 1


def checkpoint_notes(session: Session) -> list[str]:
    """Every stored signed checkpoint, oldest first."""
    return list(
        session.exec(select(LedgerCheckpoint.note).order_by(col(LedgerCheckpoint.size))).all()
    )


def latest_checkpoint(session: Session) -> LedgerCheckpoint | None:
    """The checkpoint with the largest tree size."""
    return session.exec(
        select(LedgerCheckpoint).order_by(col(LedgerCheckpoint.size).desc()).limit(1)
    ).first()


def sign_checkpoint(session: Session, *, origin: str, key: Ed25519PrivateKey) -> LedgerCheckpoint:
    """Sign the current tree, after proving it extends the last signed one.

    Returns the latest checkpoint unchanged when the ledger has not grown. Refuses (with
    LedgerCorrupt) to sign a tree that a consistency proof can't connect to the last
    checkpoint, so the log never signs a fork.
    """
    _lock(session)
    tree_size = size(session)
    last = latest_checkpoint(session)
    verifier = note.Verifier.from_public_key(origin, key.public_key())
    new_root = root(session, tree_size) if tree_size else merkle.EMPTY_ROOT
    if last is not None:
        try:
            old = note.open_checkpoint(last.note, [verifier], origin=origin)
        except note.NoteError as exc:
            raise LedgerCorrupt(f"the last stored checkpoint does not verify: {exc}") from None
        if old.size > tree_size:
            raise LedgerCorrupt(
                f"the ledger holds {tree_size} entries but checkpoint {old.size} was signed",
                seq=tree_size,
            )
        if old.size == tree_size:
            if old.root_hash != new_root:
                raise LedgerCorrupt("the ledger no longer matches its last checkpoint")
            return last
        proof = consistency_proof(session, old.size, tree_size)
        try:
            merkle.verify_consistency(old.size, tree_size, old.root_hash, new_root, proof)
        except merkle.ProofError as exc:
            raise LedgerCorrupt(f"refusing to sign a tree that forks the log: {exc}") from None
    body = note.Checkpoint(origin=origin, size=tree_size, root_hash=new_root)
    signed = note.sign_checkpoint(body, origin, key)
    row = LedgerCheckpoint(size=tree_size, note=signed, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def leaf_count(session: Session) -> int:
    """Number of level-0 nodes stored."""
    return int(
        session.exec(
            select(func.count()).select_from(LedgerNode).where(LedgerNode.level == 0)
        ).one()
    )


# How long a reader waits for its entry's group commit before giving up (StorageUnavailable).
WAIT_SECONDS = 60.0


class GroupAppender:
    """Group commit for entries that record reads and refusals.

    Concurrent requests queue their records; one thread appends everything queued in a single
    transaction and one commit (one fsync), then hands each caller its sequence number. The
    caller waits for the commit, so nothing is returned to a client before its access is on
    the ledger. Writes that change state (uploads, releases, ...) don't come here: they append
    in their own transaction, atomically with the change.
    """

    def __init__(
        self, engine: Engine, *, max_batch: int = 1000, sink: OpeningSink | None = None
    ) -> None:
        self._engine = engine
        self._sink = sink
        self._max_batch = max_batch
        self._queue: list[tuple[Record, Future[int]]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def append(self, record: Record, *, timeout: float = WAIT_SECONDS) -> int:
        """Queue one record and wait until it is committed; return its seq.

        Raises StorageUnavailable if the database could not take it.
        """
        try:
            return self.submit(record).result(timeout=timeout)
        except FutureTimeout:
            raise StorageUnavailable("the ledger did not answer in time") from None

    def submit(self, record: Record) -> Future[int]:
        """Queue one record; the future gives its seq once it is committed (or
        StorageUnavailable if the database could not take it). For a caller that waits
        elsewhere than on a thread of its own (an event loop): it must not act on the record's
        behalf before the future is done.

        The future is already running, so it can't be cancelled: the record is committed (or
        fails) with its batch whoever still waits for it."""
        future: Future[int] = Future()
        future.set_running_or_notify_cancel()
        with self._cond:
            if self._closed:
                raise StorageUnavailable("the ledger is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ledger-group-commit", daemon=True
                )
                self._thread.start()
            self._queue.append((record, future))
            self._cond.notify()
        return future

    def close(self) -> None:
        """Finish what is queued and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
            try:
                # Ahead of the other writers of this process: each waiter in the batch is a
                # request held until it is committed.
                with session_scope(self._engine, writer_first=True) as session:
                    seqs = append_many(session, [record for record, _ in batch], sink=self._sink)
            except OperationalError as exc:
                failure: BaseException = StorageUnavailable(
                    "the database is unavailable; nothing was recorded"
                )
                failure.__cause__ = exc
                for _, future in batch:
                    future.set_exception(failure)
            except Exception as exc:  # noqa: BLE001 - every waiter must be woken
                for _, future in batch:
                    future.set_exception(exc)
            else:
                for (_, future), seq in zip(batch, seqs, strict=True):
                    future.set_result(seq)
