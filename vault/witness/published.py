"""The vault's record of its witnessed checkpoint and of each witness's lag, in its database.

The server's publisher (:mod:`vault.witness.running`) writes here; the service facade reads
here for ``GET /ledger/witnessed-checkpoint``, ``blovault ledger checkpoint --witnessed``,
``ledger prove --format tlog-proof``, ``ledger status``, the export and ``/metrics``. Kept in
the database (not a file) so every server process and every local command sees one record,
on SQLite and PostgreSQL alike. Nothing here authorises: the facade does.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import CursorResult, update
from sqlmodel import Session, col, select

from vault.errors import LedgerCorrupt, NotFound
from vault.ledger import log, merkle
from vault.ledger.note import NoteError, Verifier, open_checkpoint
from vault.models import WitnessedCheckpointRecord, WitnessLagRecord
from vault.schemas import WitnessedCheckpointInfo, WitnessLag, WitnessStatus
from vault.witness import publisher
from vault.witness.core import MAX_SIZE
from vault.witness.proof import format_tlog_proof

__all__ = [
    "NOTHING_PUBLISHED",
    "latest_witnessed",
    "record_lags",
    "store_witnessed",
    "tlog_proof",
    "witness_status",
    "witnessed_info",
]

NOTHING_PUBLISHED = (
    "no witnessed checkpoint has been published yet: the server publishes one once the "
    "witness policy's quorum (VAULT_WITNESS_POLICY) has cosigned a checkpoint"
)
_ROW = 1  # the one row of witnessedcheckpoint
_MAX_ERROR = 300


def store_witnessed(session: Session, note: str, size: int, *, now: datetime) -> bool:
    """Make ``note`` (a checkpoint of ``size`` that met the quorum) the witnessed checkpoint,
    unless a larger one is stored already; True if stored. One conditional UPDATE, so two
    publishers racing can never move it backwards."""
    moved: CursorResult[tuple[()]] = session.execute(  # type: ignore[assignment]
        update(WitnessedCheckpointRecord)
        .where(
            col(WitnessedCheckpointRecord.id) == _ROW,
            col(WitnessedCheckpointRecord.size) <= size,
        )
        .values(size=size, note=note, published_at=now)
    )
    if moved.rowcount:
        return True
    if session.get(WitnessedCheckpointRecord, _ROW) is not None:
        return False  # a larger one is there
    session.add(WitnessedCheckpointRecord(id=_ROW, size=size, note=note, published_at=now))
    session.flush()
    return True


def latest_witnessed(session: Session) -> WitnessedCheckpointRecord | None:
    """The stored witnessed checkpoint, if any."""
    return session.get(WitnessedCheckpointRecord, _ROW)


def _require(session: Session) -> WitnessedCheckpointRecord:
    row = latest_witnessed(session)
    if row is None:
        raise NotFound(NOTHING_PUBLISHED)
    return row


def witnessed_info(session: Session, verifier: Verifier, origin: str) -> WitnessedCheckpointInfo:
    """The witnessed checkpoint, its log signature checked; NotFound if none was published."""
    row = _require(session)
    try:
        cp = open_checkpoint(row.note, [verifier], origin)
    except NoteError as exc:
        raise LedgerCorrupt(f"the stored witnessed checkpoint does not verify: {exc}") from None
    return WitnessedCheckpointInfo(
        origin=cp.origin,
        size=cp.size,
        root=_b64(cp.root_hash),
        vkey=verifier.vkey(),
        note=row.note,
        published_at=row.published_at,
    )


def tlog_proof(session: Session, seq: int, verifier: Verifier, origin: str) -> tuple[str, bytes]:
    """A C2SP tlog-proof bundle for entry ``seq`` in the witnessed checkpoint, and the entry's
    exact bytes. NotFound if nothing is published or the entry is not covered yet."""
    info = witnessed_info(session, verifier, origin)
    if seq >= info.size:
        raise NotFound(f"entry {seq} is not in the witnessed checkpoint of {info.size} entries yet")
    entry = log.entry_bytes(session, seq)
    hashes = log.inclusion_proof(session, seq, info.size)
    try:  # never hand out a proof we could not verify ourselves
        merkle.verify_inclusion(
            merkle.leaf_hash(entry), seq, info.size, hashes, base64.b64decode(info.root)
        )
    except merkle.ProofError as exc:
        raise LedgerCorrupt(f"inclusion proof does not verify: {exc}", seq=seq) from None
    return format_tlog_proof(seq, hashes, info.note), entry


def record_lags(session: Session, lags: Sequence[publisher.WitnessLag], *, now: datetime) -> None:
    """Store what the publisher knows of each witness (one row per witness of the policy).

    Sizes and times come from the witnesses: they are brought into what the columns hold, so
    no value a witness sends can fail the transaction (and with it the witnessed checkpoint
    stored in the same round)."""
    for lag in lags:
        row = session.get(WitnessLagRecord, lag.name) or WitnessLagRecord(name=lag.name)
        row.size = min(max(lag.size, 0), MAX_SIZE)  # a signed 64-bit INTEGER
        row.cosigned_at = _time_of(lag.cosigned_at)
        row.error = None if lag.error is None else lag.error[:_MAX_ERROR]
        row.checked_at = now
        session.add(row)
    session.flush()


def _time_of(timestamp: int | None) -> datetime | None:
    """``timestamp`` (Unix seconds) as a time, None if none or past what a datetime holds
    (year 9999; the publisher drops cosignatures dated in the future anyway)."""
    if timestamp is None:
        return None
    try:
        return datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def witness_status(session: Session, *, now: datetime) -> WitnessStatus:
    """The ledger's size, the witnessed checkpoint's size and time, and each witness's lag."""
    size = log.size(session)
    row = latest_witnessed(session)
    lags = session.exec(select(WitnessLagRecord).order_by(col(WitnessLagRecord.name))).all()
    return WitnessStatus(
        ledger_size=size,
        witnessed_size=None if row is None else row.size,
        witnessed_at=None if row is None else row.published_at,
        witnesses=[
            WitnessLag(
                name=lag.name,
                size=lag.size,
                behind=max(size - lag.size, 0),
                cosigned_at=lag.cosigned_at,
                age_seconds=(
                    None
                    if lag.cosigned_at is None
                    else max((now - lag.cosigned_at).total_seconds(), 0.0)
                ),
                error=lag.error,
                checked_at=lag.checked_at,
            )
            for lag in lags
        ],
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
