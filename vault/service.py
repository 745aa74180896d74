"""The one entry point the API and the CLI both call.

Each operation authorises through :class:`~vault.authz.Authorizer`, acts, and appends to the
ledger in the same database transaction as the action. Refusals are appended in a transaction
of their own and then raised. Items a caller may not know exist are refused with NotFound,
exactly like items that don't exist.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import getpass
import hashlib
import inspect
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol, TextIO, TypeVar, cast

from sqlalchemy import Connection, Engine, String, and_, bindparam, exists, false, func, or_, text
from sqlalchemy import delete as sa_delete
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from vault import crypto
from vault.authz import (
    ACTIONS,
    NONE,
    ORIGINATOR,
    RELEASED_AGENCY,
    RELEASED_COUNTRY,
    SAME_COUNTRY,
    SEPARATION_OF_DUTIES,
    Authorizer,
    Facts,
    parse_rule,
    rule_line,
)
from vault.config import Settings
from vault.db import (
    check_schema,
    is_postgres,
    make_engine,
    migrate,
    read_scope,
    require_existing,
    schema_revision,
    session_scope,
)
from vault.errors import (
    AccessDenied,
    AuthenticationFailed,
    Conflict,
    IntegrityError,
    InvalidInput,
    LedgerCorrupt,
    NotFound,
    RateLimited,
    StorageUnavailable,
    TooLarge,
    VaultError,
    VaultMissing,
)
from vault.keys import KeyMaterial, load_keys
from vault.ledger import check as ledger_check
from vault.ledger import log as ledger
from vault.ledger import merkle, note
from vault.ledger.entry import Entry, decode
from vault.ledger.log import Actor
from vault.models import (
    Acknowledgement,
    Agency,
    Classification,
    Country,
    Handling,
    LedgerEntry,
    LoginThrottle,
    Package,
    PackageFile,
    PolicyRule,
    Release,
    ReleaseKind,
    ReleaseStatus,
    Role,
    User,
    UserSession,
    UTCDateTime,
    utcnow,
)
from vault.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, Passwords
from vault.schemas import (
    USERNAME,
    AuditView,
    CheckpointInfo,
    ConsistencyProof,
    Explanation,
    FileInfo,
    InclusionProof,
    LedgerEntries,
    LedgerReport,
    LoginResult,
    NewPackage,
    PackageDetail,
    PackageList,
    PackageSummary,
    ReleaseInfo,
    ReleaseResult,
    UploadResult,
    UserInfo,
    WitnessedCheckpointInfo,
    WitnessStatus,
    check_agency,
    check_country,
    check_filename,
    check_id,
    check_text,
    check_username,
    filename_key,
)
from vault.storage import ObjectStore, open_store
from vault.tokens import (
    TokenService,
    new_refresh_token,
    refresh_session_id,
    refresh_token_hash,
    session_reference,
)
from vault.witness import published
from vault.witness.running import PublishingThread

log = logging.getLogger("vault.service")

ALLOW, DENY, ERROR = "allow", "deny", "error"
MAX_PAGE = 200
MAX_LEDGER_PAGE = 1000
# Rules added by admins in one process are enforced by every other within this many seconds.
POLICY_REFRESH_SECONDS = 0.5


_PENDING = "_vault_pending_refusal"


@dataclass(frozen=True)
class _Refusal:
    """A refusal to record once the transaction it happened in has rolled back."""

    actor: Actor
    action: str
    reason: str
    target: dict[str, str]


# Statements built once: SQLAlchemy then reuses their compiled form, and a request pays only
# for running them. "now" and the caller's ids are bound per request.
_NOW = bindparam("now", type_=UTCDateTime())


def _in_force() -> Any:
    """SQL: this release grants access at ``:now`` (active and inside its window)."""
    return and_(
        col(Release.status) == ReleaseStatus.ACTIVE,
        or_(col(Release.not_before).is_(None), col(Release.not_before) <= _NOW),
        or_(col(Release.expires_at).is_(None), col(Release.expires_at) > _NOW),
    )


def _released_to_agency(agency: Any) -> Any:
    return exists().where(
        col(Release.package_id) == col(Package.id), col(Release.agency_code) == agency, _in_force()
    )


def _released_to_country(country: Any) -> Any:
    return exists().where(
        col(Release.package_id) == col(Package.id),
        col(Release.country_code) == country,
        col(Release.agency_code).is_(None),
        _in_force(),
    )


# One query for everything a decision about one package needs: the package, its
# originator's country, and whether a release to the caller's agency or country is in force
# and the caller acknowledged it (H3).
_PACKAGE_FACTS = (
    sa_select(
        Package,
        col(Agency.country_code),
        _released_to_agency(bindparam("agency")).label("to_agency"),
        _released_to_country(bindparam("country")).label("to_country"),
        exists()
        .where(
            col(Acknowledgement.package_id) == col(Package.id),
            col(Acknowledgement.user_id) == bindparam("uid"),
        )
        .label("acknowledged"),
    )
    .join(Agency, col(Agency.code) == col(Package.agency_code))
    .where(col(Package.id) == bindparam("pid"))
)


def package_facts(
    session: Session, principal: Principal, package_id: str, action: str
) -> tuple[Package, Facts] | None:
    """The package and the facts a decision about ``principal`` doing ``action`` to it rests
    on, from one query; None if there is no such package. The only place facts are derived:
    enforcement and ``explain`` both use it, so they can't disagree."""
    row = session.execute(
        _PACKAGE_FACTS,
        {
            "pid": package_id,
            "now": utcnow(),
            "agency": principal.agency,
            "country": principal.country,
            "uid": principal.user_id,
        },
    ).first()
    if row is None:
        return None
    package, origin_country, to_agency, to_country, acknowledged = row
    relations = {NONE}
    if package.agency_code == principal.agency:
        relations.add(ORIGINATOR)
    elif origin_country == principal.country:
        relations.add(SAME_COUNTRY)
    if to_agency:
        relations.add(RELEASED_AGENCY)
    if to_country:
        relations.add(RELEASED_COUNTRY)
    facts = Facts(
        role=principal.role.value,
        relations=frozenset(relations),
        cleared=principal.clearance.rank >= package.classification.rank,
        handling=package.handling.value,
        acknowledged=bool(acknowledged) and package.handling == Handling.H3,
        action=action,
    )
    return package, facts


class _Sealed(Protocol):
    """What opening a package's sealed metadata takes: a Package, or a row of its columns."""

    @property
    def id(self) -> str: ...
    @property
    def kek_id(self) -> str: ...
    @property
    def wrapped_key(self) -> bytes: ...
    @property
    def sealed_meta(self) -> bytes: ...


