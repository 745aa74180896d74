"""The openings of committed (version 2) ledger entries: sealed at rest, scoped on read,
destroyed by purge and retention.

Each opening is sealed (AES-256-GCM) under a key derived from the KEK for this one purpose
(``Keyring.subkey``), bound to the entry's sequence number, so a sealed opening moved to another
row does not open. Not under a data key of its own, wrapped, like a package's metadata: one
opening is written per committed entry, and a wrap per append was most of what sealing cost
(issue 18's append benchmark). Openings moved from the ``ledgeropening`` table (revision 0007)
keep their per-entry wrapped key (``opening_key``) until ``rotate-kek`` re-seals them. It is
stored in the entry's own row (``LedgerEntry.opening_*``). Destroying an opening sets those
columns to NULL; with SQLite's secure_delete and a WAL checkpoint (PostgreSQL: VACUUM) nothing
of it stays in the files.

Whom an entry concerns is decided when it is written, from what the vault itself knows: the
actor's country, the country of the package's originating agency, and the release's target
country. An auditor may open the entries that concern their own country; an admin only entries
that concern no package or release; nobody else any (default deny).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import update
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session, col, select

from vault import crypto
from vault.keys import KeyMaterial
from vault.ledger import commit
from vault.ledger.entry import decode
from vault.ledger.log import Record
from vault.models import (
    LEDGER_OPENING_COLUMNS,
    Agency,
    LedgerEntry,
    Package,
    Release,
    Role,
)

if TYPE_CHECKING:  # _core builds the sink from this module
    from vault.service._core import Principal

__all__ = ["Openings", "opening_identity"]


_K = TypeVar("_K")
_V = TypeVar("_V")
# What Keyring.subkey derives the openings' key for.
_PURPOSE = b"blo-vault/ledger-openings/v1"


def opening_identity(seq: int) -> bytes:
    """The context an entry's opening and its key are bound to."""
    return f"blo-vault/ledger-opening/v1\x00{seq}".encode()


