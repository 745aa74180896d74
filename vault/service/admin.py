"""Administration: countries, agencies, users, the admin rules of the policy, KEK rotation,
purge (crypto-shredding) and garbage collection of stray objects. Administrators manage;
they never read content."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, text
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlmodel import col, select

from vault import crypto
from vault.authz import SEPARATION_OF_DUTIES, Authorizer, Facts, parse_rule, rule_line
from vault.db import empty_wal, is_postgres
from vault.errors import AccessDenied, Conflict, InvalidInput, NotFound, StorageUnavailable
from vault.models import (
    Agency,
    Classification,
    Country,
    Package,
    PackageFile,
    PackageRecords,
    PolicyRule,
    Role,
    User,
    utcnow,
)
from vault.schemas import (
    UserInfo,
    check_agency,
    check_country,
    check_id,
    check_text,
    check_username,
)
from vault.service._core import ALLOW, Core, Principal, load_rules, new_id
from vault.service.refusals import records_refusals
from vault.service.sealed import file_identity, package_identity
from vault.service.sessions import Sessions

# Who a user's sessions end for, by the change made to them (the first that applies).
_SESSION_ENDINGS = (
    ("disabled", "user_disabled"),
    ("role=", "role_changed"),
    ("clearance=", "clearance_changed"),
)

log = logging.getLogger("vault.service")

# How long purge, KEK rotation and gc wait for readers of older snapshots to finish before
# the write-ahead log they hold can be emptied; a long export may hold it longer.
COMPACT_WAIT_MS = 10_000


# How long gc spares an object no package refers to (see AdminService.gc): a stray costs only
# disk, and an upload's first file is one until the upload commits.
GC_GRACE = timedelta(hours=24)


# The tables whose rows held destroyed keys and openings (see _compact_database).
_COMPACTED = ("package", "packagefile", "ledgerentry")

# What require_global asks of an administrator's "manage".
_ADMIN_MANAGES = Facts.global_action("admin", "manage")


def _admins_may_manage(core: Core, rule: tuple[str, ...], *, add: bool) -> bool:
    """Whether admins may still manage once ``rule`` is added (or removed)."""
    rules = set(core.authz.extra_rules)
    rules = rules | {rule} if add else rules - {rule}
    trial = Authorizer(
        policy_dir=core.settings.resolved_policy_dir, extra_rules=tuple(sorted(rules))
    )
    return trial.allows(_ADMIN_MANAGES)


@dataclass(frozen=True)
class Purged:
    """What a purge did: its ledger receipt, and whether SQLite's write-ahead log could be
    emptied afterwards (always True on PostgreSQL). While it could not, old copies of the
    destroyed keys stay in the log until the next checkpoint that completes."""

    receipt: int
    log_emptied: bool


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 200:
        raise InvalidInput("names are 1-200 characters")
    return check_text(name.strip(), "name")


class AdminService:
    """Countries, agencies, users, rules, KEK rotation, purge and gc."""

    def __init__(self, core: Core, sessions: Sessions) -> None:
        self.core = core
        self.sessions = sessions

    @records_refusals("manage")
    def add_country(self, principal: Principal, code: str, name: str) -> int:
        """Create a country; returns the ledger receipt."""
        code = check_country(code)
        name = _check_name(name)
        self.core.require_global(principal, "manage", subject=f"country:{code}")
        return self._create(principal, Country(code=code, name=name), subject=f"country:{code}")

    @records_refusals("manage")
    def add_agency(self, principal: Principal, code: str, country: str, name: str) -> int:
        """Create an agency of an existing country; returns the ledger receipt."""
        code, country, name = check_agency(code), check_country(country), _check_name(name)
        self.core.require_global(principal, "manage", subject=f"agency:{code}")
        with self.core.tx() as session:
            if session.get(Country, country) is None:
                raise InvalidInput(f"unknown country {country}")
        return self._create(
            principal, Agency(code=code, country_code=country, name=name), subject=f"agency:{code}"
        )

    @records_refusals("manage")
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
        self.core.require_global(principal, "manage", subject=f"user:{username}")
        password_hash = self.core.passwords.hash(password)
        with self.core.tx() as session:
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

    @records_refusals("manage")
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
        self.core.require_global(principal, "manage", subject=f"user:{username}")
        changes = []
        with self.core.tx() as session:
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
            self.core.record_in(
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
                    for prefix, reason in _SESSION_ENDINGS
                    if any(change.startswith(prefix) for change in changes)
                ),
                None,
            )
            if ending is not None:
                self.sessions.end_all(session, principal.actor, user, ending, utcnow())
            info = self.core.principal_for(session, user)
        return UserInfo(
            id=user.id,
            username=username,
            agency=info.agency,
            country=info.country,
            role=user.role,
            clearance=user.clearance,
            disabled=user.disabled,
        )

    @records_refusals("manage")
    def rules(self, principal: Principal) -> list[str]:
        """Rules admins added on top of the policy file (the look recorded, like any read)."""
        self.core.require_global(principal, "manage", subject="rules")
        lines = [rule_line(r) for r in self.core.authz.extra_rules]
        self.core.record_decision(principal.actor, "manage", ALLOW, "ok", subject="rules")
        return lines

    @records_refusals("manage")
    def change_rule(self, principal: Principal, line: str, *, add: bool) -> str:
        """Add or remove an admin rule; the ledger entry carries the resulting policy hash."""
        core = self.core
        rule = parse_rule(line)
        canonical = rule_line(rule)  # stored exactly so parse_rule reads it back
        core.require_global(principal, "manage", subject=f"rule:{canonical}")
        if add and core.authz.gives_content_to_no_content_role(rule):
            # Whoever asks: separation of duties is not a setting an admin can undo.
            raise core.record_refusal(
                AccessDenied(SEPARATION_OF_DUTIES),
                principal.actor,
                "manage",
                "separation_of_duties",
                subject=f"rule:{canonical}",
            )
        if not _admins_may_manage(core, rule, add=add):
            # Every admin command, removing this rule included, would be refused from then on.
            raise core.record_refusal(
                AccessDenied("that change would leave no administrator able to manage the vault"),
                principal.actor,
                "manage",
                "locks_out_admins",
                subject=f"rule:{canonical}",
            )
        with core.tx() as session:
            current = set(load_rules(session))
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
                policy_dir=core.settings.resolved_policy_dir, extra_rules=tuple(sorted(current))
            )
            # Stamped with the policy it makes, which is in force once this commits.
            core.record_in(
                session,
                actor=principal.actor,
                action="manage",
                decision=ALLOW,
                reason="rule added" if add else "rule removed",
                subject=f"rule:{canonical}",
                policy=authz.policy_hash,
            )
        core.install_policy(authz)
        return authz.policy_hash

    @records_refusals("manage")
    def rotate_kek(self, principal: Principal, *, batch: int = 500) -> int:
        """Re-wrap every data key not under the current KEK (content is not re-encrypted),
        and re-seal the ledger openings sealed under an old KEK's derived key.

        Afterwards the old KEKs are no longer needed. Returns how many keys were re-wrapped
        plus how many openings were re-sealed.
        """
        self.core.require_global(principal, "manage", subject="kek")
        current = self.core.keys.keyring.current.id
        done = 0
        # Until a batch finds none: a short batch is not the end, as rows a purge emptied
        # while the batch waited for their lock drop out of it.
        for table in (Package, PackageFile):
            while rewrapped := self._rewrap_batch(table, current, batch):
                done += rewrapped
        # Ledger openings too: sealed under a key derived from the KEK, so re-sealed (small).
        while True:
            with self.core.tx() as session:
                rewrapped = self.core.openings.rewrap(session, current, batch)
            if not rewrapped:
                break
            done += rewrapped
        with self.core.tx() as session:
            self.core.record_in(
                session,
                actor=principal.actor,
                action="manage",
                decision=ALLOW,
                reason="kek rotated",
                subject=f"kek:{current} rewrapped:{done}",
            )
        self._compact_database()
        return done

    def _rewrap_batch(self, table: type[Package | PackageFile], current: str, batch: int) -> int:
        """Re-wrap up to ``batch`` keys of ``table`` not under KEK ``current``, in one
        transaction; returns how many.

        The rows are locked as they are read (PostgreSQL; SQLite's writer holds the whole
        database): a purge committing between the read and the write would otherwise have
        its destroyed key written back, re-wrapped, and the ciphertext readable again. A
        purge in progress is waited for, and its emptied rows no longer match."""
        keyring = self.core.keys.keyring
        with self.core.tx() as session:
            rows: Sequence[Package | PackageFile] = session.exec(  # type: ignore[assignment]
                select(table)
                .where(col(table.kek_id) != current)
                .where(func.length(col(table.wrapped_key)) > 0)
                .limit(batch)
                .with_for_update()
            ).all()
            for row in rows:
                if isinstance(row, Package):
                    context = package_identity(row.id)
                else:
                    context = file_identity(row.package_id, row.id)
                fresh = keyring.rewrap(
                    crypto.WrappedKey(row.kek_id, row.wrapped_key), context=context
                )
                row.kek_id, row.wrapped_key = fresh.kek_id, fresh.blob
                session.add(row)
            return len(rows)

    @records_refusals("purge")
    def purge(self, principal: Principal, package_id: str) -> Purged:
        """Crypto-shred a package: destroy its wrapped keys, then delete its objects.

        Once the keys are gone, even a copy of the ciphertext together with the KEK can't be
        opened. The row stays as a tombstone (ids only) so ledger entries keep their meaning.
        """
        check_id(package_id, "package id")
        self.core.require_global(principal, "manage", package=package_id)
        with self.core.tx() as session:
            package = session.get(Package, package_id)
            if package is None or package.purged_at is not None:
                raise NotFound("package not found")
            files = session.exec(
                select(PackageFile).where(PackageFile.package_id == package_id)
            ).all()
            package.wrapped_key = b""
            package.sealed_meta = b""
            package.purged_at = utcnow()
            # What the ledger's entries about it said goes with the keys; the entries stay,
            # so the log still verifies (README "What the log reveals").
            self.core.openings.destroy_package(session, package_id)
            session.add(package)
            for row in files:
                row.wrapped_key = b""
                row.sealed_meta = b""
                session.add(row)
            # Unreadable without the package key already; deleted so no ciphertext lingers.
            session.execute(
                delete(PackageRecords).where(col(PackageRecords.package_id) == package_id)
            )
            receipt = self.core.record_allowed(principal, "purge", package, session=session)
        # Its keys are gone: so goes its opened title. (A listing that read the row before
        # the commit may still remember it, under the destroyed bytes' digest: never found
        # again, and dropped within vault.service.titles.TTL_SECONDS, as in other processes.)
        self.core.titles.forget(package_id)
        for row in files:
            with contextlib.suppress(StorageUnavailable):
                self.core.store.delete(row.id)  # leftovers are unreadable; `admin gc` retries
        return Purged(receipt=receipt, log_emptied=self._compact_database())

    @records_refusals("gc")
    def gc(self, principal: Principal, *, grace: timedelta = GC_GRACE) -> tuple[int, int, int]:
        """Delete stray objects: those no live package file refers to, older than ``grace``.

        Strays come from uploads cut off between storing objects and committing the package,
        from processes killed mid-write, and from purges whose deletes failed. ``grace``
        spares uploads still in flight: an upload's rows are committed only once its last
        file is stored, so its first file is a stray to gc until then. A day by default, as
        a stray costs only disk; an upload that lost a file to gc fails at its commit
        (PackageService._check_still_stored). Returns (objects removed, temp files removed,
        receipt).
        """
        core = self.core
        core.require_global(principal, "manage", subject="gc")
        cutoff = utcnow() - grace
        removed = 0
        batch: list[str] = []
        for key in core.store.keys():  # noqa: SIM118 - a store, not a dict
            batch.append(key)
            if len(batch) >= 500:
                removed += self._delete_strays(batch, cutoff)
                batch.clear()
        if batch:
            removed += self._delete_strays(batch, cutoff)
        temp = core.store.sweep_incomplete(cutoff)
        expired = self.expire_openings()
        with core.tx() as session:
            expired += core.openings.destroy_purged(session)
        # Also a later chance for a purge's or rotation's log that a reader held.
        self._compact_database()
        subject = f"objects:{removed} temp:{temp}" + (f" openings:{expired}" if expired else "")
        receipt = core.record_decision(principal.actor, "gc", ALLOW, "ok", subject=subject)
        return removed, temp, receipt

    def expire_openings(self, *, now: datetime | None = None) -> int:
        """Destroy the ledger openings older than VAULT_LEDGER_OPENING_RETENTION_DAYS (none
        when unset); how many. Run by ``gc``, which then empties SQLite's log of them."""
        days = self.core.settings.ledger_opening_retention_days
        if days is None:
            return 0
        cutoff = (now or utcnow()) - timedelta(days=days)
        with self.core.tx() as session:
            count = self.core.openings.destroy_before(session, cutoff)
        return count

    def _delete_strays(self, batch: list[str], cutoff: datetime) -> int:
        """Delete the objects of ``batch`` no live package file refers to, last modified
        before ``cutoff``; returns how many."""
        with self.core.tx(readonly=True) as session:
            live = set(
                session.exec(
                    select(PackageFile.id)
                    .join(Package, col(Package.id) == col(PackageFile.package_id))
                    .where(col(PackageFile.id).in_(batch), col(Package.purged_at).is_(None))
                ).all()
            )
        count = 0
        store = self.core.store
        for key in batch:
            if key not in live:
                with contextlib.suppress(NotFound):
                    if store.modified(key) < cutoff:
                        store.delete(key)
                        count += 1
        return count

    def _compact_database(self) -> bool:
        """Push destroyed key material out of the WAL (SQLite) or dead tuples (PostgreSQL);
        False if a reader still held SQLite's log after COMPACT_WAIT_MS, or if this
        PostgreSQL role does not own the tables and so can't VACUUM them (logged)."""
        engine = self.core.engine
        if is_postgres(engine):
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                # PostgreSQL skips a VACUUM of another role's table with only a notice: the
                # service's own role (as `docker compose exec api blovault admin ...` runs)
                # owns none, and purge said all was well while nothing ran.
                owned = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() "
                        "AND tablename = ANY(:tables) "
                        "AND pg_has_role(current_user, tableowner, 'USAGE')"
                    ),
                    {"tables": list(_COMPACTED)},
                ).scalar_one()
                if owned != len(_COMPACTED):
                    log.warning(
                        "VACUUM skipped: this database role does not own the vault's tables; "
                        "run 'blovault admin gc' as the owner role"
                    )
                    return False
                for table in _COMPACTED:
                    conn.exec_driver_sql(f"VACUUM {table}")
            return True
        raw = engine.raw_connection()
        try:  # outside any transaction: pysqlite runs in autocommit mode here (see vault.db)
            emptied = empty_wal(raw, wait_ms=COMPACT_WAIT_MS)
        finally:
            raw.close()
        if not emptied:
            log.warning(
                "the write-ahead log could not be emptied: a reader held it for %d ms; "
                "'blovault admin gc' tries again",
                COMPACT_WAIT_MS,
            )
        return emptied

    def _create(self, principal: Principal, row: Any, *, subject: str) -> int:
        try:
            with self.core.tx() as session:
                session.add(row)
                session.flush()
                return self.core.record_in(
                    session,
                    actor=principal.actor,
                    action="manage",
                    decision=ALLOW,
                    reason="created",
                    subject=subject,
                )
        except DBIntegrityError:
            raise Conflict(f"{subject} already exists") from None
