"""The openings of committed (version 2) ledger entries: sealed at rest, scoped on read,
destroyed by purge and retention.

Each opening is sealed under a fresh per-entry key wrapped by the KEK (the same pattern as a
package's metadata), bound to the entry's sequence number, so a sealed opening moved to another
row does not open. Destroying an opening deletes its row (wrapped key and all); with SQLite's
secure_delete and a WAL checkpoint (PostgreSQL: VACUUM) nothing of it stays in the files.

Whom an entry concerns is decided when it is written, from what the vault itself knows: the
actor's country, the country of the package's originating agency, and the release's target
country. An auditor may open the entries that concern their own country; an admin only entries
that concern no package or release; nobody else any (default deny).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete
from sqlmodel import Session, col, select

from vault import crypto
from vault.keys import KeyMaterial
from vault.ledger import commit
from vault.ledger.log import Record
from vault.models import Agency, LedgerOpening, Package, Release, Role, utcnow

if TYPE_CHECKING:  # _core builds the sink from this module
    from vault.service._core import Principal

__all__ = ["Openings", "opening_identity"]


def opening_identity(seq: int) -> bytes:
    """The context an entry's opening and its key are bound to."""
    return f"blo-vault/ledger-opening/v1\x00{seq}".encode()


class Openings:
    """Seals openings as entries are appended (an OpeningSink), and opens them in scope."""

    def __init__(self, keys: KeyMaterial) -> None:
        self._keys = keys
        # Packages never change agency, agencies never change country, and releases never
        # change target: what an entry concerns can be cached for the life of the process.
        self._package_country: dict[str, str] = {}
        self._release_countries: dict[str, tuple[str, str, str]] = {}

    # --- writing ------------------------------------------------------------------------------

    def __call__(self, session: Session, record: Record, opening: commit.Opening) -> dict[str, Any]:
        identity = opening_identity(opening.seq)
        key = crypto.new_data_key()
        wrapped = self._keys.keyring.wrap(key, context=identity)
        package = record.package
        if not package and record.release:  # a refusal naming only a release: its package's
            package = self._release(session, record.release)[2]
        return {
            "seq": opening.seq,
            "package": package,
            "countries": self._countries(session, record),
            "created_at": utcnow(),
            "kek_id": wrapped.kek_id,
            "wrapped_key": wrapped.blob,
            "sealed": crypto.seal_bytes(key, opening.to_bytes(), context=identity),
        }

    def _countries(self, session: Session, record: Record) -> str:
        found = {record.actor.country}
        if record.package:
            found.add(self._origin_country(session, record.package))
        if record.release:
            found.update(self._release(session, record.release)[:2])
        found.discard("")
        return "".join(f" {c}" for c in sorted(found)) + " " if found else ""

    def _origin_country(self, session: Session, package_id: str) -> str:
        country = self._package_country.get(package_id)
        if country is None:
            row = session.exec(
                select(Agency.country_code)
                .join(Package, col(Package.agency_code) == col(Agency.code))
                .where(Package.id == package_id)
            ).first()
            if row is None:  # a refusal naming an id that is no package: concerns no country
                return ""
            country = self._package_country[package_id] = row
        return country

    def _release(self, session: Session, release_id: str) -> tuple[str, str, str]:
        """(target country, originating country, package) of a release."""
        found = self._release_countries.get(release_id)
        if found is None:
            row = session.exec(
                select(Release.country_code, Release.package_id).where(Release.id == release_id)
            ).first()
            if row is None:
                return ("", "", "")
            found = (row[0], self._origin_country(session, row[1]), row[1])
            self._release_countries[release_id] = found
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

    def open_row(self, row: LedgerOpening) -> commit.Opening:
        """Unseal one stored opening; IntegrityError if it was tampered with or moved."""
        identity = opening_identity(row.seq)
        key = self._keys.keyring.unwrap(
            crypto.WrappedKey(row.kek_id, row.wrapped_key), context=identity
        )
        opening = commit.Opening.from_bytes(crypto.open_bytes(key, row.sealed, context=identity))
        if opening.seq != row.seq:
            raise commit.OpeningError(f"the opening stored for entry {row.seq} is another's")
        return opening

    def scoped(
        self, session: Session, principal: Principal, start: int, stop: int | None
    ) -> dict[int, commit.Opening]:
        """The openings of entries ``[start, stop)`` that ``principal`` may see."""
        query = select(LedgerOpening).where(col(LedgerOpening.seq) >= start)
        if stop is not None:
            query = query.where(col(LedgerOpening.seq) < stop)
        return {
            row.seq: self.open_row(row)
            for row in session.exec(query)
            if self.may_open(principal, row.package, row.countries)
        }

    def unscoped(self, session: Session, start: int, stop: int | None) -> dict[int, commit.Opening]:
        """Every stored opening of entries ``[start, stop)``, whoever asks: for the operator's
        own tooling on the server (it holds the KEK anyway), never for a route."""
        query = select(LedgerOpening).where(col(LedgerOpening.seq) >= start)
        if stop is not None:
            query = query.where(col(LedgerOpening.seq) < stop)
        return {row.seq: self.open_row(row) for row in session.exec(query)}

    # --- destroying ---------------------------------------------------------------------------

    @staticmethod
    def destroy_package(session: Session, package_id: str) -> int:
        """Delete the openings of every entry about ``package_id``; how many."""
        return _delete(session, col(LedgerOpening.package) == package_id)

    @staticmethod
    def destroy_before(session: Session, cutoff: datetime) -> int:
        """Delete the openings of entries written before ``cutoff``; how many."""
        return _delete(session, col(LedgerOpening.created_at) < cutoff)


def _delete(session: Session, where: Any) -> int:
    result = session.execute(delete(LedgerOpening).where(where))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
