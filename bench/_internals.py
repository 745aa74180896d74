"""The one place the benchmarks reach inside the service layer.

The authorization benchmark times the service's listing and decision paths piece by piece,
which needs parts of ``Vault`` that are not (yet) public. Every such access goes through a
function here, each saying what it needs, so that when the service publishes these under
public names only this module changes. Nothing else in ``bench/`` may touch a ``_private``
member of ``vault``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlmodel import Session

from vault import service
from vault.authz import Authorizer, Facts
from vault.models import Package
from vault.schemas import PackageSummary
from vault.service import Principal, Vault


@contextlib.contextmanager
def transaction(vault: Vault, *, readonly: bool = False) -> Iterator[Session]:
    """One service transaction as every operation opens it (policy refresh, connection,
    BEGIN [IMMEDIATE] ... COMMIT, refusal recording). Needs: ``Vault._tx``."""
    with vault._tx(readonly=readonly) as session:
        yield session


def record_read(vault: Vault, **fields: Any) -> int:
    """Record an access that changes nothing, through the group commit, as reads do; returns
    the entry's sequence number once committed. Needs: ``Vault._log``."""
    return vault._log(**fields)


def require_global(vault: Vault, principal: Principal, action: str) -> None:
    """Authorise an action that concerns no package (list, upload, ...); AccessDenied if the
    role may not. Needs: ``Vault._require_global``."""
    vault._require_global(principal, action)


def listing_statement(vault: Vault, principal: Principal) -> Any:
    """The prebuilt SQL of ``Vault.list_packages`` for the caller's role and clearance; bind
    it with :func:`listing_params`. Needs: ``Vault._listing_statement``."""
    return vault._listing_statement(principal)


def listing_params(principal: Principal, *, limit: int, offset: int) -> dict[str, Any]:
    """The bind parameters of :func:`listing_statement`. Needs: ``vault.service.listing_params``
    (public today, but its module is being split)."""
    return service.listing_params(principal, limit=limit, offset=offset)


def readable_clause(vault: Vault, principal: Principal) -> Any:
    """SQL for "the caller may read this package" (the listing's WHERE), bound like the
    listing. Needs: ``Vault._readable_clause``."""
    return vault._readable_clause(principal)


def package_summary(vault: Vault, row: Any, country: str) -> PackageSummary:
    """A listing row made into what callers see (opens the sealed title). Needs:
    ``Vault._summary``."""
    return vault._summary(row, country)


def open_title(vault: Vault, package: Package) -> str:
    """The package's title, from its sealed metadata. Needs: ``Vault._open_meta``."""
    title: str = vault._open_meta(package)["title"]
    return title


def package_identity(package_id: str) -> bytes:
    """The context a package's key and metadata are sealed under (to bulk-seed packages the
    way ``Vault.upload`` seals them). Needs: ``vault.service._package_identity``."""
    return service._package_identity(package_id)


def package_facts(
    session: Session, principal: Principal, package_id: str, action: str
) -> tuple[Package, Facts] | None:
    """The package and the decision facts, from the service's one query (what enforcement and
    explain use). Needs: ``vault.service.package_facts`` (public today, but its module is being
    split)."""
    return service.package_facts(session, principal, package_id, action)


def grants_in_force(
    vault: Vault, session: Session, principal: Principal, package_id: str
) -> list[tuple[str, str | None]]:
    """Releases of the package in force for the caller, ``(release id, agency or None)``.
    Needs: ``Vault._grants_in_force``."""
    return vault._grants_in_force(session, principal, package_id)


def country_of(vault: Vault, session: Session, agency: str) -> str:
    """An agency's country (cached by the service). Needs: ``Vault._country_of``."""
    return vault._country_of(session, agency)


def memo_size(authorizer: Authorizer) -> int:
    """How many attribute classes the authorizer has decided and remembered (a memo miss
    shows as growth). Needs: ``Authorizer._memo``."""
    return len(authorizer._memo)