class Openings:
    """Seals openings as entries are appended (an OpeningSink), and opens them in scope."""

    def __init__(self, keys: KeyMaterial, country_of: Callable[[Session, str], str]) -> None:
        self._keys = keys
        self._country_of = country_of  # an agency's country (Core.country_of, cached)
        # Packages never change agency, agencies never change country, and releases never
        # change target: what an entry concerns can be cached for the life of the process.
        # Bounded (oldest first out): unbounded, they grew with every package uploaded (a heap
        # snapshot comparison under bench.load showed it).
        self._package_country: dict[str, str] = {}
        self._release_countries: dict[str, tuple[str, str, str]] = {}
        self._concerns: dict[tuple[str, str, str], str] = {}  # (country, package, release)
        # One sealer per KEK (a handful at most): an AES-GCM key schedule per append cost more
        # than the sealing itself.
        self._sealers: dict[str, crypto.RecordSealer] = {}

    # --- writing ------------------------------------------------------------------------------

    def __call__(self, session: Session, record: Record, opening: commit.Opening) -> dict[str, Any]:
        package = record.package
        if not package and record.release:  # a refusal naming only a release: its package's
            package = self._release(session, record.release)[2]
        return {
            "opening_package": package,
            "opening_countries": self._countries(session, record),
            **self._seal(opening),
        }

    def _seal(self, opening: commit.Opening) -> dict[str, Any]:
        """The opening's key and sealed columns, under the current KEK."""
        kek_id = self._keys.keyring.current.id
        sealed = self._sealer(kek_id).seal(
            opening.to_bytes(), context=opening_identity(opening.seq)
        )
        # No opening_key: only openings moved from revision 0007 have a key of their own.
        return {"opening_kek_id": kek_id, "opening_sealed": sealed}

    def _sealer(self, kek_id: str) -> crypto.RecordSealer:
        """The sealer of openings under KEK ``kek_id``; IntegrityError if it is not loaded."""
        sealer = self._sealers.get(kek_id)
        if sealer is None:
            key = self._keys.keyring.subkey(kek_id, _PURPOSE)
            sealer = self._sealers[kek_id] = crypto.RecordSealer(key)
        return sealer

    def _countries(self, session: Session, record: Record) -> str:
        """The countries the entry concerns, sorted, each between spaces (" KZ UZ ")."""
        key = (record.actor.country, record.package, record.release)
        cached = self._concerns.get(key)
        if cached is not None:
            return cached
        found, lasting = {record.actor.country}, True
        if record.package:
            origin, lasting = self._origin(session, record.package)
            found.add(origin)
        if record.release:
            target, origin, _ = self._release(session, record.release)
            found.update((target, origin))
            lasting = lasting and bool(target)
        found.discard("")
        countries = "".join(f" {c}" for c in sorted(found)) + " " if found else ""
        return _remember(self._concerns, key, countries) if lasting else countries

    def _origin(self, session: Session, package_id: str) -> tuple[str, bool]:
        """The country of a package's originating agency ("" for an id that is no package),
        and whether what follows from it may be remembered.

        Not when the id named no package: package ids are chosen by their uploader, so one
        refused today may be a package tomorrow, and its entries must then concern its
        country. Nor when the package is this transaction's own (an upload), which may yet
        roll back and leave its id to another uploader: its country is then known without
        the join, which was a quarter of an upload's hold on SQLite's write lock (BENCHMARKS.md,
        "Issue 14, 2026-12-07 09:15"), and :meth:`uploaded` remembers it once committed.
        """
        country = self._package_country.get(package_id)
        if country is not None:
            return country, True
        if (added := _in_session(session, package_id)) is not None:
            return self._country_of(session, added.agency_code), False
        row = session.exec(
            select(Agency.country_code)
            .join(Package, col(Package.agency_code) == col(Agency.code))
            .where(Package.id == package_id)
        ).first()
        if row is None:
            return "", False
        return _remember(self._package_country, package_id, row), True

    def uploaded(self, package_id: str, country: str) -> None:
        """Remember the country of a package whose upload has committed."""
        _remember(self._package_country, package_id, country)

    def _release(self, session: Session, release_id: str) -> tuple[str, str, str]:
        """(target country, originating country, package) of a release."""
        found = self._release_countries.get(release_id)
        if found is None:
            row = session.exec(
                select(Release.country_code, Release.package_id).where(Release.id == release_id)
            ).first()
            if row is None:
                return ("", "", "")
            origin, lasting = self._origin(session, row[1])
            found = (row[0], origin, row[1])
            if lasting:
                _remember(self._release_countries, release_id, found)
        return found

    # --- reading ------------------------------------------------------------------------------

    @staticmethod
    def may_open(principal: Principal, package: str, countries: str) -> bool:
        """Whether ``principal`` may see the opening of an entry with these concerns."""
        if principal.role == Role.AUDITOR:
            return bool(principal.country) and f" {principal.country} " in countries
        if principal.role == Role.ADMIN:  # ``package`` is also set for entries about a release
            return not package
        return False

    def open_row(self, row: LedgerEntry) -> commit.Opening:
        """Unseal the opening stored in one entry's row; IntegrityError if it was tampered
        with or moved."""
        if row.opening_kek_id is None or row.opening_sealed is None:
            raise commit.OpeningError(f"entry {row.seq} has no stored opening")
        identity = opening_identity(row.seq)
        if row.opening_key is None:
            sealer = self._sealer(row.opening_kek_id)
        else:  # moved from revision 0007's table: a per-entry key, wrapped
            wrapped = crypto.WrappedKey(row.opening_kek_id, row.opening_key)
            sealer = crypto.RecordSealer(self._keys.keyring.unwrap(wrapped, context=identity))
        sealed = sealer.open(row.opening_sealed, context=identity)
        opening = commit.Opening.from_bytes(sealed)
        if opening.seq != row.seq:
            raise commit.OpeningError(f"the opening stored for entry {row.seq} is another's")
        return opening

    def scoped(
        self, session: Session, principal: Principal, start: int, stop: int | None
    ) -> dict[int, commit.Opening]:
        """The openings of entries ``[start, stop)`` that ``principal`` may see."""
        return {
            row.seq: self.open_row(row)
            for row in _stored(session, start, stop)
            if self.may_open(principal, row.opening_package or "", row.opening_countries or "")
        }

    def unscoped(self, session: Session, start: int, stop: int | None) -> dict[int, commit.Opening]:
        """Every stored opening of entries ``[start, stop)``, whoever asks: for the operator's
        own tooling on the server (it holds the KEK anyway), never for a route."""
        return {row.seq: self.open_row(row) for row in _stored(session, start, stop)}

    def rewrap(self, session: Session, current: str, batch: int) -> int:
        """Re-seal up to ``batch`` openings not under KEK ``current``; how many. Locked as
        read, as AdminService._rewrap_batch's keys are: a purge destroying openings between
        the read and the write would otherwise have them written back."""
        rows = session.exec(
            select(LedgerEntry)
            .where(col(LedgerEntry.opening_kek_id) != current)
            .where(col(LedgerEntry.opening_sealed).is_not(None))
            .limit(batch)
            .with_for_update()
        ).all()
        for row in rows:
            fresh = self._seal(self.open_row(row))
            # Only the opening columns change: the append-only guard refuses anything else.
            row.opening_kek_id, row.opening_key = fresh["opening_kek_id"], None
            row.opening_sealed = fresh["opening_sealed"]
            session.add(row)
        return len(rows)

    # --- destroying ---------------------------------------------------------------------------

    @staticmethod
    def destroy_package(session: Session, package_id: str) -> int:
        """Destroy the openings of every entry about ``package_id``; how many."""
        return _destroy(session, col(LedgerEntry.opening_package) == package_id)

    @staticmethod
    def destroy_purged(session: Session) -> int:
        """Destroy the openings of allowed entries about purged packages but each purge's own
        (it says who purged); how many. Such an entry is a read authorised just before a purge
        and committed just after it (group commit, maybe in another server process), whose
        opening the purge's own destroying came too early for. Refusals naming a purged id
        later are new events, and keep theirs."""
        rows = session.exec(
            select(LedgerEntry.seq, LedgerEntry.entry)
            .join(Package, col(Package.id) == col(LedgerEntry.opening_package))
            .where(
                col(Package.purged_at).is_not(None), col(LedgerEntry.opening_sealed).is_not(None)
            )
        ).all()
        late = [
            seq
            for seq, data in rows
            if (entry := decode(data)).decision == "allow" and entry.action != "purge"
        ]
        return _destroy(session, col(LedgerEntry.seq).in_(late)) if late else 0

    @staticmethod
    def destroy_before(session: Session, cutoff: datetime) -> int:
        """Destroy the openings of entries written before ``cutoff``; how many."""
        return _destroy(session, col(LedgerEntry.opening_at) < cutoff)


