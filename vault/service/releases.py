"""Releases: releasing a package to a country or agency (timed, four-eyes), onward-release
requests (H2), decisions, revocation, and acknowledging H3 restrictions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from vault.authz import ORIGINATOR, Facts
from vault.errors import AccessDenied, Conflict, InvalidInput, NotFound
from vault.models import (
    Acknowledgement,
    Agency,
    Classification,
    Country,
    Handling,
    Package,
    Release,
    ReleaseKind,
    ReleaseStatus,
    utcnow,
)
from vault.schemas import ReleaseInfo, ReleaseResult, check_agency, check_country, check_id
from vault.service._core import ALLOW, Core, Principal, new_id
from vault.service.access import Access, PackageRow
from vault.service.refusals import records_refusals


class ReleaseRow(Protocol):
    """What a release's details show: a Release, or a row of its columns."""

    @property
    def id(self) -> str: ...
    @property
    def package_id(self) -> str: ...
    @property
    def country_code(self) -> str: ...
    @property
    def agency_code(self) -> str | None: ...
    @property
    def status(self) -> ReleaseStatus: ...
    @property
    def kind(self) -> ReleaseKind: ...
    @property
    def not_before(self) -> datetime | None: ...
    @property
    def expires_at(self) -> datetime | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def requested_by(self) -> str: ...
    @property
    def decided_by(self) -> str | None: ...


def release_info(r: ReleaseRow) -> ReleaseInfo:
    """What callers see of a release, with whether it grants access now."""
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


# How far a release's times may lie from today. Beyond them is a typing slip, not a plan (no
# expiry is written as none), and at the calendar's edges a time can't even be converted to
# another zone: 9999-12-31 in Tashkent overflowed every page that showed it.
EARLIEST_RELEASE_TIME = datetime(2000, 1, 1, tzinfo=UTC)
RELEASE_HORIZON = timedelta(days=3653)  # ten years


def _check_window(not_before: datetime | None, expires_at: datetime | None) -> None:
    latest = utcnow() + RELEASE_HORIZON
    for moment in (not_before, expires_at):
        if moment is not None and moment.tzinfo is None:
            raise InvalidInput("release times must carry a time zone")
        if moment is not None and not EARLIEST_RELEASE_TIME <= moment <= latest:
            raise InvalidInput("release times must lie between 2000 and ten years from now")
    if not_before and expires_at and expires_at <= not_before:
        raise InvalidInput("a release must expire after it starts")
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput("that release would already have expired")


def _check_target(session: Session, country: str, agency: str | None) -> tuple[str, str | None]:
    country = check_country(country)
    if session.get(Country, country) is None:
        raise InvalidInput(f"unknown country {country}")
    if agency is not None:
        agency = check_agency(agency)
        agency_row = session.get(Agency, agency)
        if agency_row is None or agency_row.country_code != country:
            raise InvalidInput(f"agency {agency} is not an agency of {country}")
    return country, agency


