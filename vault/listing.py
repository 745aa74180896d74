"""Filters on the package listing (originating country and agency, classification, handling,
date range), added to the one listing statement of the service as bound parameters.

They only ever narrow what the caller may read: the readable clause is always there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import FunctionElement
from sqlmodel import col

from vault.models import Agency, Classification, Handling, Package
from vault.schemas import check_agency, check_country


class unindexed(FunctionElement[Any]):
    """A column the database must not pick an index for (SQLite's unary ``+``; the column
    itself elsewhere). The scan plan's order is the index it walks; without this SQLite
    prefers an index on an equality (a classification filter) and then sorts thousands of
    rows for a page of 50. PostgreSQL plans from statistics and needs no hint."""

    inherit_cache = True
    name = "unindexed"

    def __init__(self, column: Any) -> None:
        super().__init__(column)
        self.type = column.type  # binds convert as the column's own (enums, times)


@compiles(unindexed)
def _plain(element: unindexed, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(unindexed, "sqlite")
def _plus(element: unindexed, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.clauses, **kw))


def no_index(column: Any) -> ColumnElement[Any]:
    """``column`` in a form SQLite won't drive a plan from (see :class:`unindexed`)."""
    return unindexed(column)


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

    def shape(self) -> tuple[bool, ...]:
        """Which fields are set: filters of one shape narrow a statement the same way."""
        return (
            bool(self.country),
            bool(self.agency),
            bool(self.classification),
            bool(self.handling),
            self.since is not None,
            self.until is not None,
        )

    def apply(self, statement: Any) -> tuple[Any, dict[str, Any]]:
        """``statement`` narrowed by this filter, and the values of its bind parameters."""
        wanted: list[tuple[Any, str, Any]] = [
            (col(Agency.country_code), "f_country", self.country),
            (col(Package.agency_code), "f_agency", self.agency),
            # Never an index to start from: the listing walks its own (see listing_plan).
            (no_index(col(Package.classification)), "f_class", self.classification),
            (no_index(col(Package.handling)), "f_handling", self.handling),
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