class _SummaryRow(_Sealed, Protocol):
    """What a package summary shows, beside the sealed title."""

    @property
    def classification(self) -> Classification: ...
    @property
    def handling(self) -> Handling: ...
    @property
    def agency_code(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def size(self) -> int: ...
    @property
    def file_count(self) -> int: ...


# The columns a listing reads: a summary's, and the originator's country.
_SUMMARY_COLUMNS = (
    col(Package.id),
    col(Package.kek_id),
    col(Package.wrapped_key),
    col(Package.sealed_meta),
    col(Package.classification),
    col(Package.handling),
    col(Package.agency_code),
    col(Package.created_at),
    col(Package.size),
    col(Package.file_count),
    col(Agency.country_code),
)


class _FileRow(Protocol):
    """What a file's details take: a PackageFile, or a row of its columns."""

    @property
    def id(self) -> str: ...
    @property
    def package_id(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sealed_meta(self) -> bytes: ...


# A package's files, in order, as the columns its details show (no ORM entities: reads are
# the hot path).
_PACKAGE_FILES = (
    sa_select(
        col(PackageFile.id),
        col(PackageFile.package_id),
        col(PackageFile.size),
        col(PackageFile.sealed_meta),
    )
    .where(col(PackageFile.package_id) == bindparam("pid"))
    .order_by(col(PackageFile.position))
)

# A package's releases, oldest first (shown to its originator).
_PACKAGE_RELEASES = (
    sa_select(Release)
    .where(col(Release.package_id) == bindparam("pid"))
    .order_by(col(Release.created_at))
)

_USERNAME = sa_select(col(User.username)).where(col(User.id) == bindparam("uid"))

# Who a token's subject is, now, and whether the token's session is still alive: read on every
# request in one round trip, so disabling a user, changing their role or clearance, or ending
# their session takes effect at once. The session columns are NULL when the token's session
# does not exist or belongs to someone else.
_PRINCIPAL = (
    sa_select(
        col(User.id),
        col(User.username),
        col(User.agency_code),
        col(User.role),
        col(User.clearance),
        col(User.disabled),
        col(Agency.country_code),
        col(UserSession.revoked_at),
        col(UserSession.idle_expires_at),
        col(UserSession.expires_at),
    )
    .join(Agency, col(Agency.code) == col(User.agency_code))
    .outerjoin(
        UserSession,
        and_(
            col(UserSession.id) == bindparam("sid"),
            col(UserSession.user_id) == col(User.id),
        ),
    )
    .where(col(User.id) == bindparam("uid"))
)


class _UserRow(Protocol):
    """What a principal is made of: a User, or a row of its columns."""

    @property
    def id(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def agency_code(self) -> str: ...
    @property
    def role(self) -> Role: ...
    @property
    def clearance(self) -> Classification: ...


def _principal_of(user: _UserRow, country: str, session_id: str = "") -> Principal:
    return Principal(
        user_id=user.id,
        username=user.username,
        agency=user.agency_code,
        country=country,
        role=user.role,
        clearance=user.clearance,
        session_id=session_id,
    )


def _session_problem(
    revoked_at: datetime | None,
    idle_expires_at: datetime | None,
    expires_at: datetime | None,
    now: datetime,
) -> str | None:
    """Why a session is dead (a ledger reason), or None while it is alive."""
    if expires_at is None or idle_expires_at is None:
        return "session_unknown"
    if revoked_at is not None:
        return "session_revoked"
    if now >= expires_at:
        return "session_expired"
    if now >= idle_expires_at:
        return "session_idle"
    return None


def listing_params(principal: Principal, *, limit: int, offset: int) -> dict[str, Any]:
    """Bind parameters of ``principal``'s listing statement."""
    return {
        "now": utcnow(),
        "agency": principal.agency,
        "country": principal.country,
        "limit": limit,
        "offset": offset,
    }


def _unavailable(exc: OperationalError) -> StorageUnavailable:
    """The error for a database that failed us; the driver's first line goes to the log only."""
    log.warning("database unavailable: %s", (str(exc.orig) or "?").splitlines()[0][:200])
    return StorageUnavailable("the database is unavailable; nothing was changed")


def new_id() -> str:
    """A fresh opaque id: 128 random bits as 32 lowercase hex characters."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    user_id: str
    username: str
    agency: str
    country: str
    role: Role
    clearance: Classification
    # The session the caller's access token belongs to (empty for the local operator).
    session_id: str = ""

    @property
    def actor(self) -> Actor:
        """The ledger's view of this caller."""
        return Actor(user=self.username, agency=self.agency, country=self.country)


def local_operator() -> Principal:
    """The operator running admin commands on the server itself (bootstrap, no login)."""
    return Principal(
        user_id="",
        username=f"local:{getpass.getuser()}",
        agency="",
        country="",
        role=Role.ADMIN,
        clearance=Classification.UNCLASSIFIED,
    )


@dataclass
class IncomingFile:
    """One file of an upload: its name and a stream of its plaintext."""

    name: str
    reader: crypto.Readable


@dataclass
class Download:
    """An authorised download: metadata now, plaintext as it is read and checked."""

    file: FileInfo
    package_id: str
    handling: str
    receipt: int
    chunks: Generator[bytes, None, None] = field(repr=False)


def _file_identity(package_id: str, file_id: str) -> bytes:
    return f"blo-vault/file/v1\x00{package_id}\x00{file_id}".encode()


def _package_identity(package_id: str) -> bytes:
    return f"blo-vault/package/v1\x00{package_id}".encode()


# What an authenticated caller did wrong or may not do: each is a refusal and goes in the
# ledger. Failures of ours (IntegrityError, StorageUnavailable, ...) are not refusals; the
# operations that meet them record them as errors where they happen.
_REFUSALS = (InvalidInput, NotFound, Conflict, AccessDenied)
# Arguments of an operation that name what it was about, and the ledger field for each.
_TARGET_ARGUMENTS = (("package_id", "package"), ("release_id", "release"), ("file_id", "file"))
_Operation = TypeVar("_Operation", bound=Callable[..., Any])
_T = TypeVar("_T")


def _is_id(value: object) -> bool:
    try:
        check_id(value)  # type: ignore[arg-type]
    except InvalidInput:
        return False
    return True


def _records_refusals(action: str) -> Callable[[_Operation], _Operation]:
    """Make a :class:`Vault` operation (principal first) record each refusal it raises that
    nothing recorded yet: a ``deny`` entry for ``action``, the error's code as reason, and its
    receipt on the error. One place, so no 409 or 422 of an operation can go unrecorded, and
    refusals recorded with a finer reason where they were raised are not recorded twice.

    Only ids that are well-formed go into the entry: whatever else a caller typed there (a
    password, a title) must not land in an append-only log.
    """

    def decorate(operation: _Operation) -> _Operation:
        signature = inspect.signature(operation)

        @functools.wraps(operation)
        def run(self: Vault, principal: Principal, /, *args: Any, **kwargs: Any) -> Any:
            try:
                return operation(self, principal, *args, **kwargs)
            except _REFUSALS as exc:
                if exc.receipt is None and getattr(exc, _PENDING, None) is None:
                    arguments = signature.bind_partial(self, principal, *args, **kwargs).arguments
                    target = {
                        field: arguments[name]
                        for name, field in _TARGET_ARGUMENTS
                        if _is_id(arguments.get(name))
                    }
                    self._refuse(exc, principal.actor, action, exc.code, **target)
                raise

        return cast(_Operation, run)

    return decorate


class Vault:
    """The vault's service layer: every operation decides, acts and records."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        store: ObjectStore,
        keys: KeyMaterial,
        authz: Authorizer,
        passwords: Passwords,
        tokens: TokenService,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store
        self.keys = keys
        self._authz = authz
        self._authz_checked = time.monotonic()
        self.passwords = passwords
        self.tokens = tokens
        self._local = threading.local()
        self._agency_country: dict[str, str] = {}
        # Listing statements by (role, clearance, policy hash): built once, then only bound.
        self._listings: dict[tuple[str, str, str], Any] = {}
        self._appender = ledger.GroupAppender(engine)
        self._counts_lock = threading.Lock()
        self._decisions: dict[str, int] = {}

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        store: ObjectStore | None = None,
        create: bool = True,
        repair: bool = True,
        require_guard: bool = True,
    ) -> Vault:
        """Build the service from settings: database, store, keys, policy.

        ``create`` lets it make what is missing (data folder, SQLite file, development keys,
        schema): only ``admin init`` and embedded uses ask for that. Without it a missing
        vault is VaultMissing naming where it looked, and nothing is written there.

        ``repair`` (development only) upgrades the schema and restores the ledger's
        append-only guard on open; without it the database is only checked, as production
        always does, so a command that inspects the vault never changes it. A ledger whose
        guard is gone stops the start, unless ``require_guard`` is False (``ledger verify``:
        then it is only logged).
        """
        url = settings.resolved_database_url
        if create:
            settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        else:
            require_existing(url)
        engine = make_engine(url)
        try:
            # The database first: in the wrong place, that is what the message should name.
            if not create and schema_revision(engine) is None:
                raise VaultMissing(
                    f"no vault schema in {engine.url.render_as_string(hide_password=True)}: "
                    "run 'blovault admin init' (or 'blovault admin migrate' as its owner)"
                )
            keys = load_keys(settings, create=create)
            if settings.env == "production" or not repair:
                # Production never changes its schema on start: the service's database role
                # may not even be allowed to; `blovault admin migrate` runs as the owner.
                check_schema(engine, require_guard=require_guard)
            else:
                migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        with session_scope(engine, readonly=True) as session:
            rules = _load_rules(session)
        return cls(
            settings=settings,
            engine=engine,
            store=store if store is not None else open_store(settings),
            keys=keys,
            authz=Authorizer(policy_dir=settings.resolved_policy_dir, extra_rules=rules),
            passwords=Passwords(
                time_cost=settings.argon2_time_cost,
                memory_kib=settings.argon2_memory_kib,
                parallelism=settings.argon2_parallelism,
            ),
            tokens=TokenService(
                private_pem=keys.token_private_pem,
                public_pems=[keys.token_public_pem],
                issuer=settings.token_issuer,
                audience=settings.token_audience,
                ttl_seconds=settings.token_ttl_seconds,
            ),
        )

    @property
    def authz(self) -> Authorizer:
        """The authorizer for the policy version in force (admin rules re-read twice a second)."""
        return self._authz

    def _refresh_policy(self) -> None:
        """Pick up rules another process added or removed; called outside transactions."""
        now = time.monotonic()
        if now - self._authz_checked < POLICY_REFRESH_SECONDS:
            return
        self._authz_checked = now
        with session_scope(self.engine, readonly=True) as session:
            rules = _load_rules(session)
        if rules != self._authz.stored_rules:
            self._authz = Authorizer(
                policy_dir=self.settings.resolved_policy_dir, extra_rules=rules
            )

    def close(self) -> None:
        """Finish pending ledger appends and release database connections."""
        self._appender.close()
        self.engine.dispose()

    # --- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self, *, readonly: bool = False) -> Iterator[Session]:
        """One database transaction; refusals raised inside it are recorded after rollback.

        ``readonly`` transactions must not write (on SQLite they don't queue for the lock).
        """
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            with contextlib.suppress(OperationalError):  # the transaction below reports it
                self._refresh_policy()
        self._local.depth = depth + 1
        try:
            with session_scope(self.engine, readonly=readonly) as session:
                yield session
        except OperationalError as exc:
            raise _unavailable(exc) from None
        except VaultError as exc:
            pending: _Refusal | None = getattr(exc, _PENDING, None)
            if pending is not None and depth == 0:
                delattr(exc, _PENDING)
                self._local.depth = 0
                exc.receipt = self._record(
                    pending.actor, pending.action, DENY, pending.reason, **pending.target
                )
            raise
        finally:
            self._local.depth = depth

    @contextlib.contextmanager
    def _lookup(self) -> Iterator[Connection]:
        """A read-only transaction without an ORM session, for the per-request lookups."""
        try:
            with read_scope(self.engine) as connection:
                yield connection
        except OperationalError as exc:
            raise _unavailable(exc) from None

    def _append(self, session: Session, **fields: Any) -> int:
        """Append a ledger entry in ``session``'s transaction, stamped with the policy version."""
        seq = ledger.append(session, policy=self._authz.policy_hash, **fields)
        self._count_decision(str(fields.get("decision", "")))
        return seq

    def _allowed(
        self,
        principal: Principal,
        action: str,
        package: Package,
        *,
        session: Session | None = None,
        reason: str = "ok",
        **target: str,
    ) -> int:
        """Record an allowed action on a package, stamped with its handling code: inside
        ``session``'s transaction when it changes state, else through group commit."""
        fields: dict[str, Any] = {
            "actor": principal.actor,
            "action": action,
            "decision": ALLOW,
            "reason": reason,
            "package": package.id,
            "handling": package.handling.value,
            **target,
        }
        if session is not None:
            return self._append(session, **fields)
        return self._log(**fields)

    def _count_decision(self, decision: str) -> None:
        with self._counts_lock:
            self._decisions[decision] = self._decisions.get(decision, 0) + 1

    def decision_counts(self) -> dict[str, int]:
        """Ledger entries this process wrote, by decision (for metrics)."""
        with self._counts_lock:
            return dict(self._decisions)

    def stats(self) -> dict[str, int]:
        """Ledger size, packages and plaintext bytes stored (for metrics)."""
        with self._tx(readonly=True) as session:
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

    def _log(self, **fields: Any) -> int:
        """Record an access that changes nothing (reads, refusals) through group commit.

        Returns once the entry is committed, so nothing reaches a caller unrecorded.
        """
        seq = self._appender.append(ledger.Record(policy=self._authz.policy_hash, **fields))
        self._count_decision(str(fields.get("decision", "")))
        return seq

    def _record(self, actor: Actor, action: str, decision: str, reason: str, **target: str) -> int:
        """Append one entry on its own (refusals and failures)."""
        return self._log(actor=actor, action=action, decision=decision, reason=reason, **target)

    def _refuse(
        self, exc: VaultError, actor: Actor, action: str, reason: str, **target: str
    ) -> VaultError:
        """Record a refusal (after the current transaction, if any) and return ``exc`` to raise.

        Inside a transaction the entry can't be written yet: the action's own transaction is
        about to roll back, and on SQLite a second writer would wait on it. ``_tx`` writes it
        once the rollback is done.
        """
        if getattr(self._local, "depth", 0):
            # Travels with the exception itself, so it can't be lost or reach another caller.
            setattr(exc, _PENDING, _Refusal(actor, action, reason, target))
        else:
            exc.receipt = self._record(actor, action, DENY, reason, **target)
        return exc

    def record_refused_request(
        self, principal: Principal, *, route: str, reason: str, package_id: str | None = None
    ) -> int:
        """Record a request of an authenticated caller that the API refused before any
        operation ran (a malformed body, query or path): every refusal is in the ledger.

        ``route`` is the server's own route template; a package id goes in only when it is
        well-formed, since whatever else was typed there must not enter an append-only log.
        """
        target = {"package": package_id} if package_id is not None and _is_id(package_id) else {}
        return self._record(principal.actor, "request", DENY, reason, subject=route, **target)

    def _require_global(self, principal: Principal, action: str, **target: str) -> None:
        """Authorise an action that concerns no package (upload, list, manage, ledger)."""
        facts = Facts(
            role=principal.role.value,
            relations=frozenset({NONE}),
            cleared=True,
            handling="*",
            acknowledged=False,
            action=action,
        )
        if not self.authz.allows(facts):
            raise self._refuse(
                AccessDenied(f"your role may not {action}"),
                principal.actor,
                action,
                "role_not_permitted",
                **target,
            )

    def _grants_in_force(
        self, session: Session, principal: Principal, package_id: str
    ) -> list[tuple[str, str | None]]:
        """Releases of the package in force for the caller: ``(release id, agency or None)``."""
        rows = session.exec(
            select(Release.id, Release.agency_code).where(
                col(Release.package_id) == package_id,
                _in_force(),
                or_(
                    col(Release.agency_code) == principal.agency,
                    and_(
                        col(Release.country_code) == principal.country,
                        col(Release.agency_code).is_(None),
                    ),
                ),
            ),
            params={"now": utcnow()},
        ).all()
        return [(rid, agency) for rid, agency in rows]

    def _load_package_for(
        self,
        session: Session,
        principal: Principal,
        package_id: str,
        action: str,
        *,
        record_as: str | None = None,
    ) -> tuple[Package, Facts]:
        """The package if ``action`` is allowed; otherwise a refusal, recorded under
        ``record_as`` (default: ``action``).

        A caller who may not even read (or, for auditors, audit) the package gets NotFound, as
        for a missing one; a caller who may see it but not do ``action`` gets AccessDenied
        saying why.
        """
        check_id(package_id, "package id")
        recorded = record_as or action
        found = package_facts(session, principal, package_id, action)
        if found is None or found[0].purged_at is not None:
            raise self._refuse(
                NotFound("package not found"),
                principal.actor,
                recorded,
                "not_found",
                package=package_id,
            )
        package, facts = found
        if self.authz.allows(facts):
            return package, facts
        authz = self.authz
        may_see = any(authz.allows(replace(facts, action=seen)) for seen in ("read", "audit"))
        reason = "policy_denied"
        exc: VaultError
        if not may_see:
            exc = NotFound("package not found")
        elif (
            facts.handling == "H3"
            and not facts.acknowledged
            and authz.allows(replace(facts, acknowledged=True))
        ):
            reason = "h3_not_acknowledged"
            exc = AccessDenied(
                "H3: acknowledge this package's handling restrictions before downloading "
                "(blovault package acknowledge ID)"
            )
        elif action == "release" and facts.handling == "H2" and ORIGINATOR not in facts.relations:
            reason = "h2_onward_release"
            exc = AccessDenied(
                "H2: no onward release without the originator's consent; ask the originating "
                "agency instead (blovault package request-release)"
            )
        elif not facts.cleared:
            reason = "clearance_below_classification"
            exc = AccessDenied("your clearance is below this package's classification")
        else:
            exc = AccessDenied(f"you may not {action} this package")
        raise self._refuse(
            exc,
            principal.actor,
            recorded,
            reason,
            package=package_id,
            handling=package.handling.value,
        )

    # --- identity ---------------------------------------------------------------------------

    def login(self, username: str, password: str, *, client: str = "") -> LoginResult:
        """Check a password and start a session: an access token and a refresh token.

        Wrong password and unknown user look alike, in answer and in time (a dummy hash is
        checked), and both count towards lockout of the username and of the client address:
        after ``login_failures_per_*`` failures each further attempt is refused unchecked for
        a back-off that doubles with each failure. Every refusal is in the ledger.
        """
        name = username[:64] if isinstance(username, str) else ""
        # Throttle keys hash the name: any string works (PostgreSQL text refuses NUL), and
        # the table holds no usernames.
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        keys = [f"user:{digest}"] + ([f"addr:{client[:64]}"] if client else [])
        now = utcnow()
        with self._tx() as session:
            # The attempt counts as a failure before the password is checked (a success
            # resets it), under a lock: concurrent guesses can't all slip in before the
            # first failure is on record.
            _lock_throttle(session)
            locks = [
                row.locked_until
                for key in keys
                if (row := session.get(LoginThrottle, key)) is not None
                and row.locked_until is not None
                and row.locked_until > now
            ]
            if not locks:
                self._count_failure(session, keys, now)
            user = (
                session.exec(select(User).where(User.username == name)).first()
                if USERNAME.fullmatch(name)
                else None
            )
        # A name no account has may be a password typed into the wrong field: the ledger,
        # which keeps everything forever, gets only a keyed hash of it. The same name always
        # gives the same hash, so repeated attempts still correlate.
        actor = Actor(user=name if user is not None else self._pseudonym(name))
        if locks:
            wait = max(1, int((max(locks) - now).total_seconds() + 0.999))
            raise self._refuse(
                RateLimited(f"too many failed logins; try again in {wait} s", retry_after=wait),
                actor,
                "login",
                "rate_limited",
            )
        ok = self.passwords.verify(user.password_hash if user else None, password)
        if user is None or not ok or user.disabled:
            receipt = self._log(
                actor=actor, action="login", decision=DENY, reason="bad_credentials"
            )
            raise AuthenticationFailed("unknown user or wrong password", receipt=receipt)
        with self._tx() as session:
            principal = self._principal(session, user)
            started, refresh_token = self._start_session(session, user.id, utcnow())
            receipt = self._append(
                session,
                actor=principal.actor,
                action="login",
                decision=ALLOW,
                reason="ok",
                subject=session_reference(started.id),
            )
            for key in keys:
                row = session.get(LoginThrottle, key)
                if row is not None:
                    session.delete(row)
        return self._session_tokens(started, refresh_token, receipt)

    def _pseudonym(self, name: str) -> str:
        """How the ledger names a username that no account has."""
        raw = name.encode("utf-8", "surrogatepass")
        return "unknown:" + crypto.keyed_digest(self.keys.pseudonym_key, raw)[:32]

    def _count_failure(self, session: Session, keys: list[str], now: datetime) -> None:
        """One more failure for each key; lock it once it reaches its threshold (runs under
        the throttle lock, so concurrent attempts can't race on the same row)."""
        settings = self.settings
        for key in keys:
            threshold = (
                settings.login_failures_per_user
                if key.startswith("user:")
                else settings.login_failures_per_address
            )
            row = session.get(LoginThrottle, key) or LoginThrottle(key=key, failures=0)
            row.failures += 1
            row.last_failure = now
            if row.failures >= threshold:
                seconds = min(
                    settings.lockout_max_seconds,
                    settings.lockout_base_seconds * 2 ** min(row.failures - threshold, 20),
                )
                row.locked_until = now + timedelta(seconds=seconds)
            session.add(row)

    def _country_of(self, session: Session, agency: str) -> str:
        """An agency's country. Cached: agencies never change country (nothing can change it)."""
        country = self._agency_country.get(agency)
        if country is None:
            found = session.exec(select(Agency.country_code).where(Agency.code == agency)).first()
            if found is None:  # foreign keys make this impossible short of tampering
                raise NotFound("unknown agency")
            country = self._agency_country[agency] = found
        return country

    def _principal(self, session: Session, user: User) -> Principal:
        return _principal_of(user, self._country_of(session, user.agency_code))

    def authenticate(self, token: str, *, now: datetime | None = None) -> Principal:
        """The caller a token speaks for; AuthenticationFailed if the token is invalid, its
        user gone or disabled, or its session ended (logout, revocation, idle or absolute
        timeout). ``now`` is for tests; the token's own times are checked against the clock."""
        try:
            claims = self.tokens.verify(token)
        except AuthenticationFailed as exc:
            raise self._refuse(exc, Actor(user=""), "authenticate", "bad_token") from None
        with self._lookup() as connection:
            user = connection.execute(
                _PRINCIPAL, {"uid": claims.subject, "sid": claims.session_id}
            ).first()
        if user is None or user.disabled:
            raise self._refuse(
                AuthenticationFailed("invalid or expired token"),
                Actor(user=user.username if user else ""),
                "authenticate",
                "user_disabled" if user else "user_unknown",
            )
        problem = _session_problem(
            user.revoked_at, user.idle_expires_at, user.expires_at, now or utcnow()
        )
        if problem is not None:
            raise self._refuse(
                AuthenticationFailed("invalid or expired token"),
                Actor(user=user.username, agency=user.agency_code, country=user.country_code),
                "authenticate",
                problem,
                subject=session_reference(claims.session_id),
            )
        return _principal_of(cast(_UserRow, user), user.country_code, claims.session_id)

    # --- sessions -----------------------------------------------------------------------------

    def _start_session(
        self, session: Session, user_id: str, now: datetime
    ) -> tuple[UserSession, str]:
        """A new session of ``user_id`` and its first refresh token (only its hash is stored).

        The user's sessions past their absolute lifetime go at the same time: nothing of them
        can be used any more, and the ledger keeps their story.
        """
        session.execute(
            sa_delete(UserSession).where(
                col(UserSession.user_id) == user_id, col(UserSession.expires_at) < now
            )
        )
        expires = now + timedelta(seconds=self.settings.session_max_seconds)
        started = UserSession(
            id=new_id(),
            user_id=user_id,
            created_at=now,
            refreshed_at=now,
            idle_expires_at=min(
                now + timedelta(seconds=self.settings.session_idle_seconds), expires
            ),
            expires_at=expires,
            refresh_hash=b"",
        )
        refresh_token = new_refresh_token(started.id)
        started.refresh_hash = refresh_token_hash(refresh_token)
        session.add(started)
        session.flush()
        return started, refresh_token

    def _session_tokens(self, row: UserSession, refresh_token: str, receipt: int) -> LoginResult:
        """What a client gets for a session it may use: a new access token and refresh token."""
        since = row.refreshed_at
        return LoginResult(
            access_token=self.tokens.issue(row.user_id, session_id=row.id),
            expires_in=self.tokens.ttl_seconds,
            receipt=receipt,
            refresh_token=refresh_token,
            refresh_expires_in=int((row.idle_expires_at - since).total_seconds()),
            session_expires_in=int((row.expires_at - since).total_seconds()),
        )

    def _end_sessions(
        self,
        session: Session,
        actor: Actor,
        user: User,
        reason: str,
        now: datetime,
        *,
        only: str | None = None,
    ) -> int:
        """End every live session of ``user`` (or just session ``only``) in ``session``'s
        transaction, one ledger entry each (by ``actor``, for ``reason``); returns how many."""
        query = select(UserSession).where(
            col(UserSession.user_id) == user.id,
            col(UserSession.revoked_at).is_(None),
            col(UserSession.expires_at) > now,
        )
        if only is not None:
            query = query.where(col(UserSession.id) == only)
        rows = session.exec(query.with_for_update()).all()
        for row in rows:
            row.revoked_at = now
            row.revoked_reason = reason
            session.add(row)
            self._append(
                session,
                actor=actor,
                action="end-session",
                decision=ALLOW,
                reason=reason,
                subject=f"user:{user.username} {session_reference(row.id)}",
            )
        session.flush()
        return len(rows)

    def refresh(self, refresh_token: str, *, now: datetime | None = None) -> LoginResult:
        """A new access token and a new refresh token for a live session; the one presented
        is spent.

        AuthenticationFailed (recorded) if the token is malformed or unknown, or its session
        has ended, timed out (idle or absolute) or its user was disabled. Presenting a
        refresh token that was already spent is taken as theft (RFC 9700, section 4.14.2):
        one of two holders is not the officer, so the whole session ends, for both.
        ``now`` is for tests.
        """
        now = now or utcnow()
        refused = "invalid or expired refresh token; log in again"
        session_id = refresh_session_id(refresh_token)
        if session_id is None:
            raise self._refuse(
                AuthenticationFailed(refused), Actor(user=""), "refresh", "bad_refresh_token"
            )
        reference = session_reference(session_id)
        presented = refresh_token_hash(refresh_token)
        receipt: int | None = None
        problem: str | None = None
        with self._tx() as session:
            found = session.exec(
                select(UserSession, User)
                .join(User, col(User.id) == col(UserSession.user_id))
                .where(col(UserSession.id) == session_id)
                .with_for_update()
            ).first()
            if found is None:
                actor, problem = Actor(user=""), "session_unknown"
            else:
                row, user = found
                principal = self._principal(session, user)
                actor = principal.actor
                problem = "user_disabled" if user.disabled else None
                if problem is None and row.revoked_at is not None:
                    problem = "session_revoked"
                if problem is None and not crypto.constant_time_equal(row.refresh_hash, presented):
                    # Committed before the refusal is raised: the session must stay ended.
                    problem = "refresh_reused"
                    receipt = self._append(
                        session,
                        actor=actor,
                        action="refresh",
                        decision=DENY,
                        reason=problem,
                        subject=reference,
                    )
                    self._end_sessions(session, actor, user, problem, now, only=row.id)
                if problem is None:
                    problem = _session_problem(None, row.idle_expires_at, row.expires_at, now)
                if problem is None:
                    refresh_token = new_refresh_token(row.id)
                    row.refresh_hash = refresh_token_hash(refresh_token)
                    row.refreshed_at = now
                    row.idle_expires_at = min(
                        now + timedelta(seconds=self.settings.session_idle_seconds),
                        row.expires_at,
                    )
                    session.add(row)
                    receipt = self._append(
                        session,
                        actor=actor,
                        action="refresh",
                        decision=ALLOW,
                        reason="ok",
                        subject=reference,
                    )
                    assert receipt is not None
                    return self._session_tokens(row, refresh_token, receipt)
        assert problem is not None  # the one way through without a problem returned above
        if receipt is None:
            receipt = self._record(actor, "refresh", DENY, problem, subject=reference)
        raise AuthenticationFailed(refused, receipt=receipt)

    def logout(self, principal: Principal) -> int:
        """End the caller's session: its access and refresh tokens are refused from the next
        request on. Returns the ledger receipt."""
        now = utcnow()
        reference = session_reference(principal.session_id)
        with self._tx() as session:
            row = session.get(UserSession, principal.session_id, with_for_update=True)
            if row is None or row.user_id != principal.user_id or row.revoked_at is not None:
                # authenticate() has just found it alive: only a concurrent logout gets here.
                raise self._refuse(
                    AuthenticationFailed("invalid or expired token"),
                    principal.actor,
                    "logout",
                    "session_revoked",
                    subject=reference,
                )
            row.revoked_at = now
            row.revoked_reason = "logout"
            session.add(row)
            return self._append(
                session,
                actor=principal.actor,
                action="logout",
                decision=ALLOW,
                reason="ok",
                subject=reference,
            )

    def change_password(
        self, principal: Principal, current_password: str, new_password: str
    ) -> LoginResult:
        """Change the caller's own password and end every session of theirs; returns a new
        session for the caller.

        A wrong current password is refused with AccessDenied and counts towards the login
        lockout of the username, like a failed login (so a stolen session can't be used to
        guess the password); while locked out, the change is refused unchecked (RateLimited).
        Every attempt is recorded, never a password.
        """
        actor = principal.actor
        subject = f"user:{principal.username}"
        if not MIN_PASSWORD_LENGTH <= len(new_password) <= MAX_PASSWORD_LENGTH:
            raise self._refuse(
                InvalidInput(
                    f"passwords must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
                ),
                actor,
                "password",
                "invalid_password",
                subject=subject,
            )
        if crypto.constant_time_equal(
            current_password.encode("utf-8", "surrogatepass"),
            new_password.encode("utf-8", "surrogatepass"),
        ):
            raise self._refuse(
                InvalidInput("the new password must differ from the current one"),
                actor,
                "password",
                "invalid_password",
                subject=subject,
            )
        key = _user_throttle_key(principal.username)
        now = utcnow()
        with self._tx() as session:
            # As in login: counted as a failure before the check, under the lock.
            _lock_throttle(session)
            throttle = session.get(LoginThrottle, key)
            locked = (
                throttle.locked_until
                if throttle is not None
                and throttle.locked_until is not None
                and throttle.locked_until > now
                else None
            )
            if locked is None:
                self._count_failure(session, [key], now)
            user = session.get(User, principal.user_id)
        if locked is not None:
            wait = max(1, int((locked - now).total_seconds() + 0.999))
            raise self._refuse(
                RateLimited(f"too many failed attempts; try again in {wait} s", retry_after=wait),
                actor,
                "password",
                "rate_limited",
                subject=subject,
            )
        if not self.passwords.verify(user.password_hash if user else None, current_password):
            raise self._refuse(
                AccessDenied("the current password is wrong"),
                actor,
                "password",
                "bad_credentials",
                subject=subject,
            )
        new_hash = self.passwords.hash(new_password)
        now = utcnow()
        with self._tx() as session:
            user = session.get(User, principal.user_id, with_for_update=True)
            if user is None or user.disabled:
                raise self._refuse(
                    AuthenticationFailed("invalid or expired token"),
                    actor,
                    "password",
                    "user_disabled",
                    subject=subject,
                )
            user.password_hash = new_hash
            session.add(user)
            throttle = session.get(LoginThrottle, key)
            if throttle is not None:
                session.delete(throttle)
            self._append(
                session,
                actor=actor,
                action="password",
                decision=ALLOW,
                reason="changed",
                subject=subject,
            )
            self._end_sessions(session, actor, user, "password_changed", now)
            started, refresh_token = self._start_session(session, user.id, now)
            receipt = self._append(
                session,
                actor=actor,
                action="login",
                decision=ALLOW,
                reason="password_changed",
                subject=session_reference(started.id),
            )
        return self._session_tokens(started, refresh_token, receipt)

    # --- administration ---------------------------------------------------------------------

    @_records_refusals("manage")
    def add_country(self, principal: Principal, code: str, name: str) -> int:
        """Create a country; returns the ledger receipt."""
        code = check_country(code)
        name = _check_name(name)
        self._require_global(principal, "manage", subject=f"country:{code}")
        return self._create(principal, Country(code=code, name=name), subject=f"country:{code}")

    @_records_refusals("manage")
    def add_agency(self, principal: Principal, code: str, country: str, name: str) -> int:
        """Create an agency of an existing country; returns the ledger receipt."""
        code, country, name = check_agency(code), check_country(country), _check_name(name)
        self._require_global(principal, "manage", subject=f"agency:{code}")
        with self._tx() as session:
            if session.get(Country, country) is None:
                raise InvalidInput(f"unknown country {country}")
        return self._create(
            principal, Agency(code=code, country_code=country, name=name), subject=f"agency:{code}"
        )

    @_records_refusals("manage")
    def add_user(
        self,
        principal: Principal,
        *,
        username: str,
        agency: str,
        role: Role,
        password: str,
        clearance: Classification = Classification.UNCLASSIFIED,
    ) -> UserInfo:
        """Create a user with an argon2id-hashed password."""
        username, agency = check_username(username), check_agency(agency)
        self._require_global(principal, "manage", subject=f"user:{username}")
        password_hash = self.passwords.hash(password)
        with self._tx() as session:
            agency_row = session.get(Agency, agency)
            if agency_row is None:
                raise InvalidInput(f"unknown agency {agency}")
            user = User(
                id=new_id(),
                username=username,
                agency_code=agency,
                role=role,
                clearance=clearance,
                password_hash=password_hash,
                created_at=utcnow(),
            )
            country = agency_row.country_code
        self._create(principal, user, subject=f"user:{username}")
        return UserInfo(
            id=user.id,
            username=username,
            agency=agency,
            country=country,
            role=role,
            clearance=clearance,
            disabled=False,
        )

    @_records_refusals("manage")
    def set_user(
        self,
        principal: Principal,
        username: str,
        *,
        role: Role | None = None,
        clearance: Classification | None = None,
        disabled: bool | None = None,
    ) -> UserInfo:
        """Change a user's role, clearance or disabled flag; takes effect on their next request.

        Disabling, or changing role or clearance, ends every session of the user."""
        username = check_username(username)
        self._require_global(principal, "manage", subject=f"user:{username}")
        changes = []
        with self._tx() as session:
            user = session.exec(select(User).where(User.username == username)).first()
            if user is None:
                raise NotFound(f"unknown user {username}")
            if role is not None and role != user.role:
                user.role = role
                changes.append(f"role={role.value}")
            if clearance is not None and clearance != user.clearance:
                user.clearance = clearance
                changes.append(f"clearance={clearance.value}")
            if disabled is not None and disabled != user.disabled:
                user.disabled = disabled
                changes.append("disabled" if disabled else "enabled")
            if not changes:
                raise InvalidInput("nothing to change")
            session.add(user)
            session.flush()
            self._append(
                session,
                actor=principal.actor,
                action="manage",
                decision=ALLOW,
                reason="changed",
                subject=f"user:{username} " + " ".join(changes),
            )
            # Whoever they were signed in as is over: they sign in again as who they are now
            # (or not at all). Re-enabling has no session left to end.
            ending = next(
                (
                    reason
                    for prefix, reason in (
                        ("disabled", "user_disabled"),
                        ("role=", "role_changed"),
                        ("clearance=", "clearance_changed"),
                    )
                    if any(change.startswith(prefix) for change in changes)
                ),
                None,
            )
            if ending is not None:
                self._end_sessions(session, principal.actor, user, ending, utcnow())
            info = self._principal(session, user)
        return UserInfo(
            id=user.id,
            username=username,
            agency=info.agency,
            country=info.country,
            role=user.role,
            clearance=user.clearance,
            disabled=user.disabled,
        )

    @_records_refusals("manage")
    def rules(self, principal: Principal) -> list[str]:
        """Rules admins added on top of the policy file."""
        self._require_global(principal, "manage", subject="rules")
        return [rule_line(r) for r in self.authz.extra_rules]

    @_records_refusals("manage")
    def change_rule(self, principal: Principal, line: str, *, add: bool) -> str:
        """Add or remove an admin rule; the ledger entry carries the resulting policy hash."""
        rule = parse_rule(line)
        canonical = rule_line(rule)  # stored exactly so parse_rule reads it back
        self._require_global(principal, "manage", subject=f"rule:{canonical}")
        if add and self.authz.gives_content_to_no_content_role(rule):
            # Whoever asks: separation of duties is not a setting an admin can undo.
            raise self._refuse(
                AccessDenied(SEPARATION_OF_DUTIES),
                principal.actor,
                "manage",
                "separation_of_duties",
                subject=f"rule:{canonical}",
            )
        with self._tx() as session:
            current = set(_load_rules(session))
            if add == (rule in current):
                raise Conflict("that rule is already in force" if add else "no such rule")
            if add:
                session.add(
                    PolicyRule(
                        id=new_id(),
                        rule=canonical,
                        created_by=principal.username,
                        created_at=utcnow(),
                    )
                )
                current.add(rule)
            else:
                existing = session.exec(
                    select(PolicyRule).where(PolicyRule.rule == canonical)
                ).one()
                session.delete(existing)
                current.discard(rule)
            session.flush()
            authz = Authorizer(
                policy_dir=self.settings.resolved_policy_dir, extra_rules=tuple(sorted(current))
            )
            self._count_decision(ALLOW)
            ledger.append(
                session,
                actor=principal.actor,
                action="manage",
                decision=ALLOW,
                reason="rule added" if add else "rule removed",
                subject=f"rule:{canonical}",
                policy=authz.policy_hash,
            )
        self._authz = authz
        return authz.policy_hash

    @_records_refusals("manage")
    def rotate_kek(self, principal: Principal, *, batch: int = 500) -> int:
        """Re-wrap every data key not under the current KEK; content is not re-encrypted.

        Afterwards the old KEKs are no longer needed. Returns how many keys were re-wrapped.
        """
        self._require_global(principal, "manage", subject="kek")
        keyring = self.keys.keyring
        current = keyring.current.id
        done = 0
        for table in (Package, PackageFile):
            while True:
                with self._tx() as session:
                    rows: Sequence[Package | PackageFile] = session.exec(  # type: ignore[assignment]
                        select(table)
                        .where(col(table.kek_id) != current)
                        .where(func.length(col(table.wrapped_key)) > 0)
                        .limit(batch)
                    ).all()
                    for row in rows:
                        context = (
                            _package_identity(row.id)
                            if isinstance(row, Package)
                            else _file_identity(row.package_id, row.id)
                        )
                        fresh = keyring.rewrap(
                            crypto.WrappedKey(row.kek_id, row.wrapped_key), context=context
                        )
                        row.kek_id, row.wrapped_key = fresh.kek_id, fresh.blob
                        session.add(row)
                    done += len(rows)
                if len(rows) < batch:
                    break
        with self._tx() as session:
            self._append(
                session,
                actor=principal.actor,
                action="manage",
                decision=ALLOW,
                reason="kek rotated",
                subject=f"kek:{current} rewrapped:{done}",
            )
        self._compact_database()
        return done

    @_records_refusals("purge")
    def purge(self, principal: Principal, package_id: str) -> int:
        """Crypto-shred a package: destroy its wrapped keys, then delete its objects.

        Once the keys are gone, even a copy of the ciphertext together with the KEK can't be
        opened. The row stays as a tombstone (ids only) so ledger entries keep their meaning.
        """
        check_id(package_id, "package id")
        self._require_global(principal, "manage", package=package_id)
        with self._tx() as session:
            package = session.get(Package, package_id)
            if package is None or package.purged_at is not None:
                raise NotFound("package not found")
            files = session.exec(
                select(PackageFile).where(PackageFile.package_id == package_id)
            ).all()
            package.wrapped_key = b""
            package.sealed_meta = b""
            package.purged_at = utcnow()
            session.add(package)
            for row in files:
                row.wrapped_key = b""
                row.sealed_meta = b""
                session.add(row)
            receipt = self._allowed(principal, "purge", package, session=session)
        for row in files:
            with contextlib.suppress(StorageUnavailable):
                self.store.delete(row.id)  # leftovers are unreadable; `admin gc` retries
        self._compact_database()
        return receipt

    @_records_refusals("gc")
    def gc(
        self, principal: Principal, *, grace: timedelta = timedelta(hours=1)
    ) -> tuple[int, int, int]:
        """Delete stray objects: those no live package file refers to, older than ``grace``.

        Strays come from uploads cut off between storing objects and committing the package,
        from processes killed mid-write, and from purges whose deletes failed. ``grace``
        spares uploads still in flight. Returns (objects removed, temp files removed, receipt).
        """
        self._require_global(principal, "manage", subject="gc")
        cutoff = utcnow() - grace
        removed = 0
        batch: list[str] = []

        def flush() -> int:
            with self._tx(readonly=True) as session:
                live = set(
                    session.exec(
                        select(PackageFile.id)
                        .join(Package, col(Package.id) == col(PackageFile.package_id))
                        .where(col(PackageFile.id).in_(batch), col(Package.purged_at).is_(None))
                    ).all()
                )
            count = 0
            for key in batch:
                if key not in live:
                    with contextlib.suppress(NotFound):
                        if self.store.modified(key) < cutoff:
                            self.store.delete(key)
                            count += 1
            batch.clear()
            return count

        for key in self.store.keys():  # noqa: SIM118 - a store, not a dict
            batch.append(key)
            if len(batch) >= 500:
                removed += flush()
        if batch:
            removed += flush()
        temp = self.store.sweep_incomplete(cutoff)
        receipt = self._record(
            principal.actor, "gc", ALLOW, "ok", subject=f"objects:{removed} temp:{temp}"
        )
        return removed, temp, receipt

    def _compact_database(self) -> None:
        """Push destroyed key material out of the WAL (SQLite) or dead tuples (PostgreSQL)."""
        if is_postgres(self.engine):
            with self.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                for table in ("package", "packagefile"):
                    conn.exec_driver_sql(f"VACUUM {table}")
            return
        raw = self.engine.raw_connection()
        try:  # outside any transaction: pysqlite runs in autocommit mode here (see vault.db)
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
        finally:
            raw.close()

    def _create(self, principal: Principal, row: Any, *, subject: str) -> int:
        try:
            with self._tx() as session:
                session.add(row)
                session.flush()
                return self._append(
                    session,
                    actor=principal.actor,
                    action="manage",
                    decision=ALLOW,
                    reason="created",
                    subject=subject,
                )
        except DBIntegrityError:
            raise Conflict(f"{subject} already exists") from None

    # --- packages ---------------------------------------------------------------------------

    @_records_refusals("upload")
    def upload(
        self, principal: Principal, meta: NewPackage, files: Iterable[IncomingFile]
    ) -> UploadResult:
        """Seal and store every file, then record the package and its ledger entry at once.

        Objects are written before the database row; on any failure they are deleted again,
        so a package is either wholly visible or not at all.
        """
        self._require_global(principal, "upload")
        # A package above its creator's clearance could then be neither read nor released by
        # them: refused here (policy: "uncleared ... upload, deny"), before a byte is stored.
        cleared = principal.clearance.rank >= meta.classification.rank
        facts = Facts(
            role=principal.role.value,
            relations=frozenset({NONE}),
            cleared=cleared,
            handling=meta.handling.value,
            acknowledged=False,
            action="upload",
        )
        if not self.authz.allows(facts):
            raise self._refuse(
                AccessDenied(
                    f"classification {meta.classification.value} is above your clearance "
                    f"{principal.clearance.value}"
                    if not cleared
                    else "you may not upload this package"
                ),
                principal.actor,
                "upload",
                "clearance_below_classification" if not cleared else "policy_denied",
                subject=f"classification:{meta.classification.value}",
            )
        settings = self.settings
        package_id = new_id()
        package_key = crypto.new_data_key()
        written: list[str] = []
        rows: list[PackageFile] = []
        infos: list[FileInfo] = []
        total = 0
        try:
            first_with: dict[str, int] = {}  # filename_key -> position of the file that has it
            for position, incoming in enumerate(files):
                if position >= settings.max_files_per_package:
                    raise InvalidInput(f"at most {settings.max_files_per_package} files a package")
                name = check_filename(incoming.name)
                # One name per file once case and normalisation are ignored, or the package
                # can't be saved on NTFS or APFS. Positions, not names: names are content.
                if (other := first_with.setdefault(filename_key(name), position)) != position:
                    raise InvalidInput(
                        f"files {other + 1} and {position + 1} have the same name "
                        "(ignoring case and Unicode normalisation)"
                    )
                file_id = new_id()
                identity = _file_identity(package_id, file_id)
                data_key = crypto.new_data_key()
                limit = min(settings.max_file_size, settings.max_package_size - total)
                reader = crypto.SealingReader(
                    incoming.reader,
                    data_key,
                    identity=identity,
                    max_size=limit,
                    limit_error=TooLarge(
                        "file exceeds the size limit "
                        f"({settings.max_file_size} a file, {settings.max_package_size} a package)"
                    ),
                )
                written.append(file_id)
                try:
                    self.store.put(file_id, reader)
                    digest = reader.sha256_hex()
                finally:
                    reader.close()
                wrapped = self.keys.keyring.wrap(data_key, context=identity)
                sealed = crypto.seal_bytes(
                    package_key,
                    json.dumps({"name": name, "sha256": digest}).encode(),
                    context=identity,
                )
                rows.append(
                    PackageFile(
                        id=file_id,
                        package_id=package_id,
                        position=position,
                        size=reader.plaintext_size,
                        kek_id=wrapped.kek_id,
                        wrapped_key=wrapped.blob,
                        sealed_meta=sealed,
                    )
                )
                infos.append(
                    FileInfo(id=file_id, name=name, size=reader.plaintext_size, sha256=digest)
                )
                total += reader.plaintext_size
            if not rows:
                raise InvalidInput("a package needs at least one file")
            digest = _package_digest(infos)
            identity = _package_identity(package_id)
            wrapped_pkg = self.keys.keyring.wrap(package_key, context=identity)
            sealed_meta = crypto.seal_bytes(
                package_key,
                json.dumps(
                    {
                        "title": meta.title,
                        "description": meta.description,
                        "handling_note": meta.handling_note,
                        "fields": meta.fields,
                        "digest": digest,
                    }
                ).encode(),
                context=identity,
            )
            created = utcnow()
            package = Package(
                id=package_id,
                agency_code=principal.agency,
                creator_id=principal.user_id,
                created_at=created,
                size=total,
                file_count=len(rows),
                classification=meta.classification,
                handling=meta.handling,
                kek_id=wrapped_pkg.kek_id,
                wrapped_key=wrapped_pkg.blob,
                sealed_meta=sealed_meta,
            )
            with self._tx() as session:
                session.add(package)
                session.flush()
                session.add_all(rows)
                session.flush()
                receipt = self._allowed(principal, "upload", package, session=session)
        except BaseException as exc:
            for key in written:
                with contextlib.suppress(Exception):
                    self.store.delete(key)
            if isinstance(exc, VaultError | OSError):
                reason = exc.code if isinstance(exc, VaultError) else "io_error"
                # Bad input (no file, too large, a bad name) is refused; the rest failed.
                decision = DENY if isinstance(exc, _REFUSALS) else ERROR
                with contextlib.suppress(VaultError, OperationalError):
                    exc_receipt = self._record(principal.actor, "upload", decision, reason)
                    if isinstance(exc, VaultError):
                        exc.receipt = exc_receipt
            raise
        detail = PackageDetail(
            id=package_id,
            title=meta.title,
            classification=meta.classification,
            handling=meta.handling,
            agency=principal.agency,
            country=principal.country,
            created_at=created,
            size=total,
            file_count=len(rows),
            description=meta.description,
            handling_note=meta.handling_note,
            fields=meta.fields,
            digest=digest,
            creator=principal.username,
            files=infos,
            releases=[],
        )
        return UploadResult(package=detail, receipt=receipt)

    @_records_refusals("list")
    def list_packages(
        self, principal: Principal, *, limit: int = 50, offset: int = 0
    ) -> PackageList:
        """One page of the packages the caller may read, newest first."""
        if not 1 <= limit <= MAX_PAGE or offset < 0:
            raise InvalidInput(f"limit must be 1-{MAX_PAGE} and offset >= 0")
        self._require_global(principal, "list")
        with self._tx(readonly=True) as session:
            found = (
                session.connection()
                .execute(
                    self._listing_statement(principal),
                    listing_params(principal, limit=limit, offset=offset),
                )
                .all()
            )
            receipt = self._log(
                actor=principal.actor,
                action="list",
                decision=ALLOW,
                reason="ok",
                subject=f"count:{len(found)}",
            )
        items = [self._summary(cast(_SummaryRow, row), row.country_code) for row in found]
        return PackageList(items=items, limit=limit, offset=offset, receipt=receipt)

    def _listing_statement(self, principal: Principal) -> Any:
        """The listing query for ``principal``'s role and clearance under the current policy,
        with the caller's agency and country, the time and the page as bind parameters
        (:func:`listing_params`). Built once per (role, clearance, policy): building it took
        longer than running it."""
        key = (principal.role.value, principal.clearance.value, self.authz.policy_hash)
        statement = self._listings.get(key)
        if statement is None:
            statement = (
                sa_select(*_SUMMARY_COLUMNS)
                .join(Agency, col(Agency.code) == col(Package.agency_code))
                .where(col(Package.purged_at).is_(None), self._readable_clause(principal))
                .order_by(col(Package.created_at).desc(), col(Package.id))
                .offset(bindparam("offset"))
                .limit(bindparam("limit"))
            )
            if len(self._listings) >= 256:  # old policy versions: start afresh
                self._listings.clear()
            self._listings[key] = statement
        return statement

    def _readable_clause(self, principal: Principal) -> Any:
        """SQL for "the caller may read this package", derived from the policy's classes.

        Depends on the caller's role and clearance only; their agency and country are the bind
        parameters ``agency`` and ``country``, the time ``now``.
        """
        cleared = frozenset(c.value for c in Classification if c.rank <= principal.clearance.rank)
        classes = self.authz.readable_classes(
            role=principal.role.value,
            action="read",
            cleared_for=cleared,
            classifications=tuple(c.value for c in Classification),
        )
        agency, country = bindparam("agency", type_=String()), bindparam("country", type_=String())
        relation_sql: dict[str, Any] = {
            ORIGINATOR: col(Package.agency_code) == agency,
            RELEASED_AGENCY: _released_to_agency(agency),
            RELEASED_COUNTRY: _released_to_country(country),
            SAME_COUNTRY: col(Agency.country_code) == country,
            NONE: None,
        }
        clauses = []
        for relation, pairs in classes.items():
            by_class: dict[str, list[str]] = {}
            for cls, hnd in pairs:
                by_class.setdefault(cls, []).append(hnd)
            class_sql = or_(
                *(
                    and_(col(Package.classification) == cls, col(Package.handling).in_(hnds))
                    for cls, hnds in by_class.items()
                )
            )
            rel = relation_sql[relation]
            clauses.append(class_sql if rel is None else and_(rel, class_sql))
        return or_(*clauses) if clauses else false()

    def _open_meta(self, package: _Sealed) -> dict[str, Any]:
        identity = _package_identity(package.id)
        key = self.keys.keyring.unwrap(
            crypto.WrappedKey(package.kek_id, package.wrapped_key), context=identity
        )
        meta: dict[str, Any] = json.loads(
            crypto.open_bytes(key, package.sealed_meta, context=identity)
        )
        meta["_key"] = key
        return meta

    def _summary(self, package: _SummaryRow, country: str) -> PackageSummary:
        meta = self._open_meta(package)
        return PackageSummary(
            id=package.id,
            title=meta["title"],
            classification=package.classification,
            handling=package.handling,
            agency=package.agency_code,
            country=country,
            created_at=package.created_at,
            size=package.size,
            file_count=package.file_count,
        )

    def _file_info(self, package_key: bytes, row: _FileRow) -> FileInfo:
        meta = json.loads(
            crypto.open_bytes(
                package_key, row.sealed_meta, context=_file_identity(row.package_id, row.id)
            )
        )
        return FileInfo(id=row.id, name=meta["name"], size=row.size, sha256=meta["sha256"])

    @_records_refusals("read")
    def get_package(self, principal: Principal, package_id: str) -> tuple[PackageDetail, int]:
        """Details of one package the caller may read, and the ledger receipt."""
        with self._tx(readonly=True) as session:
            package, facts = self._load_package_for(session, principal, package_id, "read")
            files = session.connection().execute(_PACKAGE_FILES, {"pid": package.id}).all()
            releases = (
                session.scalars(_PACKAGE_RELEASES, {"pid": package.id}).all()
                if ORIGINATOR in facts.relations
                else []
            )
            country = self._country_of(session, package.agency_code)
            creator = (
                session.connection()
                .execute(_USERNAME, {"uid": package.creator_id})
                .scalar_one_or_none()
            )
            receipt = self._allowed(principal, "read", package)
        meta = self._open_meta(package)
        detail = PackageDetail(
            id=package.id,
            title=meta["title"],
            classification=package.classification,
            handling=package.handling,
            agency=package.agency_code,
            country=country,
            created_at=package.created_at,
            size=package.size,
            file_count=package.file_count,
            description=meta["description"],
            handling_note=meta["handling_note"],
            fields=meta["fields"],
            digest=meta["digest"],
            creator=creator or "",
            files=[self._file_info(meta["_key"], cast(_FileRow, row)) for row in files],
            releases=[_release_info(r) for r in releases],
        )
        return detail, receipt

    @_records_refusals("download")
    def download(self, principal: Principal, package_id: str, file_id: str) -> Download:
        """Authorise and record a download, then stream plaintext checked segment by segment.

        The returned iterator raises IntegrityError if the stored object fails authentication
        or its digest; the caller must then discard everything it received.
        """
        check_id(file_id, "file id")
        with self._tx(readonly=True) as session:
            package, _ = self._load_package_for(session, principal, package_id, "download")
            row = session.get(PackageFile, file_id)
            if row is None or row.package_id != package.id:
                raise NotFound("file not found")
            receipt = self._allowed(principal, "download", package, file=file_id)
        identity = _file_identity(package.id, row.id)

        def record_failure(exc: VaultError) -> None:
            with contextlib.suppress(VaultError, OperationalError):
                self._record(
                    principal.actor,
                    "download",
                    ERROR,
                    exc.code,
                    package=package.id,
                    file=row.id,
                    handling=package.handling.value,
                )

        try:
            meta = self._open_meta(package)
            info = self._file_info(meta["_key"], row)
            data_key = self.keys.keyring.unwrap(
                crypto.WrappedKey(row.kek_id, row.wrapped_key), context=identity
            )
        except IntegrityError as exc:
            record_failure(exc)
            raise

        def chunks() -> Generator[bytes, None, None]:
            digest = crypto.BackgroundDigest()
            size = 0
            try:
                # The plaintext stream is closed (its read-ahead thread joined) before the
                # object is: the nesting order of this with-statement.
                with (
                    self.store.open(row.id) as source,
                    contextlib.closing(
                        crypto.open_stream(source, data_key, identity=identity)
                    ) as plains,
                ):
                    for plain in plains:
                        digest.update(plain)
                        size += len(plain)
                        yield plain
                if size != info.size or not crypto.constant_time_equal(
                    digest.hexdigest(), info.sha256
                ):
                    raise IntegrityError("downloaded content does not match its recorded digest")
            except (IntegrityError, StorageUnavailable, NotFound) as exc:
                record_failure(exc)
                if isinstance(exc, NotFound):
                    raise IntegrityError("stored object is missing") from None
                raise
            finally:
                digest.close()

        return Download(
            file=info,
            package_id=package.id,
            handling=package.handling.value,
            receipt=receipt,
            chunks=chunks(),
        )

    def _check_target(
        self, session: Session, country: str, agency: str | None
    ) -> tuple[str, str | None]:
        country = check_country(country)
        if session.get(Country, country) is None:
            raise InvalidInput(f"unknown country {country}")
        if agency is not None:
            agency = check_agency(agency)
            agency_row = session.get(Agency, agency)
            if agency_row is None or agency_row.country_code != country:
                raise InvalidInput(f"agency {agency} is not an agency of {country}")
        return country, agency

    @staticmethod
    def _check_window(not_before: datetime | None, expires_at: datetime | None) -> None:
        for moment in (not_before, expires_at):
            if moment is not None and moment.tzinfo is None:
                raise InvalidInput("release times must carry a time zone")
        if not_before and expires_at and expires_at <= not_before:
            raise InvalidInput("a release must expire after it starts")
        if expires_at is not None and expires_at <= utcnow():
            raise InvalidInput("that release would already have expired")

    def _needs_second_person(self, session: Session, package: Package, country: str) -> bool:
        """Four-eyes: a sensitive package going to another country than its originator's."""
        threshold = Classification(self.settings.four_eyes_from)
        origin_country = self._country_of(session, package.agency_code)
        return package.classification.rank >= threshold.rank and country != origin_country

    @_records_refusals("release")
    def release(
        self,
        principal: Principal,
        package_id: str,
        *,
        country: str,
        agency: str | None = None,
        not_before: datetime | None = None,
        expires_at: datetime | None = None,
    ) -> ReleaseResult:
        """Release a package to a country, or one agency of it, optionally timed.

        A release that needs a second person (four-eyes) is created pending; a supervisor of
        the originating agency other than the requester must approve it.
        """
        self._check_window(not_before, expires_at)
        with self._tx() as session:
            package, _ = self._load_package_for(session, principal, package_id, "release")
            country, agency = self._check_target(session, country, agency)
            pending = self._needs_second_person(session, package, country)
            release = Release(
                id=new_id(),
                package_id=package.id,
                country_code=country,
                agency_code=agency,
                status=ReleaseStatus.PENDING if pending else ReleaseStatus.ACTIVE,
                kind=ReleaseKind.FOUR_EYES if pending else ReleaseKind.DIRECT,
                not_before=not_before,
                expires_at=expires_at,
                requested_by=principal.user_id,
                created_at=utcnow(),
                decided_by=None if pending else principal.user_id,
                decided_at=None if pending else utcnow(),
            )
            receipt = self._store_release(session, principal, package, release, "release")
        return ReleaseResult(release=_release_info(release), receipt=receipt)

    @_records_refusals("request-release")
    def request_release(
        self, principal: Principal, package_id: str, *, country: str, agency: str | None = None
    ) -> ReleaseResult:
        """Recipient asks the originating agency to release further (H2); pending until decided."""
        with self._tx() as session:
            package, _ = self._load_package_for(session, principal, package_id, "request-release")
            country, agency = self._check_target(session, country, agency)
            release = Release(
                id=new_id(),
                package_id=package.id,
                country_code=country,
                agency_code=agency,
                status=ReleaseStatus.PENDING,
                kind=ReleaseKind.ONWARD_REQUEST,
                requested_by=principal.user_id,
                created_at=utcnow(),
            )
            receipt = self._store_release(session, principal, package, release, "request-release")
        return ReleaseResult(release=_release_info(release), receipt=receipt)

    def _store_release(
        self,
        session: Session,
        principal: Principal,
        package: Package,
        release: Release,
        action: str,
    ) -> int:
        session.add(release)
        session.flush()
        target = f"country:{release.country_code}" + (
            f" agency:{release.agency_code}" if release.agency_code else ""
        )
        return self._append(
            session,
            actor=principal.actor,
            action=action,
            decision=ALLOW,
            reason=f"status:{release.status.value}",
            package=package.id,
            release=release.id,
            subject=target,
            handling=package.handling.value,
        )

    def _load_release_for(
        self,
        session: Session,
        principal: Principal,
        release_id: str,
        action: str,
        package_id: str | None = None,
    ) -> tuple[Release, Package]:
        check_id(release_id, "release id")
        release = session.get(Release, release_id)
        if release is None or (package_id is not None and release.package_id != package_id):
            raise self._refuse(
                NotFound("release not found"),
                principal.actor,
                action,
                "not_found",
                release=release_id,
            )
        try:
            package, _ = self._load_package_for(session, principal, release.package_id, action)
        except NotFound as exc:
            # The same exception (its refusal is recorded on the way out), worded for a
            # release so the answer matches a missing release id exactly.
            exc.message = "release not found"
            exc.args = (exc.message,)
            raise
        return release, package

    @_records_refusals("approve")
    def decide_release(
        self, principal: Principal, release_id: str, *, approve: bool
    ) -> ReleaseResult:
        """A supervisor of the originating agency approves or rejects a pending release.

        Four-eyes: the person who asked for the release can never be the one who approves it.
        """
        action = "approve"
        with self._tx() as session:
            release, package = self._load_release_for(session, principal, release_id, action)
            if release.status != ReleaseStatus.PENDING:
                raise Conflict(f"release is {release.status.value}, not pending")
            if release.requested_by == principal.user_id:
                raise self._refuse(
                    AccessDenied(
                        "four-eyes: a release must be decided by someone other than its requester"
                    ),
                    principal.actor,
                    action,
                    "four_eyes_same_person",
                    package=package.id,
                    release=release.id,
                    handling=package.handling.value,
                )
            release.status = ReleaseStatus.ACTIVE if approve else ReleaseStatus.REJECTED
            release.decided_by = principal.user_id
            release.decided_at = utcnow()
            session.add(release)
            session.flush()
            receipt = self._allowed(
                principal,
                action,
                package,
                session=session,
                reason="approved" if approve else "rejected",
                release=release.id,
            )
        return ReleaseResult(release=_release_info(release), receipt=receipt)

    @_records_refusals("revoke")
    def revoke_release(
        self, principal: Principal, package_id: str, release_id: str
    ) -> ReleaseResult:
        """Withdraw a release; it stops granting access on the very next request."""
        with self._tx() as session:
            release, package = self._load_release_for(
                session,
                principal,
                release_id,
                "revoke",
                package_id=check_id(package_id, "package id"),
            )
            if release.status in (ReleaseStatus.REVOKED, ReleaseStatus.REJECTED):
                raise Conflict(f"release is already {release.status.value}")
            release.status = ReleaseStatus.REVOKED
            release.revoked_by = principal.user_id
            release.revoked_at = utcnow()
            session.add(release)
            session.flush()
            receipt = self._allowed(
                principal, "revoke", package, session=session, release=release.id
            )
        return ReleaseResult(release=_release_info(release), receipt=receipt)

    @_records_refusals("acknowledge")
    def acknowledge(self, principal: Principal, package_id: str) -> int:
        """Record that the caller accepts an H3 package's stated restrictions."""
        with self._tx() as session:
            package, facts = self._load_package_for(session, principal, package_id, "acknowledge")
            if package.handling != Handling.H3:
                raise InvalidInput("only H3 packages carry restrictions to acknowledge")
            if not facts.acknowledged:
                session.add(
                    Acknowledgement(
                        package_id=package.id, user_id=principal.user_id, created_at=utcnow()
                    )
                )
                session.flush()
            return self._allowed(
                principal,
                "acknowledge",
                package,
                session=session,
                reason="ok" if not facts.acknowledged else "already",
            )

    @_records_refusals("audit")
    def audit_package(self, principal: Principal, package_id: str) -> tuple[AuditView, int]:
        """What an auditor may see of a package: no title, description, filenames or content."""
        with self._tx(readonly=True) as session:
            package, _ = self._load_package_for(session, principal, package_id, "audit")
            files = session.exec(
                select(PackageFile.id)
                .where(PackageFile.package_id == package.id)
                .order_by(col(PackageFile.position))
            ).all()
            releases = session.exec(
                select(Release)
                .where(Release.package_id == package.id)
                .order_by(col(Release.created_at))
            ).all()
            country = self._country_of(session, package.agency_code)
            receipt = self._allowed(principal, "audit", package)
            view = AuditView(
                id=package.id,
                agency=package.agency_code,
                country=country,
                classification=package.classification,
                handling=package.handling,
                created_at=package.created_at,
                size=package.size,
                file_count=package.file_count,
                file_ids=list(files),
                releases=[_release_info(r) for r in releases],
            )
        return view, receipt

    @_records_refusals("explain")
    def explain(
        self, principal: Principal, *, username: str, package_id: str, action: str
    ) -> tuple[Explanation, int]:
        """Allow or deny for ``username`` doing ``action`` to a package, and why.

        Auditors and admins get the facts, the rules that decided and the policy version, for
        packages the audit view shows them; anyone else may only ask about themselves, about
        packages they may read, and gets the bare answer. Every other package is NotFound,
        exactly like a missing one.
        """
        username = check_username(username)
        check_id(package_id, "package id")
        if action not in ACTIONS:
            raise InvalidInput(f"action must be one of {', '.join(ACTIONS)}")
        full = self.authz.allows(
            Facts(principal.role.value, frozenset({NONE}), True, "*", False, "explain")
        )
        if not full and username != principal.username:
            raise self._refuse(
                AccessDenied("only auditors and admins may ask about other users"),
                principal.actor,
                "explain",
                "role_not_permitted",
                subject=f"user:{username}",
            )
        with self._tx(readonly=True) as session:
            # The package first, whoever is asked about: one the caller may not know exists
            # answers exactly like a missing id. Auditors and admins see what the audit view
            # shows them (its very check); anyone else what they may read.
            self._load_package_for(
                session, principal, package_id, "audit" if full else "read", record_as="explain"
            )
            user = session.exec(select(User).where(User.username == username)).first()
            if user is None:
                raise NotFound(f"unknown user {username}")
            subject = self._principal(session, user)
            found = package_facts(session, subject, package_id, action)
            if found is None:  # loaded just above, in this transaction
                raise NotFound("package not found")
            package, facts = found
            decision = self.authz.decide(facts)
            grants = [rid for rid, _ in self._grants_in_force(session, subject, package.id)]
            receipt = self._log(
                actor=principal.actor,
                action="explain",
                decision=ALLOW,
                reason="allow" if decision.allowed else "deny",
                package=package.id,
                subject=f"user:{username} action:{action}",
                handling=package.handling.value,
            )
        if not full:
            return Explanation(
                allowed=decision.allowed,
                user=username,
                package=package_id,
                action=action,
                policy_hash=decision.policy_hash,
            ), receipt
        notes = []
        if not decision.allowed and not decision.rules:
            notes.append("no rule allows this for the facts above: denied by default")
        if facts.relations == frozenset({NONE}):
            notes.append(
                f"{subject.agency} is not the originator and no release to {subject.agency} "
                f"or {subject.country} is in force"
            )
        if user.disabled:
            notes.append("the user is disabled: every request is refused at authentication")
        if action == "approve":
            notes.append("four-eyes: the requester of a release can never approve it")
        return Explanation(
            allowed=decision.allowed and not user.disabled,
            user=username,
            package=package_id,
            action=action,
            policy_hash=decision.policy_hash,
            relation=decision.relation,
            facts={
                "role": subject.role.value,
                "agency": subject.agency,
                "country": subject.country,
                "relations": sorted(facts.relations),
                "clearance": subject.clearance.value,
                "classification": package.classification.value,
                "cleared": facts.cleared,
                "handling": facts.handling,
                "acknowledged": facts.acknowledged,
                "originating_agency": package.agency_code,
            },
            rules=[list(r) for r in decision.rules],
            grants=list(grants),
            notes=notes,
        ), receipt

    # --- ledger ---------------------------------------------------------------------------

    @property
    def ledger_verifier(self) -> note.Verifier:
        """The C2SP verifier of the log key (name = the ledger's origin)."""
        return note.Verifier.from_public_key(
            self.settings.ledger_origin, self.keys.ledger_key.public_key()
        )

    @property
    def ledger_vkey(self) -> str:
        """The verifier-key string counterparts use to check checkpoints offline."""
        return self.ledger_verifier.vkey()

    def _ledger_read(self, principal: Principal, what: str) -> int:
        """Authorise and record an auditor's read of the ledger."""
        self._require_global(principal, "ledger", subject=what)
        return self._record(principal.actor, "ledger", ALLOW, "ok", subject=what)

    @_records_refusals("ledger")
    def verify_ledger(
        self,
        principal: Principal,
        progress: Callable[[int], None] | None = None,
        *,
        workers: int = 1,
    ) -> LedgerReport:
        """Verify chain, tree and every signed checkpoint; report the first bad entry.

        Reads nothing but the database and the log's public key, and writes nothing, so it
        is safe to run against a copy of a suspect database. ``workers`` > 1 forks processes
        for a large ledger: only for a command-line process, never inside the server.
        """
        self._require_global(principal, "ledger", subject="verify")
        with self._tx(readonly=True) as session:
            result = ledger_check.verify_database(
                session,
                origin=self.settings.ledger_origin,
                verifier=self.ledger_verifier,
                progress=progress,
                workers=workers,
            )
        return LedgerReport.model_validate(result.as_dict())

    def checkpoint(self) -> CheckpointInfo:
        """Sign a checkpoint of the current tree (or return the latest if nothing changed)."""
        with self._tx() as session:
            row = ledger.sign_checkpoint(
                session, origin=self.settings.ledger_origin, key=self.keys.ledger_key
            )
        return self._checkpoint_info(row.note)

    def _checkpoint_info(self, signed: str) -> CheckpointInfo:
        body = note.open_checkpoint(signed, [self.ledger_verifier], self.settings.ledger_origin)
        return CheckpointInfo(
            origin=body.origin,
            size=body.size,
            root=_b64(body.root_hash),
            vkey=self.ledger_vkey,
            note=signed,
        )

    @_records_refusals("ledger")
    def latest_checkpoint(self, principal: Principal) -> CheckpointInfo:
        """The newest signed checkpoint (signed now if the tree grew since)."""
        receipt = self._ledger_read(principal, "checkpoint")
        return self.checkpoint().model_copy(update={"receipt": receipt})

    @_records_refusals("ledger")
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
        receipt = self._ledger_read(principal, f"entries:{start}-{end}")
        with self._tx(readonly=True) as session:
            items = [_b64(data) for _, data in ledger.iter_entries(session, start=start, stop=end)]
        return LedgerEntries(start=start, entries=items, receipt=receipt)

    @_records_refusals("ledger")
    def inclusion_proof(self, principal: Principal, seq: int) -> InclusionProof:
        """Prove entry ``seq`` is in the tree of the latest checkpoint (signed now if needed)."""
        if seq < 0:
            raise InvalidInput("sequence numbers start at 0")
        receipt = self._ledger_read(principal, f"prove:{seq}")
        info = self.checkpoint()
        if seq >= info.size:
            raise NotFound(f"no ledger entry {seq}")
        with self._tx(readonly=True) as session:
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
            receipt=receipt,
        )

    @_records_refusals("ledger")
    def consistency_proof(self, principal: Principal, old_checkpoint: str) -> ConsistencyProof:
        """Prove the current ledger extends a checkpoint saved earlier; LedgerCorrupt if not."""
        try:
            old = note.open_checkpoint(
                old_checkpoint, [self.ledger_verifier], self.settings.ledger_origin
            )
        except note.NoteError as exc:
            raise InvalidInput(
                f"the old checkpoint does not verify with this log's key: {exc}"
            ) from None
        receipt = self._ledger_read(principal, f"consistency:{old.size}")
        info = self.checkpoint()
        if old.size > info.size:
            raise LedgerCorrupt(
                f"the ledger was rolled back: it holds {info.size} entries, the saved "
                f"checkpoint {old.size}",
                seq=info.size,
            )
        with self._tx(readonly=True) as session:
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

    @_records_refusals("ledger")
    def export_ledger(
        self, principal: Principal, out: TextIO, progress: Callable[[int], None] | None = None
    ) -> CheckpointInfo:
        """Write the export document (README: "Ledger export format") to ``out``, streamed."""
        self._ledger_read(principal, "export")
        info = self.checkpoint()
        witnessed = self._witnessed_note(info.size)
        out.write("{\n")
        out.write(f'  "origin": {json.dumps(info.origin)},\n')
        out.write(f'  "vkey": {json.dumps(info.vkey)},\n')
        out.write(f'  "checkpoint": {json.dumps(info.note)},\n')
        out.write(f'  "witnessed_checkpoint": {json.dumps(witnessed)},\n')
        out.write('  "entries": [')
        with self._tx(readonly=True) as session:
            for seq, data in ledger.iter_entries(session, stop=info.size):
                out.write(("\n    " if seq == 0 else ",\n    ") + '"' + _b64(data) + '"')
                if progress and seq % 4096 == 0:
                    progress(seq)
        out.write("\n  ]\n}\n")
        return info

    # --- witnesses: the witnessed checkpoint, its proofs, the server's publisher -----------

    def witness_publisher(self) -> PublishingThread | None:
        """The witness publisher VAULT_WITNESS_POLICY asks for (the server starts it), or None."""
        return PublishingThread.from_settings(
            self.settings, engine=self.engine, key=self.keys.ledger_key
        )

    def _witnessed_read(
        self, principal: Principal, subject: str, read: Callable[[Session], _T]
    ) -> tuple[_T, int]:
        """Authorise a read of witnessed data as a ledger read, run it, then record it (a
        NotFound from ``read`` is recorded as the refusal instead)."""
        self._require_global(principal, "ledger", subject=subject)
        with self._tx(readonly=True) as session:
            result = read(session)
        return result, self._record(principal.actor, "ledger", ALLOW, "ok", subject=subject)

    @_records_refusals("ledger")
    def witnessed_checkpoint(self, principal: Principal) -> WitnessedCheckpointInfo:
        """The newest checkpoint a quorum of witnesses cosigned; NotFound if none yet."""
        info, receipt = self._witnessed_read(
            principal,
            "witnessed-checkpoint",
            lambda s: published.witnessed_info(
                s, self.ledger_verifier, self.settings.ledger_origin
            ),
        )
        return info.model_copy(update={"receipt": receipt})

    @_records_refusals("ledger")
    def tlog_proof(self, principal: Principal, seq: int) -> tuple[str, bytes, int]:
        """A C2SP tlog-proof bundle of entry ``seq`` in the witnessed checkpoint, the entry's
        bytes and the receipt; NotFound if nothing is witnessed or the entry not yet."""
        if seq < 0:
            raise InvalidInput("sequence numbers start at 0")
        (bundle, entry), receipt = self._witnessed_read(
            principal,
            f"tlog-proof:{seq}",
            lambda s: published.tlog_proof(
                s, seq, self.ledger_verifier, self.settings.ledger_origin
            ),
        )
        return bundle, entry, receipt

    def _witnessed_note(self, size: int) -> str | None:
        """The witnessed checkpoint's note if it covers at most ``size`` entries (for export)."""
        with self._tx(readonly=True) as session:
            row = published.latest_witnessed(session)
        return row.note if row is not None and row.size <= size else None

    def witness_status(self) -> WitnessStatus:
        """Ledger size, witnessed size and each witness's lag (metrics, ``ledger status``)."""
        with self._tx(readonly=True) as session:
            return published.witness_status(session, now=utcnow())

    def ledger_show(self, principal: Principal) -> Iterator[Entry]:
        """Every entry, decoded, in order (callers filter); the read is recorded first."""
        self._ledger_read(principal, "show")
        with self._tx(readonly=True) as session:
            for seq, data in ledger.iter_entries(session):
                yield decode(data, seq_hint=seq)

    def ledger_size(self) -> int:
        """Number of ledger entries (for health and metrics)."""
        with self._tx(readonly=True) as session:
            return ledger.size(session)

    def check_ready(self) -> None:
        """Raise StorageUnavailable unless database and object store answer."""
        with self._tx(readonly=True) as session:
            session.exec(select(LedgerEntry.seq).limit(1)).all()
        self.store.check()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 200:
        raise InvalidInput("names are 1-200 characters")
    return check_text(name.strip(), "name")


def _package_digest(files: list[FileInfo]) -> str:
    """SHA-256 over the files' digests and names, in order: one digest for the package."""
    h = hashlib.sha256(b"blo-vault package digest v1\x00")
    for f in files:
        h.update(f"{f.sha256}\x00{f.name}\x00{f.size}\n".encode())
    return h.hexdigest()


def _release_info(r: Release) -> ReleaseInfo:
    now = utcnow()
    in_force = (
        r.status == ReleaseStatus.ACTIVE
        and (r.not_before is None or r.not_before <= now)
        and (r.expires_at is None or r.expires_at > now)
    )
    return ReleaseInfo(
        id=r.id,
        package_id=r.package_id,
        country=r.country_code,
        agency=r.agency_code,
        status=r.status,
        kind=r.kind,
        in_force=in_force,
        not_before=r.not_before,
        expires_at=r.expires_at,
        created_at=r.created_at,
        requested_by=r.requested_by,
        decided_by=r.decided_by,
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


_PG_THROTTLE_LOCK = 0x424C4F54  # "BLOT"


def _lock_throttle(session: Session) -> None:
    """Serialise login bookkeeping (SQLite's BEGIN IMMEDIATE already does)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:k, hashtext(current_schema()))"),
            {"k": _PG_THROTTLE_LOCK},
        )


def _load_rules(session: Session) -> tuple[tuple[str, ...], ...]:
    rows = session.exec(select(PolicyRule.rule)).all()
    return tuple(sorted(parse_rule(r) for r in rows))


def _user_throttle_key(username: str) -> str:
    """The lockout key of a username: the same key ``login`` counts failures under."""
    name = username[:64]
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"user:{digest}"
