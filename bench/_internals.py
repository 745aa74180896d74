"""The service-layer pieces the authorization benchmark times one by one.

The benchmark replays the service's listing and decision paths step by step, against the same
database, to show where the time goes. It uses the domain services' public members (the
``Vault`` facade exposes them as ``vault.core``, ``vault.access``, ``vault.packages``) through
the functions here, each saying what it stands for, so a benchmark reads as the steps it times.
Nothing in ``bench/`` touches a ``_private`` member of ``vault``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlmodel import Session

from vault.authz import Authorizer, Facts
from vault.listing import PackageFilter
from vault.models import Package
from vault.prepared import Prepared
from vault.schemas import PackageSummary
from vault.service import Principal, Vault
from vault.service import access as _access
from vault.service import sealed as _sealed


@contextlib.contextmanager
def transaction(vault: Vault, *, readonly: bool = False) -> Iterator[Session]:
    """One service transaction as every operation opens it (policy refresh, connection,
    BEGIN [IMMEDIATE] ... COMMIT, refusal recording)."""
    with vault.core.tx(readonly=readonly) as session:
        yield session


def record_read(vault: Vault, **fields: Any) -> int:
    """Record an access that changes nothing, through the group commit, as reads do; returns
    the entry's sequence number once committed."""
    return vault.core.record(**fields)


def require_global(vault: Vault, principal: Principal, action: str) -> None:
    """Authorise an action that concerns no package (list, upload, ...); AccessDenied if the
    role may not."""
    vault.core.require_global(principal, action)


def listing_statement(vault: Vault, principal: Principal) -> Any:
    """The prebuilt SQL of ``Vault.list_packages`` for the caller's role and clearance; bind
    it with :func:`listing_params`."""
    return vault.access.listing_statement(principal)


def listing_params(principal: Principal, *, limit: int, offset: int) -> dict[str, Any]:
    """The bind parameters of :func:`listing_statement`."""
    return _access.listing_params(principal, limit=limit, offset=offset)


def listing_query(
    vault: Vault, connection: Any, principal: Principal, *, limit: int, offset: int
) -> tuple[Any, dict[str, Any]]:
    """The statement and bind parameters ``Vault.list_packages`` runs for one page: the
    caller's plan chosen by the service's probe, run on ``connection``."""
    return vault.access.listing_query(connection, principal, limit=limit, offset=offset)


def driver_sql(vault: Vault, statement: Any) -> str:
    """The SQL text the service sends to the driver for ``statement`` (a listing plan's), as
    it runs it: compiled once by ``vault.prepared.Prepared``, on the driver's cursor, which
    SQLAlchemy's cursor events don't see."""
    return Prepared.of(statement).sql(vault.engine.dialect)


def listing_rows(
    vault: Vault, principal: Principal, *, limit: int, filters: PackageFilter | None = None
) -> int:
    """The database part of ``Vault.list_packages`` alone: in one read transaction, the probe
    that picks the plan and the page's query (no ledger entry, no titles opened); how many
    rows the first page has."""
    with vault.core.lookup() as connection:
        return len(
            vault.access.listing_page(connection, principal, limit=limit, offset=0, filters=filters)
        )


def readable_clause(vault: Vault, principal: Principal) -> Any:
    """SQL for "the caller may read this package" (the listing's WHERE), bound like the
    listing."""
    return vault.access.readable_clause(principal)


def package_summary(vault: Vault, row: Any, country: str) -> PackageSummary:
    """A listing row made into what callers see (opens the sealed title)."""
    return vault.packages.summary(row, country)


def open_title(vault: Vault, package: Package) -> str:
    """The package's title, from its sealed metadata."""
    title: str = _sealed.open_meta(vault.keys, package).meta["title"]
    return title


def package_identity(package_id: str) -> bytes:
    """The context a package's key and metadata are sealed under (to bulk-seed packages the
    way ``Vault.upload`` seals them)."""
    return _sealed.package_identity(package_id)


def package_facts(
    session: Session, principal: Principal, package_id: str, action: str
) -> tuple[_access.PackageRow, Facts] | None:
    """The package and the decision facts, from the service's one query (what enforcement and
    explain use)."""
    return _access.package_facts(session, principal, package_id, action)


def grants_in_force(
    vault: Vault, session: Session, principal: Principal, package_id: str
) -> list[tuple[str, str | None, datetime | None]]:
    """Releases of the package in force for the caller, ``(release id, agency or None, end
    or None)``."""
    return vault.access.grants_in_force(session, principal, package_id)


def country_of(vault: Vault, session: Session, agency: str) -> str:
    """An agency's country (cached by the service)."""
    return vault.core.country_of(session, agency)


def memo_size(authorizer: Authorizer) -> int:
    """How many attribute classes the authorizer has decided and remembered (a memo miss
    shows as growth)."""
    return authorizer.memo_size
