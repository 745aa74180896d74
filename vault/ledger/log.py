"""The database side of the ledger: append inside the caller's transaction, read, verify.

Appends are serialised: SQLite's ``BEGIN IMMEDIATE`` already holds the one write lock, and on
PostgreSQL a transaction-scoped advisory lock is taken before reading the head. The unique
``prev_hash`` and primary-key ``seq`` are the last line of defence: two writers that somehow
read the same head can't both commit, so the chain can't fork.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import text
from sqlmodel import Session, col, select

from vault.errors import LedgerCorrupt
from vault.ledger.entry import GENESIS_PREV, Entry, decode, leaf_hash
from vault.models import LedgerEntry

# Arbitrary constant naming the ledger's advisory lock on PostgreSQL.
_PG_LOCK_KEY = 0x424C4F5641554C54 & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Actor:
    """Who did something, as recorded in the ledger."""

    user: str
    agency: str = ""
    country: str = ""


def append(
    session: Session,
    *,
    actor: Actor,
    action: str,
    decision: str,
    reason: str,
    policy: str,
    package: str = "",
    file: str = "",
    release: str = "",
    subject: str = "",
    handling: str = "",
) -> int:
    """Append one entry in the session's transaction and return its sequence number."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    head = session.exec(select(LedgerEntry).order_by(col(LedgerEntry.seq).desc()).limit(1)).first()
    if head is None:
        seq, prev = 0, GENESIS_PREV
    else:
        seq, prev = head.seq + 1, leaf_hash(head.entry).hex()
    entry = Entry(
        seq=seq,
        time_us=time.time_ns() // 1000,
        actor_user=actor.user,
        actor_agency=actor.agency,
        actor_country=actor.country,
        action=action,
        package=package,
        file=file,
        release=release,
        subject=subject,
        decision=decision,
        reason=reason,
        handling=handling,
        policy=policy,
        prev=prev,
    )
    session.add(LedgerEntry(seq=seq, prev_hash=bytes.fromhex(prev), entry=entry.encode()))
    session.flush()
    return seq


def size(session: Session) -> int:
    """Number of entries."""
    head = session.exec(select(LedgerEntry.seq).order_by(col(LedgerEntry.seq).desc()).limit(1))
    last = head.first()
    return 0 if last is None else last + 1


def iter_rows(session: Session, *, start: int = 0, batch: int = 5000) -> Iterator[LedgerEntry]:
    """Stored rows in sequence order, fetched in batches."""
    next_seq = start
    while True:
        rows = session.exec(
            select(LedgerEntry)
            .where(col(LedgerEntry.seq) >= next_seq)
            .order_by(col(LedgerEntry.seq))
            .limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        next_seq = rows[-1].seq + 1


@dataclass(frozen=True)
class ChainReport:
    """Outcome of walking the hash chain."""

    size: int
    head_hash: str


def verify_chain(rows: Iterator[tuple[int, bytes, bytes]]) -> ChainReport:
    """Check ``(seq, prev_hash, entry)`` rows: contiguous, well-formed, each linked to the last.

    Raises LedgerCorrupt naming the first bad sequence number.
    """
    expected_seq = 0
    prev = GENESIS_PREV
    for seq, prev_hash, data in rows:
        if seq != expected_seq:
            raise LedgerCorrupt(
                f"entry {expected_seq} is missing (next stored is {seq})", seq=expected_seq
            )
        entry = decode(data, seq_hint=seq)
        if entry.seq != seq:
            raise LedgerCorrupt(f"entry {seq} claims sequence number {entry.seq}", seq=seq)
        if entry.prev != prev or prev_hash.hex() != prev:
            raise LedgerCorrupt(
                f"entry {seq} does not link to entry {seq - 1} (chain broken)", seq=seq
            )
        prev = leaf_hash(data).hex()
        expected_seq += 1
    return ChainReport(size=expected_seq, head_hash=prev)