def _acknowledged_now(session: Session, package: PackageRow, principal: Principal) -> bool:
    """Store ``principal``'s acknowledgement of ``package``; False if one is there already.

    An insert that ignores a duplicate, not a check then an insert: two acknowledgements of
    one user at once (a double click) both saw none on PostgreSQL, and the second insert
    failed on the primary key, a server error left out of the ledger."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    values = {"package_id": package.id, "user_id": principal.user_id, "created_at": utcnow()}
    statement = (
        insert(Acknowledgement)
        .values(**values)
        .on_conflict_do_nothing()
        # A row back only if inserted (the drivers' rowcount is -1 here on PostgreSQL).
        .returning(col(Acknowledgement.user_id))
    )
    return session.connection().execute(statement).first() is not None


def _revoked(session: Session, release: Release, principal: Principal) -> None:
    release.status = ReleaseStatus.REVOKED
    release.revoked_by = principal.user_id
    release.revoked_at = utcnow()
    session.add(release)
    session.flush()


class ReleaseService:
    """Release, request, decide, revoke; acknowledge H3 restrictions."""

    def __init__(self, core: Core, access: Access) -> None:
        self.core = core
        self.access = access

    def _needs_second_person(self, session: Session, package: PackageRow, country: str) -> bool:
        """Four-eyes: a sensitive package going to another country than its originator's."""
        threshold = Classification(self.core.settings.four_eyes_from)
        origin_country = self.core.country_of(session, package.agency_code)
        return package.classification.rank >= threshold.rank and country != origin_country

    def _onward(
        self,
        session: Session,
        principal: Principal,
        package: PackageRow,
        country: str,
        agency: str | None,
        expires_at: datetime | None,
    ) -> tuple[str | None, datetime | None]:
        """A recipient's onward release: the release it derives from (the caller's grant that
        lasts longest) and its end, no later than that grant's. Refused (and recorded) if it
        would reach the caller's own agency: a recipient who could release to itself would
        keep reading after the originator revoked its release or the release ran out."""
        if country == principal.country and agency in (None, principal.agency):
            raise self.core.record_refusal(
                AccessDenied("an onward release can't include your own agency"),
                principal.actor,
                "release",
                "onward_to_self",
                package=package.id,
                handling=package.handling.value,
            )
        grants = self.access.grants_in_force(session, principal, package.id)
        if not grants:  # allowed by an admin's rule, not through a release: none to derive from
            return None, expires_at
        parent, _, parent_ends = max(grants, key=lambda g: g[2] or datetime.max.replace(tzinfo=UTC))
        # Locked, and read again, until this release commits: a revocation of the parent
        # committing meanwhile (PostgreSQL, READ COMMITTED) would miss this one in its cascade.
        held = session.get(Release, parent, with_for_update=True, populate_existing=True)
        if held is None or held.status != ReleaseStatus.ACTIVE:
            raise Conflict("the release you hold was revoked meanwhile")
        if parent_ends is None:
            return parent, expires_at
        if expires_at is None:
            return parent, parent_ends  # passed on for as long as the caller holds it
        if expires_at > parent_ends:
            raise InvalidInput(
                "an onward release can't outlast the release it comes from, which ends "
                f"at {parent_ends.isoformat()}"
            )
        return parent, expires_at

    @records_refusals("release")
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
        _check_window(not_before, expires_at)
        with self.core.tx() as session:
            package, facts = self.access.load_package_for(session, principal, package_id, "release")
            country, agency = _check_target(session, country, agency)
            parent = None
            if ORIGINATOR not in facts.relations:
                parent, expires_at = self._onward(
                    session, principal, package, country, agency, expires_at
                )
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
                derived_from=parent,
            )
            receipt = self._store_release(session, principal, package, release, "release")
        return ReleaseResult(release=release_info(release), receipt=receipt)

    @records_refusals("request-release")
    def request_release(
        self, principal: Principal, package_id: str, *, country: str, agency: str | None = None
    ) -> ReleaseResult:
        """Recipient asks the originating agency to release further (H2); pending until decided."""
        with self.core.tx() as session:
            package, _ = self.access.load_package_for(
                session, principal, package_id, "request-release"
            )
            country, agency = _check_target(session, country, agency)
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
        return ReleaseResult(release=release_info(release), receipt=receipt)

    def _store_release(
        self,
        session: Session,
        principal: Principal,
        package: PackageRow,
        release: Release,
        action: str,
    ) -> int:
        """Add ``release`` in ``session``'s transaction and record it there; the receipt."""
        session.add(release)
        session.flush()
        target = f"country:{release.country_code}" + (
            f" agency:{release.agency_code}" if release.agency_code else ""
        )
        return self.core.record_in(
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
    ) -> tuple[Release, PackageRow]:
        """The release and its package if ``action`` on the package is allowed; otherwise a
        recorded refusal, worded for a release."""
        check_id(release_id, "release id")
        # Locked until the decision or revocation commits: two of them at once on PostgreSQL
        # (READ COMMITTED) could otherwise both see "pending", and an approval committed after
        # a revocation would put the release back in force. SQLite's writers are serial anyway.
        release = session.get(Release, release_id, with_for_update=True)
        if release is None or (package_id is not None and release.package_id != package_id):
            raise self.core.record_refusal(
                NotFound("release not found"),
                principal.actor,
                action,
                "not_found",
                release=release_id,
            )
        try:
            package, _ = self.access.load_package_for(
                session,
                principal,
                release.package_id,
                action,
                hidden_target={"release": release_id},
            )
        except NotFound as exc:
            # The same exception (its refusal is recorded on the way out), worded for a
            # release so the answer matches a missing release id exactly.
            exc.message = "release not found"
            exc.args = (exc.message,)
            raise
        return release, package

    @records_refusals("approve")
    def decide_release(
        self, principal: Principal, release_id: str, *, approve: bool
    ) -> ReleaseResult:
        """A supervisor of the originating agency approves or rejects a pending release.

        Four-eyes: the person who asked for the release can never be the one who approves it.
        """
        action = "approve"
        with self.core.tx() as session:
            release, package = self._load_release_for(session, principal, release_id, action)
            if release.status != ReleaseStatus.PENDING:
                raise Conflict(f"release is {release.status.value}, not pending")
            if release.requested_by == principal.user_id:
                raise self.core.record_refusal(
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
            receipt = self.core.record_allowed(
                principal,
                action,
                package,
                session=session,
                reason="approved" if approve else "rejected",
                release=release.id,
            )
        return ReleaseResult(release=release_info(release), receipt=receipt)

    @records_refusals("revoke")
    def revoke_release(
        self, principal: Principal, package_id: str, release_id: str
    ) -> ReleaseResult:
        """Withdraw a release; it stops granting access on the very next request."""
        with self.core.tx() as session:
            release, package = self._load_release_for(
                session,
                principal,
                release_id,
                "revoke",
                package_id=check_id(package_id, "package id"),
            )
            if release.status in (ReleaseStatus.REVOKED, ReleaseStatus.REJECTED):
                raise Conflict(f"release is already {release.status.value}")
            _revoked(session, release, principal)
            receipt = self.core.record_allowed(
                principal, "revoke", package, session=session, release=release.id
            )
            self._revoke_derived(session, principal, package, release.id)
        return ReleaseResult(release=release_info(release), receipt=receipt)

    def _revoke_derived(
        self, session: Session, principal: Principal, package: PackageRow, release_id: str
    ) -> None:
        """Revoke, in the same transaction, every onward release passed on from ``release_id``
        and from those in turn, each with its own entry (reason ``derived``)."""
        parents = [release_id]
        while parents:
            derived = session.exec(
                select(Release)
                .where(
                    col(Release.derived_from).in_(parents),
                    col(Release.status).in_([ReleaseStatus.ACTIVE, ReleaseStatus.PENDING]),
                )
                .with_for_update()
            ).all()
            for release in derived:
                _revoked(session, release, principal)
                self.core.record_allowed(
                    principal,
                    "revoke",
                    package,
                    session=session,
                    reason="derived",
                    release=release.id,
                )
            parents = [release.id for release in derived]

    @records_refusals("acknowledge")
    def acknowledge(self, principal: Principal, package_id: str) -> int:
        """Record that the caller accepts an H3 package's stated restrictions."""
        with self.core.tx() as session:
            package, facts = self.access.load_package_for(
                session, principal, package_id, "acknowledge"
            )
            if package.handling != Handling.H3:
                raise InvalidInput("only H3 packages carry restrictions to acknowledge")
            added = not facts.acknowledged and _acknowledged_now(session, package, principal)
            return self.core.record_allowed(
                principal,
                "acknowledge",
                package,
                session=session,
                reason="ok" if added else "already",
            )

    @records_refusals("list")
    def pending_releases(self, principal: Principal) -> tuple[list[ReleaseInfo], int]:
        """The pending releases of the caller's agency's packages that the policy lets them
        decide (a supervisor's inbox), oldest first, and the ledger receipt of the look."""
        self.core.require_global(principal, "list")
        with self.core.tx(readonly=True) as session:
            found = session.exec(
                select(Release, Package)
                .join(Package, col(Package.id) == col(Release.package_id))
                .where(
                    col(Release.status) == ReleaseStatus.PENDING,
                    col(Package.agency_code) == principal.agency,
                    col(Package.purged_at).is_(None),
                )
                .order_by(col(Release.created_at))
            ).all()
            mine = [
                release_info(release)
                for release, package in found
                if self.core.authz.allows(
                    Facts(
                        role=principal.role.value,
                        relations=frozenset({ORIGINATOR}),
                        cleared=principal.clearance.rank >= package.classification.rank,
                        handling=package.handling.value,
                        acknowledged=False,
                        action="approve",
                    )
                )
            ]
        receipt = self.core.record_decision(
            principal.actor, "list", ALLOW, "ok", subject=f"pending:{len(mine)}"
        )
        return mine, receipt
