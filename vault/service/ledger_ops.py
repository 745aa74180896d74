"""Ledger operations: verification, signed checkpoints, entries, inclusion and consistency
proofs, export; and the health figures (size, stats, readiness)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import func
from sqlmodel import Session, col, select

from vault.errors import InvalidInput, LedgerCorrupt, NotFound
from vault.ledger import check as ledger_check
from vault.ledger import commit, merkle, note
from vault.ledger import log as ledger
from vault.ledger.entry import Entry, decode, opened
from vault.models import LedgerEntry, Package, utcnow
from vault.schemas import (
    CheckpointInfo,
    ConsistencyProof,
    InclusionProof,
    LedgerEntries,
    LedgerReport,
    WitnessedCheckpointInfo,
    WitnessStatus,
)
from vault.service._core import ALLOW, Core, Principal
from vault.service.refusals import records_refusals
from vault.witness import published
from vault.witness.running import PublishingThread

_T = TypeVar("_T")

MAX_LEDGER_PAGE = 1000
# Openings are read (and scoped) for this many entries at a time.
_OPENING_BATCH = 5000
# The most entries one search (ledger_search) reads, decodes and opens, whatever the ledger's
# size: searching the whole ledger on every request let any auditor keep the server busy for
# seconds a request, and minutes on a ledger of millions. The caller continues below what
# was searched instead. A few times a page of /ledger/entries (MAX_LEDGER_PAGE), so a filter
# most entries pass fills its page in one request.
SEARCH_BUDGET = 2000
# A search's first batch: a filter most entries pass fills a page from it alone. Batches then
# double, so a rare match costs few queries.
_SEARCH_FIRST_BATCH = 100


class TextOut(Protocol):
    """Where an export is written: a text file, or a SealedSpool (vault.spool)."""

    def write(self, text: str, /) -> int: ...


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _opened(data: bytes, opening: commit.Opening) -> Entry:
    """The entry opened; LedgerCorrupt if its stored opening does not match it."""
    try:
        return opened(data, opening)
    except commit.OpeningError as exc:
        raise LedgerCorrupt(f"stored opening does not match: {exc}", seq=opening.seq) from None


@dataclass(frozen=True)
class LedgerSearch:
    """What :meth:`LedgerService.ledger_search` found: ``entries``, newest first, among the
    entries ``[low, high)``; those below ``low`` were not looked at (none are left if ``low``
    is 0); ``receipt``: the search's own ledger entry."""

    entries: list[Entry]
    low: int
    high: int
    receipt: int


