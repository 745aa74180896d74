"""Filters on the package listing (originating country and agency, classification, handling,
date range), added to the one listing statement of the service as bound parameters.

They only ever narrow what the caller may read: the readable clause is always there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam
from sqlmodel import col

from vault.models import Agency, Classification, Handling, Package
from vault.schemas import check_agency, check_country


@dataclass(frozen=True)
class PackageFilter:
    """What a listing is narrowed to; None means "any". InvalidInput for a malformed code."""

    country: str | None = None
    agency: str | None = None
    classification: Classification | None = None
    handling: Handling | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.country is not None:
            check_country(self.country)
        if self.agency is not None:
            check_agency(self.agency)

    def apply(self, statement: Any) -> tuple[Any, dict[str, Any]]:
        """``statement`` narrowed by this filter, and the values of its bind parameters."""
        wanted: list[tuple[Any, str, Any]] = [
            (col(Agency.country_code), "f_country", self.country),
            (col(Package.agency_code), "f_agency", self.agency),
            (col(Package.classification), "f_class", self.classification),
            (col(Package.handling), "f_handling", self.handling),
        ]
        clauses = [column == bindparam(name) for column, name, value in wanted if value]
        params = {name: value for _, name, value in wanted if value}
        if self.since is not None:
            clauses.append(col(Package.created_at) >= bindparam("f_since"))
            params["f_since"] = self.since
        if self.until is not None:
            clauses.append(col(Package.created_at) < bindparam("f_until"))
            params["f_until"] = self.until
        return (statement.where(*clauses) if clauses else statement), params
