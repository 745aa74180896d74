"""Access facts: the one place decisions about packages are derived from, for enforcement,
``explain`` and listings alike, so they can't disagree."""

from __future__ import annotations

import math
import re
import time
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import (
    Connection,
    String,
    and_,
    bindparam,
    exists,
    false,
    literal_column,
    or_,
)
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from vault.authz import (
    NONE,
    ORIGINATOR,
    RELEASED_AGENCY,
    RELEASED_COUNTRY,
    SAME_COUNTRY,
    Authorizer,
    Facts,
)
from vault.errors import AccessDenied, NotFound, VaultError
from vault.listing import PackageFilter, no_index
from vault.models import (
    Acknowledgement,
    Agency,
    Classification,
    Handling,
    Package,
    Release,
    ReleaseStatus,
    User,
    UTCDateTime,
    utcnow,
)
from vault.prepared import Prepared
from vault.schemas import check_id
from vault.service._core import Core, Principal
from vault.service.listing_plan import (
    ListingPlan,
    candidates,
    package_estimate,
    probe,
    probe_params,
    switch_point,
    use_indexed,
)

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


_CODE = re.compile(r"[A-Z0-9_]{1,32}")
# How long a process goes on using its estimate of the vault's size (Access._vault_size).
SIZE_SECONDS = 10.0


def _inline(code: str) -> Any:
    """A classification or handling code as an SQL literal rather than a bind parameter: a
    list of bound values in IN is an "expanding" parameter, re-rendered into the SQL text on
    every execution (about a millisecond per listing); literals keep the compiled statement
    whole. Codes come from the enums (checked here), never from a request."""
    if not _CODE.fullmatch(code):
        raise ValueError(f"not a policy code: {code!r}")
    return literal_column(f"'{code}'")


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


class PackageRow(Protocol):
    """A package as the access checks load it: its columns as a plain row (no ORM object, so
    no identity map or attribute instrumentation per read), its originator's country and its
    creator's username. Read-only: changing a package goes through ``session.get``."""

    @property
    def id(self) -> str: ...
    @property
    def agency_code(self) -> str: ...
    @property
    def creator_id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def size(self) -> int: ...
    @property
    def file_count(self) -> int: ...
    @property
    def classification(self) -> Classification: ...
    @property
    def handling(self) -> Handling: ...
    @property
    def kek_id(self) -> str: ...
    @property
    def wrapped_key(self) -> bytes: ...
    @property
    def sealed_meta(self) -> bytes: ...
    @property
    def purged_at(self) -> datetime | None: ...
    @property
    def country_code(self) -> str: ...
    @property
    def creator(self) -> str | None: ...