class LedgerService:
    """What auditors and counterparts do with the ledger; every read of it is recorded."""

    def __init__(self, core: Core) -> None:
        self.core = core

    @property
    def verifier(self) -> note.Verifier:
        """The C2SP verifier of the log key (name = the ledger's origin)."""
        return note.Verifier.from_public_key(
            self.core.settings.ledger_origin, self.core.keys.ledger_key.public_key()
        )

    @property
    def vkey(self) -> str:
        """The verifier-key string counterparts use to check checkpoints offline."""
        return self.verifier.vkey()

    def record_read(self, principal: Principal, what: str) -> int:
        """Authorise an auditor's read of the ledger and write its entry; the receipt."""
        self.core.require_global(principal, "ledger", subject=what)
        return self.core.record_decision(principal.actor, "ledger", ALLOW, "ok", subject=what)

    @records_refusals("ledger")
    def verify_ledger(
        self,
        principal: Principal,
        progress: Callable[[int], None] | None = None,
        *,
        workers: int = 1,
        recorded: bool = False,
    ) -> LedgerReport:
        """Verify chain, tree and every signed checkpoint; report the first bad entry.

        Reads nothing but the database and the log's public key, and writes nothing unless
        ``recorded``, so it is safe to run against a copy of a suspect database. The server
        records it (a read of the whole ledger by a caller, like every other), with its
        receipt in the report. ``workers`` > 1 forks processes for a large ledger: only for
        a command-line process, never inside the server.
        """
        receipt = None
        if recorded:
            receipt = self.record_read(principal, "verify")
        else:
            self.core.require_global(principal, "ledger", subject="verify")
        with self.core.tx(readonly=True) as session:
            result = ledger_check.verify_database(
                session,
                origin=self.core.settings.ledger_origin,
                verifier=self.verifier,
                progress=progress,
                workers=workers,
            )
        return LedgerReport.model_validate({**result.as_dict(), "receipt": receipt})

    def checkpoint(self) -> CheckpointInfo:
        """Sign a checkpoint of the current tree (or return the latest if nothing changed)."""
        with self.core.tx() as session:
            row = ledger.sign_checkpoint(
                session, origin=self.core.settings.ledger_origin, key=self.core.keys.ledger_key
            )
        return self._checkpoint_info(row.note)

    def _checkpoint_info(self, signed: str) -> CheckpointInfo:
        origin = self.core.settings.ledger_origin
        body = note.open_checkpoint(signed, [self.verifier], origin)
        return CheckpointInfo(
            origin=body.origin,
            size=body.size,
            root=_b64(body.root_hash),
            vkey=self.vkey,
            note=signed,
        )

    @records_refusals("ledger")
    def latest_checkpoint(self, principal: Principal) -> CheckpointInfo:
        """The newest signed checkpoint (signed now if the tree grew since)."""
        receipt = self.record_read(principal, "checkpoint")
        return self.checkpoint().model_copy(update={"receipt": receipt})

    @records_refusals("ledger")
    def ledger_entries(self, principal: Principal, start: int, end: int) -> LedgerEntries:
        """Entries ``[start, end)`` as base64 of their exact bytes: at most
        ``MAX_LEDGER_PAGE`` (a longer range is cut to its first ones; ask again from ``start``
        plus the number returned), none if ``end`` is not above ``start``.

        Cut rather than refused: the API's schema can state two bounded integers but not a
        relation between them, and what it promises is what this does.
        """
        if start < 0:
            raise InvalidInput("entries: sequence numbers start at 0")
        end = max(start, min(end, start + MAX_LEDGER_PAGE))
        receipt = self.record_read(principal, f"entries:{start}-{end}")
        with self.core.tx(readonly=True) as session:
            items = [_b64(data) for _, data in ledger.iter_entries(session, start=start, stop=end)]
            scoped = self.core.openings.scoped(session, principal, start, end)
        return LedgerEntries(
            start=start,
            entries=items,
            openings=[o.to_json() for _, o in sorted(scoped.items())],
            receipt=receipt,
        )

    @records_refusals("ledger")
    def inclusion_proof(self, principal: Principal, seq: int) -> InclusionProof:
        """Prove entry ``seq`` is in the tree of the latest checkpoint (signed now if needed)."""
        if seq < 0:
            raise InvalidInput("sequence numbers start at 0")
        receipt = self.record_read(principal, f"prove:{seq}")
        return self.prove_entry(seq).model_copy(update={"receipt": receipt})

    def prove_entry(self, seq: int) -> InclusionProof:
        """Inclusion proof of entry ``seq`` up to the latest checkpoint, without a check or a
        ledger entry of its own: for operations that authorised and recorded themselves
        (an officer's key registration, issue 13)."""
        info = self.checkpoint()
        if seq >= info.size:
            raise NotFound(f"no ledger entry {seq}")
        with self.core.tx(readonly=True) as session:
            data = ledger.entry_bytes(session, seq)
            hashes = ledger.inclusion_proof(session, seq, info.size)
        leaf = merkle.leaf_hash(data)
        root = base64.b64decode(info.root)
        try:  # never hand out a proof we could not verify ourselves
            merkle.verify_inclusion(leaf, seq, info.size, hashes, root)
        except merkle.ProofError as exc:
            raise LedgerCorrupt(f"inclusion proof does not verify: {exc}", seq=seq) from None
        return InclusionProof(
            leaf_index=seq,
            tree_size=info.size,
            entry=_b64(data),
            leaf_hash=_b64(leaf),
            hashes=[_b64(h) for h in hashes],
            root=info.root,
            checkpoint=info.note,
        )

    @records_refusals("ledger")
    def consistency_proof(self, principal: Principal, old_checkpoint: str) -> ConsistencyProof:
        """Prove the current ledger extends a checkpoint saved earlier; LedgerCorrupt if not."""
        try:
            old = note.open_checkpoint(
                old_checkpoint, [self.verifier], self.core.settings.ledger_origin
            )
        except note.NoteError as exc:
            raise InvalidInput(
                f"the old checkpoint does not verify with this log's key: {exc}"
            ) from None
        receipt = self.record_read(principal, f"consistency:{old.size}")
        info = self.checkpoint()
        if old.size > info.size:
            raise LedgerCorrupt(
                f"the ledger was rolled back: it holds {info.size} entries, the saved "
                f"checkpoint {old.size}",
                seq=info.size,
            )
        with self.core.tx(readonly=True) as session:
            hashes = ledger.consistency_proof(session, old.size, info.size)
        new_root = base64.b64decode(info.root)
        try:
            merkle.verify_consistency(old.size, info.size, old.root_hash, new_root, hashes)
        except merkle.ProofError as exc:
            raise LedgerCorrupt(f"the ledger does not extend the saved checkpoint: {exc}") from None
        return ConsistencyProof(
            old_size=old.size,
            new_size=info.size,
            old_root=_b64(old.root_hash),
            new_root=info.root,
            hashes=[_b64(h) for h in hashes],
            checkpoint=info.note,
            receipt=receipt,
        )

    @records_refusals("ledger")
    def export_ledger(
        self,
        principal: Principal,
        out: TextOut,
        progress: Callable[[int], None] | None = None,
        *,
        scoped: bool = False,
    ) -> CheckpointInfo:
        """Write the export document (README: "Ledger export format") to ``out``, streamed:
        the public export, or with ``scoped`` also the openings ``principal`` may see."""
        self.record_read(principal, "export:scoped" if scoped else "export")
        info = self.checkpoint()
        witnessed = self._witnessed_note(info.size)
        out.write("{\n")
        out.write(f'  "origin": {json.dumps(info.origin)},\n')
        out.write(f'  "vkey": {json.dumps(info.vkey)},\n')
        out.write(f'  "checkpoint": {json.dumps(info.note)},\n')
        out.write(f'  "witnessed_checkpoint": {json.dumps(witnessed)},\n')
        out.write('  "entries": [')
        with self.core.tx(readonly=True) as session:
            for seq, data in ledger.iter_entries(session, stop=info.size):
                out.write(("\n    " if seq == 0 else ",\n    ") + '"' + _b64(data) + '"')
                if progress and seq % 4096 == 0:
                    progress(seq)
            out.write("\n  ]")
            if scoped:
                self._write_openings(session, principal, out, info.size)
        out.write("\n}\n")
        return info

    def _write_openings(
        self, session: Session, principal: Principal, out: TextOut, size: int
    ) -> None:
        """The ``openings`` member of a scoped export: those ``principal`` may see."""
        out.write(',\n  "openings": [')
        first = True
        for lo in range(0, size, _OPENING_BATCH):
            found = self.core.openings.scoped(
                session, principal, lo, min(size, lo + _OPENING_BATCH)
            )
            for _, opening in sorted(found.items()):
                text = json.dumps(opening.to_json(), sort_keys=True, separators=(",", ":"))
                out.write(("\n    " if first else ",\n    ") + text)
                first = False
        out.write("\n  ]")

    # --- witnesses: the witnessed checkpoint, its proofs, the server's publisher -----------

    def witness_publisher(self) -> PublishingThread | None:
        """The witness publisher VAULT_WITNESS_POLICY asks for (the server starts it), or None."""
        return PublishingThread.from_settings(
            self.core.settings, engine=self.core.engine, key=self.core.keys.ledger_key
        )

    def _witnessed_read(
        self, principal: Principal, subject: str, read: Callable[[Session], _T]
    ) -> tuple[_T, int]:
        """Authorise a read of witnessed data as a ledger read, run it, then record it (a
        NotFound from ``read`` is recorded as the refusal instead)."""
        self.core.require_global(principal, "ledger", subject=subject)
        with self.core.tx(readonly=True) as session:
            result = read(session)
        receipt = self.core.record_decision(principal.actor, "ledger", ALLOW, "ok", subject=subject)
        return result, receipt

    @records_refusals("ledger")
    def witnessed_checkpoint(self, principal: Principal) -> WitnessedCheckpointInfo:
        """The newest checkpoint a quorum of witnesses cosigned; NotFound if none yet."""
        info, receipt = self._witnessed_read(
            principal,
            "witnessed-checkpoint",
            lambda s: published.witnessed_info(s, self.verifier, self.core.settings.ledger_origin),
        )
        return info.model_copy(update={"receipt": receipt})

    @records_refusals("ledger")
    def tlog_proof(self, principal: Principal, seq: int) -> tuple[str, bytes, int]:
        """A C2SP tlog-proof bundle of entry ``seq`` in the witnessed checkpoint, the entry's
        bytes and the receipt; NotFound if nothing is witnessed or the entry not yet."""
        if seq < 0:
            raise InvalidInput("sequence numbers start at 0")
        (bundle, entry), receipt = self._witnessed_read(
            principal,
            f"tlog-proof:{seq}",
            lambda s: published.tlog_proof(s, seq, self.verifier, self.core.settings.ledger_origin),
        )
        return bundle, entry, receipt

    def _witnessed_note(self, size: int) -> str | None:
        """The witnessed checkpoint's note if it covers at most ``size`` entries (for export)."""
        with self.core.tx(readonly=True) as session:
            row = published.latest_witnessed(session)
        return row.note if row is not None and row.size <= size else None

    def witness_status(self) -> WitnessStatus:
        """Ledger size, witnessed size and each witness's lag (metrics, ``ledger status``)."""
        with self.core.tx(readonly=True) as session:
            return published.witness_status(session, now=utcnow())

    def ledger_show(self, principal: Principal) -> Iterator[Entry]:
        """Every entry, decoded, in order (callers filter); the read is recorded first.
        Committed entries come opened when ``principal`` may see their openings, else with
        their sensitive fields empty and ``hidden``."""
        self.record_read(principal, "show")
        with self.core.tx(readonly=True) as session:
            start = 0
            while batch := self._scoped_entries(session, principal, start, start + _OPENING_BATCH):
                yield from batch
                start += _OPENING_BATCH

    @records_refusals("ledger")
    def ledger_search(
        self,
        principal: Principal,
        keep: Callable[[Entry], bool],
        *,
        limit: int,
        below: int | None = None,
    ) -> LedgerSearch:
        """Up to ``limit`` entries for which ``keep`` holds, newest first, among at most
        SEARCH_BUDGET entries below ``below`` (by default the ledger's size, so not this
        search's own entry); the read is recorded first. ``keep`` sees each entry as
        :meth:`ledger_show` gives it: opened only if ``principal`` may see its opening.
        Search on below ``LedgerSearch.low`` for older ones."""
        size = self.ledger_size()
        high = size if below is None else max(0, min(below, size))
        floor = max(0, high - SEARCH_BUDGET)
        receipt = self.record_read(principal, f"search:{floor}-{high}")
        found: list[Entry] = []
        low, batch = high, _SEARCH_FIRST_BATCH
        with self.core.tx(readonly=True) as session:
            while low > floor and len(found) < limit:
                start = max(floor, low - batch)
                entries = self._scoped_entries(session, principal, start, low)
                low = start
                for entry in reversed(entries):
                    if keep(entry):
                        found.append(entry)
                        if len(found) == limit:
                            # The page is full: the next search starts just below it.
                            low = entry.seq
                            break
                batch = min(2 * batch, _OPENING_BATCH)
        return LedgerSearch(entries=found, low=low, high=high, receipt=receipt)

    def _scoped_entries(
        self, session: Session, principal: Principal, start: int, stop: int
    ) -> list[Entry]:
        """Entries ``[start, stop)`` decoded, in order; each committed one opened if
        ``principal`` may see its opening (the one scoping of every reader's view)."""
        scoped = self.core.openings.scoped(session, principal, start, stop)
        return [
            decode(data, seq_hint=seq) if (o := scoped.get(seq)) is None else _opened(data, o)
            for seq, data in ledger.iter_entries(session, start=start, stop=stop)
        ]

    def unscoped_entries(self, start: int = 0, stop: int | None = None) -> list[Entry]:
        """Entries ``[start, stop)`` decoded, each committed one opened whatever its scope
        (purged ones stay committed). Not recorded and not scoped: for the operator's tooling
        and tests on the server itself, which hold the KEK and the database anyway; no route
        or command reaches it."""
        with self.core.tx(readonly=True) as session:
            found = self.core.openings.unscoped(session, start, stop)
            rows = ledger.iter_entries(session, start=start, stop=stop)
            return [
                decode(data, seq_hint=seq) if (o := found.get(seq)) is None else _opened(data, o)
                for seq, data in rows
            ]

    # --- health -------------------------------------------------------------------------------

    def ledger_size(self) -> int:
        """Number of ledger entries (for health and metrics)."""
        with self.core.tx(readonly=True) as session:
            return ledger.size(session)

    def stats(self) -> dict[str, int]:
        """Ledger size, packages and plaintext bytes stored (for metrics)."""
        with self.core.tx(readonly=True) as session:
            packages, size = session.exec(
                select(func.count(), func.coalesce(func.sum(Package.size), 0)).where(
                    col(Package.purged_at).is_(None)
                )
            ).one()
            return {
                "ledger_entries": ledger.size(session),
                "packages": int(packages),
                "bytes": int(size),
            }

    def check_ready(self) -> None:
        """Raise StorageUnavailable unless database and object store answer."""
        with self.core.tx(readonly=True) as session:
            session.exec(select(LedgerEntry.seq).limit(1)).all()
        self.core.store.check()
