"""Database tables (SQLModel) and the enumerations they use.

Only what access decisions and listings need is stored in clear: ids, countries, agencies,
roles, classification, handling code, times and sizes. Titles, descriptions, filenames and
digests are sealed (see :mod:`vault.crypto`) under a per-package key that is itself wrapped
by the KEK. Table models never leave the service layer; callers get the dataclasses in
:mod:`vault.schemas`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# The kinds live in vault.kinds (light to import: the command line uses them); named here too.
from vault.kinds import Classification, Handling, ReleaseKind, ReleaseStatus, Role

__all__ = [
    "LEDGER_OPENING_COLUMNS",
    "Acknowledgement",
    "Agency",
    "Classification",
    "Country",
    "CrossingPoint",
    "Handling",
    "LedgerCheckpoint",
    "LedgerEntry",
    "LedgerNode",
    "LoginThrottle",
    "OfficerKey",
    "Package",
    "PackageFile",
    "PackageRecords",
    "PolicyRule",
    "Release",
    "ReleaseKind",
    "ReleaseStatus",
    "Role",
    "UTCDateTime",
    "User",
    "UserSession",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as UTC and always returns them aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


def _blob(*, nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(LargeBinary, nullable=nullable))


class Country(SQLModel, table=True):
    """A country by ISO 3166-1 alpha-2 code."""

    code: str = Field(primary_key=True, max_length=2)
    name: str = Field(max_length=200)


class Agency(SQLModel, table=True):
    """A law-enforcement agency of one country."""

    code: str = Field(primary_key=True, max_length=64)
    country_code: str = Field(foreign_key="country.code", index=True, max_length=2)
    name: str = Field(max_length=200)


class User(SQLModel, table=True):
    """A person with a role in one agency."""

    id: str = Field(primary_key=True, max_length=32)
    username: str = Field(unique=True, index=True, max_length=64)
    agency_code: str = Field(foreign_key="agency.code", index=True, max_length=64)
    role: Role
    clearance: Classification = Classification.UNCLASSIFIED
    password_hash: str = Field(max_length=256)
    disabled: bool = False
    created_at: datetime = _time()


class Package(SQLModel, table=True):
    """One unit of shared intelligence. Its title, description and digest are sealed."""

    id: str = Field(primary_key=True, max_length=32)
    agency_code: str = Field(foreign_key="agency.code", index=True, max_length=64)
    creator_id: str = Field(foreign_key="user.id", max_length=32)
    created_at: datetime = _time(index=True)
    size: int
    file_count: int
    classification: Classification = Field(index=True)
    handling: Handling
    kek_id: str = Field(max_length=64)
    wrapped_key: bytes = _blob()
    sealed_meta: bytes = _blob()
    # Set when the package was purged: its keys are destroyed and its objects deleted; the row
    # stays so the ledger's references keep meaning something.
    purged_at: datetime | None = _time(nullable=True)


class PackageFile(SQLModel, table=True):
    """One file of a package; its object key is its id; its name and digest are sealed."""

    __table_args__ = (UniqueConstraint("package_id", "position"),)

    id: str = Field(primary_key=True, max_length=32)
    package_id: str = Field(foreign_key="package.id", index=True, max_length=32)
    position: int
    size: int
    kek_id: str = Field(max_length=64)
    wrapped_key: bytes = _blob()
    sealed_meta: bytes = _blob()


class Release(SQLModel, table=True):
    """Permission for a country, or one agency of it, to read a package, optionally timed."""

    __table_args__ = (
        Index("ix_release_country_active", "country_code", "status", "package_id"),
        Index("ix_release_agency_active", "agency_code", "status", "package_id"),
    )

    id: str = Field(primary_key=True, max_length=32)
    package_id: str = Field(foreign_key="package.id", index=True, max_length=32)
    country_code: str = Field(foreign_key="country.code", max_length=2)
    agency_code: str | None = Field(default=None, foreign_key="agency.code", max_length=64)
    status: ReleaseStatus
    kind: ReleaseKind = ReleaseKind.DIRECT
    not_before: datetime | None = _time(nullable=True)
    expires_at: datetime | None = _time(nullable=True)
    requested_by: str = Field(foreign_key="user.id", max_length=32)
    created_at: datetime = _time()
    decided_by: str | None = Field(default=None, foreign_key="user.id", max_length=32)
    decided_at: datetime | None = _time(nullable=True)
    revoked_by: str | None = Field(default=None, foreign_key="user.id", max_length=32)
    revoked_at: datetime | None = _time(nullable=True)
    # A recipient's onward release: the release that let its maker read the package. Revoking
    # that one revokes this one too, so a recipient can't keep, or pass on, access that the
    # originator withdrew.
    derived_from: str | None = Field(
        default=None, foreign_key="release.id", index=True, max_length=32
    )


class Acknowledgement(SQLModel, table=True):
    """A recipient's acknowledgement of an H3 package's restrictions (before first download)."""

    package_id: str = Field(foreign_key="package.id", primary_key=True, max_length=32)
    user_id: str = Field(foreign_key="user.id", primary_key=True, max_length=32)
    created_at: datetime = _time()


class LoginThrottle(SQLModel, table=True):
    """Failed logins per username and per client address, for lockout with back-off."""

    key: str = Field(primary_key=True, max_length=128)
    failures: int = 0
    locked_until: datetime | None = _time(nullable=True)
    last_failure: datetime | None = _time(nullable=True)


class UserSession(SQLModel, table=True):
    """A login session: what its access tokens (``sid`` claim) and refresh token live by.

    Only a SHA-256 of the current refresh token is kept; the token is 32 random bytes, so the
    hash can't be reversed or guessed. A session is alive while ``revoked_at`` is unset and
    neither ``idle_expires_at`` nor ``expires_at`` has passed.
    """

    id: str = Field(primary_key=True, max_length=32)
    user_id: str = Field(foreign_key="user.id", index=True, max_length=32)
    created_at: datetime = _time()
    refreshed_at: datetime = _time()
    # The last refresh plus the idle timeout: a session nobody refreshes dies here.
    idle_expires_at: datetime = _time()
    # Creation plus the absolute lifetime: no refresh extends it.
    expires_at: datetime = _time()
    refresh_hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    revoked_at: datetime | None = _time(nullable=True)
    revoked_reason: str | None = Field(default=None, max_length=32)


class WebSession(SQLModel, table=True):
    """A browser's session with the web interface (api/web), shared by every server worker
    and kept across restarts (see vault/websessions.py).

    Keyed by the SHA-256 of the cookie value. What the session holds (CSRF token, the service
    session's tokens, language, zone) is sealed under a key derived from the cookie, which only
    the browser has: this table alone opens nothing. Times are seconds since the epoch.
    """

    key: bytes = Field(sa_column=Column(LargeBinary(32), primary_key=True))
    sealed: bytes = Field(sa_column=Column(LargeBinary(), nullable=False))
    signed_in: bool = False
    # Bumped on every change of ``sealed``: a worker renewing the tokens claims the row by it,
    # so two workers never spend the same refresh token (which would end the session).
    version: int = 0
    created: float
    last_seen: float = Field(index=True)


class OfficerKey(SQLModel, table=True):
    """An officer's Ed25519 signing key, registered for signed packages (issue 13).

    Public keys are not secret: each registration and revocation is also a ledger entry
    (actions ``key.register`` and ``key.revoke``), so a key the vault slips in shows up to
    whoever audits the ledger. At most one active (unrevoked) key per user, by a partial
    unique index, so two registrations racing can't both win.
    """

    __table_args__ = (
        Index(
            "ix_officerkey_one_active",
            "user_id",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: str = Field(primary_key=True, max_length=32)  # vault.manifest.key_id of the key
    user_id: str = Field(foreign_key="user.id", index=True, max_length=32)
    public_key: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    created_at: datetime = _time()
    registered_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    revoked_at: datetime | None = _time(nullable=True)
    revoked_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class PolicyRule(SQLModel, table=True):
    """A Casbin rule added by an admin, on top of policies/policy.csv."""

    id: str = Field(primary_key=True, max_length=32)
    rule: str = Field(unique=True, max_length=400)
    created_by: str = Field(max_length=64)
    created_at: datetime = _time()


# Ledger positions outgrow 32 bits on a busy log; SQLite's INTEGER is already 64-bit and must
# stay spelled INTEGER so ``seq`` remains the rowid.
_POSITION = BigInteger().with_variant(Integer(), "sqlite")


def _position(primary_key: bool = True) -> Any:
    return Field(sa_column=Column(_POSITION, primary_key=primary_key, nullable=False))


class LedgerEntry(SQLModel, table=True):
    """One ledger record: exactly the canonical bytes that are hashed (see vault.ledger).

    ``seq``, ``prev_hash`` and ``entry`` never change (the database's append-only guard). The
    ``opening_*`` columns hold the sealed opening (salts and values) of a committed (v2) entry:
    in the entry's own row because a second table cost every append another statement and
    another page written and synced (issue 18's benchmark); they are the only columns the
    guard lets change, so that purge and retention can destroy an opening (set to NULL) and
    ``rotate-kek`` re-wrap its key, while the entry, and every proof over it, stays.
    ``opening_package`` and ``opening_countries`` (" UZ KZ ") say whom it concerns, for purge
    and for scoping reads; the values themselves are only in ``opening_sealed``, under a
    per-entry key wrapped by the KEK. NULL throughout for v1 entries, public entries and
    destroyed openings.
    """

    seq: int = _position()
    # Unique so two writers that read the same head cannot both commit: the chain can't fork.
    prev_hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False, unique=True))
    entry: bytes = _blob()
    # Not indexed: each index costs every append another page written and synced, and only
    # purge and retention look rows up by package or time (a scan, on a rare command).
    opening_package: str | None = Field(default=None, max_length=32, nullable=True)
    opening_countries: str | None = Field(default=None, max_length=64, nullable=True)
    opening_at: datetime | None = _time(nullable=True)
    opening_kek_id: str | None = Field(default=None, max_length=64, nullable=True)
    opening_key: bytes | None = _blob(nullable=True)
    opening_sealed: bytes | None = _blob(nullable=True)


# The columns of LedgerEntry that the append-only guard lets change (see LedgerEntry).
LEDGER_OPENING_COLUMNS = (
    "opening_package",
    "opening_countries",
    "opening_at",
    "opening_kek_id",
    "opening_key",
    "opening_sealed",
)


class LedgerNode(SQLModel, table=True):
    """A complete node of the ledger's Merkle tree (level 0 = leaf hashes); written once."""

    # Clustered on (level, idx) in SQLite (no rowid): proofs and verification read by key.
    __table_args__ = {"sqlite_with_rowid": False}

    level: int = Field(primary_key=True)
    idx: int = _position()
    hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))


class LedgerCheckpoint(SQLModel, table=True):
    """A signed checkpoint (C2SP signed note) of the ledger at ``size`` entries."""

    size: int = _position()
    note: str
    created_at: datetime = _time()


class WitnessedCheckpointRecord(SQLModel, table=True):
    """The newest checkpoint whose cosignatures met the witness policy's quorum (one row).

    ``note`` is the log-signed checkpoint with the witnesses' cosignature lines under it, as
    counterparts verify it with their own copy of the policy. Replaced only by a checkpoint at
    least as large, so two publishers can't move it backwards.
    """

    __tablename__ = "witnessedcheckpoint"

    id: int = Field(default=1, primary_key=True)
    size: int = _position(primary_key=False)
    note: str
    published_at: datetime = _time()


class WitnessLagRecord(SQLModel, table=True):
    """What the vault's publisher last heard from one witness of the policy (its lag)."""

    __tablename__ = "witnesslag"

    name: str = Field(primary_key=True, max_length=255)
    size: int = _position(primary_key=False)
    cosigned_at: datetime | None = _time(nullable=True)
    error: str | None = Field(default=None, max_length=300)
    checked_at: datetime = _time()


class CrossingPoint(SQLModel, table=True):
    """A border-crossing point registered by an admin, and the date its BLO opened (issue 16).

    Reference data, public like countries: the seizure records that name it are sealed."""

    __tablename__ = "crossingpoint"

    code: str = Field(primary_key=True, max_length=32)
    country_code: str = Field(foreign_key="country.code", index=True, max_length=2)
    name: str = Field(max_length=200)
    blo_opened: date


class PackageRecords(SQLModel, table=True):
    """A package's seizure records: one sealed blob under the package key (nothing in clear
    but the package id, so not even how many records a package holds). ``version`` keys the
    statistics cache; it changes if the blob ever does."""

    __tablename__ = "packagerecords"

    package_id: str = Field(primary_key=True, foreign_key="package.id", max_length=32)
    version: int = 1
    sealed: bytes = _blob()
