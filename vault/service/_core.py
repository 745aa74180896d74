"""The one core every domain service shares: transactions, the policy in force, recording
ledger entries and refusals, and the caches.

There is exactly one :class:`Core` per vault. The refusal protocol counts how deeply
transactions nest in a thread-local on it: a second core would lose that count when one
service calls another inside a transaction, and refusals would be written while the action's
own transaction still holds the database.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from vault.authz import Authorizer, Facts, parse_rule
from vault.config import Settings
from vault.db import (
    check_schema,
    make_engine,
    migrate,
    read_scope,
    require_existing,
    schema_revision,
    session_scope,
)
from vault.errors import (
    AccessDenied,
    NotFound,
    StorageUnavailable,
    VaultError,
    VaultMissing,
)
from vault.keys import KeyMaterial, load_keys
from vault.ledger import log as ledger
from vault.ledger.log import Actor
from vault.models import Agency, Handling, PolicyRule, User
from vault.passwords import Passwords
from vault.schemas import is_id
from vault.service.ledger_openings import Openings
from vault.service.pending import PendingRead
from vault.service.principal import Principal as Principal
from vault.service.principal import UserRow as UserRow
from vault.service.principal import local_operator as local_operator
from vault.service.principal import principal_of as principal_of
from vault.service.refusals import PENDING, Refusals
from vault.service.titles import Titles
from vault.storage import ObjectStore, open_store
from vault.tokens import TokenService

log = logging.getLogger("vault.service")

ALLOW, DENY, ERROR = "allow", "deny", "error"
# Rules added by admins in one process are enforced by every other within this many seconds.
POLICY_REFRESH_SECONDS = 0.5

# On a refusal raised under Core.deferring_refusals: the future of its queued entry.
UNCOMMITTED = "_vault_uncommitted_refusal"

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Refusal:
    """A refusal to record once the transaction it happened in has rolled back."""

    actor: Actor
    action: str
    reason: str
    target: dict[str, str]


def new_id() -> str:
    """A fresh opaque id: 128 random bits as 32 lowercase hex characters."""
    return secrets.token_hex(16)


def unavailable(exc: OperationalError) -> StorageUnavailable:
    """The error for a database that failed us; the driver's first line goes to the log only."""
    log.warning("database unavailable: %s", (str(exc.orig) or "?").splitlines()[0][:200])
    return StorageUnavailable("the database is unavailable; nothing was changed")


def load_rules(session: Session) -> tuple[tuple[str, ...], ...]:
    """The rules admins added, parsed and sorted (the authorizer's ``extra_rules``)."""
    rows = session.exec(select(PolicyRule.rule)).all()
    return tuple(sorted(parse_rule(r) for r in rows))