_CACHED = 4096  # entries per cache: the packages and releases being worked on now
# Appends run on request threads and the group committer at once: without it, two evictions
# could pick the same oldest key, or an insert land between iter() and next().
_CACHE_LOCK = threading.Lock()


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    """Put ``value`` in ``cache``, dropping the oldest entries beyond _CACHED; returns it."""
    with _CACHE_LOCK:
        cache[key] = value
        while len(cache) > _CACHED:
            del cache[next(iter(cache))]
    return value


def _in_session(session: Session, package_id: str) -> Package | None:
    """The package ``package_id`` if this session holds it already (no query)."""
    found = session.identity_map.get(identity_key(Package, package_id))
    return found if isinstance(found, Package) else None


def _stored(session: Session, start: int, stop: int | None) -> Iterator[LedgerEntry]:
    """The rows of entries ``[start, stop)`` that hold an opening."""
    query = select(LedgerEntry).where(
        col(LedgerEntry.seq) >= start, col(LedgerEntry.opening_sealed).is_not(None)
    )
    if stop is not None:
        query = query.where(col(LedgerEntry.seq) < stop)
    return iter(session.exec(query))


def _destroy(session: Session, where: Any) -> int:
    """NULL the opening columns of the rows ``where`` picks: the only UPDATE the ledger's
    append-only guard allows."""
    result = session.execute(
        update(LedgerEntry)
        .where(where, col(LedgerEntry.opening_sealed).is_not(None))
        .values(dict.fromkeys(LEDGER_OPENING_COLUMNS))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