# One query for everything a decision about one package needs: the package's columns, its
# originator's country, its creator's name (what a show displays: no second round trip),
# and whether a release to the caller's agency or country is in force and the caller
# acknowledged it (H3).
_PACKAGE_FACTS = Prepared(
    sa_select(
        *Package.__table__.columns,  # type: ignore[attr-defined]
        col(Agency.country_code),
        sa_select(col(User.username))
        .where(col(User.id) == col(Package.creator_id))
        .scalar_subquery()
        .label("creator"),
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


def package_facts(
    session: Session | Connection, principal: Principal, package_id: str, action: str
) -> tuple[PackageRow, Facts] | None:
    """The package (a plain row) and the facts a decision about ``principal`` doing ``action``
    to it rests on, from one query; None if there is no such package. The only place facts
    are derived: enforcement and ``explain`` both use it, so they can't disagree."""
    connection = session if isinstance(session, Connection) else session.connection()
    row = _PACKAGE_FACTS.first(
        connection,
        {
            "pid": package_id,
            "now": utcnow(),
            "agency": principal.agency,
            "country": principal.country,
            "uid": principal.user_id,
        },
    )
    if row is None:
        return None
    package = cast(PackageRow, row)
    relations = {NONE}
    if package.agency_code == principal.agency:
        relations.add(ORIGINATOR)
    elif package.country_code == principal.country:
        relations.add(SAME_COUNTRY)
    if row.to_agency:
        relations.add(RELEASED_AGENCY)
    if row.to_country:
        relations.add(RELEASED_COUNTRY)
    facts = Facts(
        role=principal.role.value,
        relations=frozenset(relations),
        cleared=principal.clearance.rank >= package.classification.rank,
        handling=package.handling.value,
        acknowledged=bool(row.acknowledged) and package.handling == Handling.H3,
        action=action,
    )
    return package, facts


def _paged(statement: Any) -> Any:
    """``statement`` newest first, one page of it (``offset`` and ``limit`` bound)."""
    return (
        statement.order_by(col(Package.created_at).desc(), col(Package.id))
        .offset(bindparam("offset"))
        .limit(bindparam("limit"))
    )


def listing_params(principal: Principal, *, limit: int, offset: int) -> dict[str, Any]:
    """Bind parameters of ``principal``'s listing statement."""
    return {
        "now": utcnow(),
        "agency": principal.agency,
        "country": principal.country,
        "limit": limit,
        "offset": offset,
    }


def _refusal_for(authz: Authorizer, facts: Facts, action: str) -> tuple[str, VaultError]:
    """Why ``facts`` don't allow ``action``: the ledger reason and the error to raise.

    A caller who may not even read (or, for auditors, audit) the package gets NotFound, as
    for a missing one; a caller who may see it gets AccessDenied saying why.
    """
    may_see = any(authz.allows(replace(facts, action=seen)) for seen in ("read", "audit"))
    if not may_see:
        return "not_found", NotFound("package not found")
    if (
        facts.handling == "H3"
        and not facts.acknowledged
        and authz.allows(replace(facts, acknowledged=True))
    ):
        return "h3_not_acknowledged", AccessDenied(
            "H3: acknowledge this package's handling restrictions before downloading "
            "(blovault package acknowledge ID)"
        )
    if action == "release" and facts.handling == "H2" and ORIGINATOR not in facts.relations:
        return "h2_onward_release", AccessDenied(
            "H2: no onward release without the originator's consent; ask the originating "
            "agency instead (blovault package request-release)"
        )
    if not facts.cleared:
        return "clearance_below_classification", AccessDenied(
            "your clearance is below this package's classification"
        )
    return "policy_denied", AccessDenied(f"you may not {action} this package")


class Access:
    """Enforcement on packages, the releases in force, and the listing SQL, over one core."""

    def __init__(self, core: Core) -> None:
        self.core = core
        # (when read, value) of the vault's estimated size, for the listing's plan switch.
        self._size: tuple[float, int | None] = (-math.inf, None)

    def load_package_for(
        self,
        session: Session | Connection,
        principal: Principal,
        package_id: str,
        action: str,
        *,
        record_as: str | None = None,
        hidden_target: dict[str, str] | None = None,
    ) -> tuple[PackageRow, Facts]:
        """The package and its facts if ``action`` is allowed; otherwise a refusal, recorded
        under ``record_as`` (default: ``action``) and raised: NotFound for a caller who may not
        even read (or, for auditors, audit) the package, as for a missing one; AccessDenied
        saying why for a caller who may see it but not do ``action``.

        A NotFound is recorded exactly as a missing id is, naming ``hidden_target`` (default:
        the package id): a caller who reached the package through a release id must get the
        entry of a missing release, which names no package."""
        check_id(package_id, "package id")
        recorded = record_as or action
        hidden = hidden_target if hidden_target is not None else {"package": package_id}
        found = package_facts(session, principal, package_id, action)
        if found is None or found[0].purged_at is not None:
            raise self.core.record_refusal(
                NotFound("package not found"), principal.actor, recorded, "not_found", **hidden
            )
        package, facts = found
        authz = self.core.authz
        if authz.allows(facts):
            return package, facts
        reason, exc = _refusal_for(authz, facts, action)
        if isinstance(exc, NotFound):
            # Recorded as for a missing id: the entry concerns the caller's country, whose
            # auditor would otherwise learn from a finer reason or a handling code that the
            # id is a package. The originator's auditor, who knows its packages, loses nothing.
            raise self.core.record_refusal(exc, principal.actor, recorded, reason, **hidden)
        raise self.core.record_refusal(
            exc,
            principal.actor,
            recorded,
            reason,
            package=package_id,
            handling=package.handling.value,
        )

    def grants_in_force(
        self, session: Session, principal: Principal, package_id: str
    ) -> list[tuple[str, str | None, datetime | None]]:
        """Releases of the package in force for the caller: ``(release id, agency or None,
        end or None)``."""
        rows = session.exec(
            select(Release.id, Release.agency_code, Release.expires_at).where(
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
        return [(rid, agency, ends) for rid, agency, ends in rows]

    def listing_statement(self, principal: Principal) -> Any:
        """The listing query for ``principal``'s role and clearance under the current policy
        that walks the packages newest first (the *scan* plan of :meth:`listing_plan`)."""
        return self.listing_plan(principal).scan

    def listing_plan(self, principal: Principal) -> ListingPlan:
        """The listing queries for ``principal``'s role and clearance under the current policy,
        with the caller's agency and country, the time and the page as bind parameters
        (:func:`listing_params`), and the probe that picks one (see
        :mod:`vault.service.listing_plan`). Built once per (role, clearance, policy): building
        them took longer than running them."""
        listings = self.core.listings
        key = (principal.role.value, principal.clearance.value, self.core.authz.policy_hash)
        plan = listings.get(key)
        if plan is None:
            readable, relations = self._readable(principal)
            page = (
                sa_select(*_SUMMARY_COLUMNS)
                .join(Agency, col(Agency.code) == col(Package.agency_code))
                .where(col(Package.purged_at).is_(None), readable)
            )
            found = candidates(relations)
            plan = ListingPlan(
                scan=_paged(page),
                indexed=None if found is None else _paged(page.where(col(Package.id).in_(found))),
                probe=None if found is None else probe(found),
            )
            if len(listings) >= 256:  # old policy versions: start afresh
                listings.clear()
            listings[key] = plan
        return plan

    def listing_query(
        self,
        connection: Connection,
        principal: Principal,
        *,
        limit: int,
        offset: int,
        filters: PackageFilter | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """The statement and parameters of one page of ``principal``'s listing, the plan
        chosen by probing the candidates on ``connection`` (in the caller's transaction)."""
        plan = self.listing_plan(principal)
        params = listing_params(principal, limit=limit, offset=offset)
        indexed = False
        if plan.probe is not None:
            switch = switch_point(self._vault_size(connection), limit + offset)
            counted = Prepared.of(plan.probe).scalar(connection, params | probe_params(switch))
            indexed = use_indexed(counted, switch)
        statement, narrowing = plan.page(indexed, filters)
        return statement, params | narrowing

    def _vault_size(self, connection: Connection) -> int | None:
        """About how many packages the vault holds, read at most every SIZE_SECONDS: it only
        moves the listing's plan switch, and both plans list the same packages."""
        read_at, size = self._size
        now = time.monotonic()
        if now - read_at >= SIZE_SECONDS:
            size = package_estimate(connection)
            self._size = (now, size)
        return size

    def listing_page(
        self,
        connection: Connection,
        principal: Principal,
        *,
        limit: int,
        offset: int,
        filters: PackageFilter | None = None,
    ) -> list[Any]:
        """The rows of one page of ``principal``'s listing (:meth:`listing_query`, run on the
        driver's cursor), in the caller's transaction on ``connection``."""
        statement, params = self.listing_query(
            connection, principal, limit=limit, offset=offset, filters=filters
        )
        return Prepared.of(statement).all(connection, params)

    def readable_clause(self, principal: Principal) -> Any:
        """SQL for "the caller may read this package", derived from the policy's classes.

        Depends on the caller's role and clearance only; their agency and country are the bind
        parameters ``agency`` and ``country``, the time ``now``.
        """
        return self._readable(principal)[0]

    def _readable(self, principal: Principal) -> tuple[Any, frozenset[str]]:
        """:meth:`readable_clause`, and the relations it lets the caller read through."""
        cleared = frozenset(c.value for c in Classification if c.rank <= principal.clearance.rank)
        classes = self.core.authz.readable_classes(
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
                    and_(
                        no_index(col(Package.classification)) == _inline(cls),
                        col(Package.handling).in_([_inline(h) for h in hnds]),
                    )
                    for cls, hnds in by_class.items()
                )
            )
            rel = relation_sql[relation]
            clauses.append(class_sql if rel is None else and_(rel, class_sql))
        return (or_(*clauses) if clauses else false()), frozenset(classes)