class Core:
    """What every domain service shares: the database, store, keys, the policy in force, the
    ledger appender, the caches, and the transaction nesting that refusal recording rests on.
    """

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
        self.listings: dict[tuple[str, str, str], Any] = {}
        # Opened titles of listed packages (bounded; purge forgets): vault.service.titles.
        self.titles = Titles()
        # Version 2 entries: the sink seals each entry's opening in the entry's transaction.
        self.openings = Openings(keys, self.country_of)
        self._sink = self.openings if settings.ledger_entry_version == 2 else None
        self._appender = ledger.GroupAppender(engine, sink=self._sink)
        self._counts_lock = threading.Lock()
        self._decisions: dict[str, int] = {}
        # Refusals of callers not authenticated: an entry each within a budget (refusals.py).
        self.refusals = Refusals(
            per_address=settings.refusal_entries_per_address,
            total=settings.refusal_entries_total,
            interval=settings.refusal_summary_seconds,
            record=self.record_refusal,
            submit=lambda actor, action, reason, subject: self.submit(
                self.entry(
                    actor=actor, action=action, decision=DENY, reason=reason, subject=subject
                )
            ),
        )

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        store: ObjectStore | None = None,
        create: bool = True,
        repair: bool = True,
        require_guard: bool = True,
    ) -> Core:
        """Build the core from settings: database, store, keys, policy (see ``Vault.open``:
        VaultMissing for a missing vault unless ``create``; the schema is only checked
        unless ``repair`` outside production)."""
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
            rules = load_rules(session)
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
                max_concurrent=settings.argon2_max_concurrent,
            ),
            tokens=TokenService(
                private_pem=keys.token_private_pem,
                public_pems=[keys.token_public_pem],
                issuer=settings.token_issuer,
                audience=settings.token_audience,
                ttl_seconds=settings.token_ttl_seconds,
            ),
        )

    # --- policy -------------------------------------------------------------------------------

    @property
    def authz(self) -> Authorizer:
        """The authorizer for the policy version in force (admin rules re-read twice a second)."""
        return self._authz

    def install_policy(self, authz: Authorizer) -> None:
        """Enforce ``authz`` from now on (after its rules were committed)."""
        self._authz = authz

    def _refresh_policy(self) -> None:
        """Pick up rules another process added or removed; outside transactions only (a
        database failure is left for the transaction that follows to report)."""
        if getattr(self._local, "depth", 0):
            return
        now = time.monotonic()
        if now - self._authz_checked < POLICY_REFRESH_SECONDS:
            return
        self._authz_checked = now
        try:
            with session_scope(self.engine, readonly=True) as session:
                rules = load_rules(session)
        except OperationalError:
            return
        if rules != self._authz.stored_rules:
            self._authz = Authorizer(
                policy_dir=self.settings.resolved_policy_dir, extra_rules=rules
            )

    def require_global(self, principal: Principal, action: str, **target: str) -> None:
        """Authorise an action that concerns no package (upload, list, manage, ledger); a
        refusal is recorded and raised as AccessDenied."""
        facts = Facts.global_action(principal.role.value, action)
        # Most callers decide this before their first transaction, which is where the rules
        # are picked up: without this, the first request after a quiet moment was decided
        # (and its entry stamped) under rules another process had already changed.
        self._refresh_policy()
        if not self.authz.allows(facts):
            raise self.record_refusal(
                AccessDenied(f"your role may not {action}"),
                principal.actor,
                action,
                "role_not_permitted",
                **target,
            )

    def close(self) -> None:
        """Finish pending ledger appends and release database connections."""
        self.refusals.close()
        self._appender.close()
        self.engine.dispose()

    # --- transactions -------------------------------------------------------------------------

    @contextlib.contextmanager
    def tx(self, *, readonly: bool = False) -> Iterator[Session]:
        """One database transaction; refusals raised inside it are recorded after rollback.

        ``readonly`` transactions must not write (on SQLite they don't queue for the lock).
        Transactions nest (per thread): only the outermost one records refusals.
        """
        with self._transaction(), self._session(readonly) as session:
            yield session

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction on a plain connection, without an ORM session (the read
        routes' hot path: a session costs each request about as much again as the
        transaction), shared by the read-only transactions opened inside it in this thread
        (Vault.reading_as). Refusals are recorded as for :meth:`tx`."""
        with self._transaction(), self._connection() as connection:
            yield connection

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """What every transaction shares: the policy picked up before the outermost one, the
        database's failures as StorageUnavailable, and refusals recorded after rollback."""
        depth = getattr(self._local, "depth", 0)
        self._refresh_policy()
        self._local.depth = depth + 1
        try:
            yield
        except OperationalError as exc:
            raise unavailable(exc) from None
        except VaultError as exc:
            pending: _Refusal | None = getattr(exc, PENDING, None)
            if pending is not None and depth == 0:
                delattr(exc, PENDING)
                self._local.depth = 0
                record = self.entry(
                    actor=pending.actor,
                    action=pending.action,
                    decision=DENY,
                    reason=pending.reason,
                    **pending.target,
                )
                if getattr(self._local, "deferring", False):
                    setattr(exc, UNCOMMITTED, self.submit(record))
                else:
                    exc.receipt = self._write(record, None)
            raise
        finally:
            self._local.depth = depth

    @contextlib.contextmanager
    def _session(self, readonly: bool) -> Iterator[Session]:
        """A new session; for a read-only one inside a read-only transaction of this thread,
        one that joins it: a request that authenticates and then reads (Vault.reading_as)
        pays for one transaction, not one per step. Writers always get their own."""
        shared: Connection | None = getattr(self._local, "reading", None)
        if readonly and shared is not None:
            outer: Session | None = getattr(self._local, "reading_session", None)
            if outer is not None:
                yield outer
                return
            # Joins the connection's transaction: its commit or close leaves that alone.
            with Session(bind=shared, expire_on_commit=False) as joined:
                self._local.reading_session = joined
                try:
                    yield joined
                finally:
                    self._local.reading_session = None
            return
        with session_scope(self.engine, readonly=readonly) as session:
            if not readonly:
                yield session
                return
            self._local.reading = session.connection()
            self._local.reading_session = session
            try:
                yield session
            finally:
                self._local.reading = self._local.reading_session = None

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        """The read-only transaction already open in this thread, or a new one on a plain
        connection (shared with those opened inside it until it ends)."""
        shared: Connection | None = getattr(self._local, "reading", None)
        if shared is not None:
            yield shared
            return
        with read_scope(self.engine) as connection:
            self._local.reading = connection
            try:
                yield connection
            finally:
                self._local.reading = None

    @contextlib.contextmanager
    def lookup(self) -> Iterator[Connection]:
        """A read-only transaction without an ORM session, for the per-request lookups (the
        read-only transaction already open in this thread, if there is one)."""
        try:
            with self._connection() as connection:
                yield connection
        except OperationalError as exc:
            raise unavailable(exc) from None

    # --- recording ----------------------------------------------------------------------------

    def record_in(self, session: Session, *, policy: str | None = None, **fields: Any) -> int:
        """Write a ledger entry in ``session``'s transaction (it commits or rolls back with the
        action), stamped with the policy version in force (or ``policy``, for a change of
        policy that takes effect with this transaction); returns its sequence number."""
        return self._write(self.entry(policy, **fields), session)

    def record(self, **fields: Any) -> int:
        """Write a ledger entry for an access that changes nothing (reads, refusals) through
        group commit; returns once it is committed, so nothing reaches a caller unrecorded."""
        return self._write(self.entry(**fields), None)

    def _write(self, record: ledger.Record, session: Session | None) -> int:
        """The one place entries are written: in ``session``'s transaction, or (None) through
        group commit. Counted for metrics."""
        if session is not None:
            seq = ledger.append_many(session, [record], sink=self._sink)[0]
        else:
            self._end_snapshot()
            seq = self._appender.append(record)
        self._count_decision(record.decision)
        return seq

    def submit(self, record: ledger.Record) -> Future[int]:
        """Queue ``record`` for group commit without waiting (AuditedReads): the future gives
        its receipt. Whoever submits must not answer for the record before it is done."""
        self._end_snapshot()
        future = self._appender.submit(record)

        def count(done: Future[int]) -> None:
            if done.exception() is None:
                self._count_decision(record.decision)

        future.add_done_callback(count)
        return future

    def finish(self, pending: PendingRead[_T]) -> _T:
        """``pending``'s answer, once its entry is committed (waiting on this thread)."""
        return pending.answer(self._write(pending.record, None))

    @contextlib.contextmanager
    def deferring_refusals(self) -> Iterator[None]:
        """Refusals raised in this block, in this thread, are queued for group commit with
        the exception (its ``UNCOMMITTED`` attribute) instead of being waited for here: the
        caller waits for them elsewhere before answering (AuditedReads.settle)."""
        self._local.deferring = True
        try:
            yield
        finally:
            self._local.deferring = False

    def _end_snapshot(self) -> None:
        """End the read-only transaction this thread holds on a plain connection (Core.read),
        before waiting for a group commit; a statement after it begins a new one.

        A reader waiting for its entry inside its transaction would pin its snapshot of the
        database for the commit's whole wait, and on SQLite that is what keeps the
        write-ahead log from ever being started over under load (vault.db._WalKeeper: the
        checkpoint that empties it waits for such readers while holding writers back, and
        the group commit those readers wait for is one of those writers). The reads it served
        are done; the entry records them."""
        shared: Connection | None = getattr(self._local, "reading", None)
        if (
            shared is not None
            and getattr(self._local, "reading_session", None) is None  # not an ORM session's
            and shared.in_transaction()
        ):
            shared.commit()

    def record_decision(
        self, actor: Actor, action: str, decision: str, reason: str, **target: str
    ) -> int:
        """Write one entry on its own (refusals and failures); returns its sequence number."""
        return self.record(actor=actor, action=action, decision=decision, reason=reason, **target)

    def record_allowed(
        self,
        principal: Principal,
        action: str,
        package: PackageRef,
        *,
        session: Session | None = None,
        reason: str = "ok",
        **target: str,
    ) -> int:
        """Write the entry of an allowed action on a package, stamped with its handling code:
        inside ``session``'s transaction when the action changes state, else through group
        commit. Returns the receipt."""
        entry = self.allowed_entry(principal, action, package, reason=reason, **target)
        return self._write(entry, session)

    def allowed_entry(
        self,
        principal: Principal,
        action: str,
        package: PackageRef,
        *,
        reason: str = "ok",
        **target: str,
    ) -> ledger.Record:
        """The entry of an allowed action on a package (see :meth:`record_allowed`)."""
        fields: dict[str, Any] = {
            "actor": principal.actor,
            "action": action,
            "decision": ALLOW,
            "reason": reason,
            "package": package.id,
            "handling": package.handling.value,
            **target,
        }
        return self.entry(**fields)

    def entry(self, policy: str | None = None, **fields: Any) -> ledger.Record:
        """An entry (see :class:`~vault.ledger.log.Record`) stamped with ``policy``, by
        default the policy in force."""
        return ledger.Record(policy=policy or self._authz.policy_hash, **fields)

    def record_refusal(
        self, exc: VaultError, actor: Actor, action: str, reason: str, **target: str
    ) -> VaultError:
        """Write a ``deny`` entry for ``exc`` (after the current transaction, if any) and
        return ``exc`` to raise.

        Inside a transaction the entry can't be written yet: the action's own transaction is
        about to roll back, and on SQLite a second writer would wait on it. :meth:`tx` writes
        it once the rollback is done.
        """
        if getattr(self._local, "depth", 0):
            # Travels with the exception itself, so it can't be lost or reach another caller.
            setattr(exc, PENDING, _Refusal(actor, action, reason, target))
        else:
            exc.receipt = self.record_decision(actor, action, DENY, reason, **target)
        return exc

    def record_refused_request(
        self, principal: Principal, *, route: str, reason: str, package_id: str | None = None
    ) -> int:
        """Record a request of an authenticated caller that the API refused before any
        operation ran (a malformed body, query or path): every refusal is in the ledger.

        ``route`` is the server's own route template; a package id goes in only when it is
        well-formed, since whatever else was typed there must not enter an append-only log.
        """
        target = {"package": package_id} if package_id is not None and is_id(package_id) else {}
        return self.record_decision(
            principal.actor, "request", DENY, reason, subject=route, **target
        )

    def _count_decision(self, decision: str) -> None:
        """Count one ledger entry this process wrote (for metrics)."""
        with self._counts_lock:
            self._decisions[decision] = self._decisions.get(decision, 0) + 1

    def decision_counts(self) -> dict[str, int]:
        """Ledger entries this process wrote, by decision (for metrics)."""
        with self._counts_lock:
            return dict(self._decisions)

    # --- lookups shared by the services -------------------------------------------------------

    def country_of(self, session: Session, agency: str) -> str:
        """An agency's country; NotFound for an unknown agency. Cached: agencies never change
        country (nothing can change it)."""
        country = self._agency_country.get(agency)
        if country is None:
            found = session.exec(select(Agency.country_code).where(Agency.code == agency)).first()
            if found is None:  # foreign keys make this impossible short of tampering
                raise NotFound("unknown agency")
            country = self._agency_country[agency] = found
        return country

    def principal_for(self, session: Session, user: User) -> Principal:
        """The principal ``user`` is (without a session)."""
        return principal_of(user, self.country_of(session, user.agency_code))


class PackageRef(Protocol):
    """What an allowed action's entry names of its package: an ORM Package or a plain row."""

    @property
    def id(self) -> str: ...
    @property
    def handling(self) -> Handling: ...


def utc_seconds_until(moment: datetime, now: datetime) -> int:
    """Whole seconds from ``now`` until ``moment``, rounded up, at least 1 (a Retry-After)."""
    return max(1, int((moment - now).total_seconds() + 0.999))
