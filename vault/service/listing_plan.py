"""How a listing finds the caller's packages: from the release index when they are few, by
walking the packages newest first when they are many.

The readable clause (:meth:`vault.service.access.Access.readable_clause`) stays the one source
of truth for what a caller may read; both plans apply it in full. What differs is where the
database starts:

- *scan*: the packages newest first (index on ``created_at``), the clause tested row by row,
  stopping at the end of the page. Cheap when the caller may read many packages; a caller who
  may read 20 of 100,000 would make it test all 100,000.
- *indexed*: only the packages some relation could give the caller -- its agency's own, the
  packages of its country's agencies, those with an active release to its agency or country --
  read from the package and release indexes, then the clause, then the sort. Cheap when they
  are few; sorting 50,000 candidates for a page of 50 is not.

A *probe* counts the candidates (index entries only), no further than one past the switch, and
picks the plan, switching where both would touch about as many rows (:func:`switch_point`, from
an estimate of the vault's size, never above :data:`INDEXED_UP_TO`). The candidates are a
superset of what the caller may read (an active release outside its window, a class the
caller may not read, a purged package are all still candidates), so the indexed plan's answer
is the scan's answer. A policy that lets some role read without any relation (``none``) has
no candidate set: it always scans.

On PostgreSQL both plans are the planner's to carry out, and it plans them well only with the
statistics of a current ANALYZE: autovacuum, which must be on (its default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Integer, String, bindparam, func, text, union_all
from sqlalchemy import select as sa_select
from sqlmodel import col

from vault.authz import NONE, ORIGINATOR, RELEASED_AGENCY, RELEASED_COUNTRY, SAME_COUNTRY
from vault.listing import PackageFilter
from vault.models import Agency, Package, Release, ReleaseStatus

# The most candidates the indexed plan is ever used for. Either plan touches about
# sqrt(packages x page) rows at the switch (about 2,200 at 100,000 packages and a page of
# 50), so this keeps both cheap there; measured with bench.bench_listing. Smaller vaults
# switch sooner (switch_point).
INDEXED_UP_TO = 2000


@dataclass(frozen=True)
class ListingPlan:
    """The two statements of one caller class's listing, and the probe that chooses."""

    scan: Any
    indexed: Any | None
    probe: Any | None
    # Each plan narrowed by a filter, by which filter fields are set: the values are bind
    # parameters, so one statement serves every filter of that shape (and SQLAlchemy's cache
    # key for it is computed once, not per request: a tenth of a millisecond or more).
    narrowed: dict[tuple[bool, tuple[bool, ...]], Any] = field(default_factory=dict)

    def page(self, indexed: bool, filters: PackageFilter | None) -> tuple[Any, dict[str, Any]]:
        """The statement of one plan narrowed by ``filters``, and the filter's parameters."""
        statement = self.indexed if indexed else self.scan
        if filters is None:
            return statement, {}
        key = (indexed, filters.shape())
        narrowed, params = filters.apply(statement)
        return self.narrowed.setdefault(key, narrowed), params


def candidates(relations: frozenset[str]) -> Any | None:
    """The ids of every package one of ``relations`` could hold for the caller (``agency``
    and ``country`` bound), with repeats; None when the relations don't bound it (``none``)."""
    if NONE in relations or not relations:
        return None
    agency, country = bindparam("agency", type_=String()), bindparam("country", type_=String())
    active = col(Release.status) == ReleaseStatus.ACTIVE
    branches = []
    if ORIGINATOR in relations:
        branches.append(sa_select(col(Package.id)).where(col(Package.agency_code) == agency))
    if SAME_COUNTRY in relations:
        branches.append(
            sa_select(col(Package.id))
            .join(Agency, col(Agency.code) == col(Package.agency_code))
            .where(col(Agency.country_code) == country)
        )
    if RELEASED_AGENCY in relations:
        branches.append(
            sa_select(col(Release.package_id)).where(col(Release.agency_code) == agency, active)
        )
    if RELEASED_COUNTRY in relations:
        # Not narrowed to country-wide releases: the index (country, status, package) then
        # answers alone, and the readable clause tells the two apart afterwards.
        branches.append(
            sa_select(col(Release.package_id)).where(col(Release.country_code) == country, active)
        )
    return union_all(*branches) if len(branches) > 1 else branches[0]


def probe(found: Any) -> Any:
    """SQL: how many candidates there are, counting no further than ``candidates_up_to``
    (bound to one past the switch, :func:`probe_params`). A caller with thousands of
    candidates in a vault of a few thousand packages is past a switch of a few hundred: the
    probe need not count on to :data:`INDEXED_UP_TO` on every listing."""
    capped = found.limit(bindparam("candidates_up_to", type_=Integer())).subquery()
    return sa_select(func.count()).select_from(capped)


def probe_params(switch: int) -> dict[str, int]:
    """The probe's own bind parameter for a switch at ``switch`` candidates."""
    return {"candidates_up_to": switch + 1}


def use_indexed(count: int, switch: int) -> bool:
    """Whether a probe's count chooses the indexed plan (up to ``switch`` candidates, see
    :func:`switch_point`)."""
    return count <= switch


def switch_point(packages: int | None, page_end: int) -> int:
    """The most candidates the indexed plan should be used for, in a vault of about
    ``packages`` packages, for a page that ends at row ``page_end`` (offset + limit).

    Where both plans touch about as many rows: the indexed plan reads every candidate, the
    scan walks about ``page_end x packages / candidates`` packages when the caller's are
    spread over time, so they meet at sqrt(packages x page_end). Never above
    :data:`INDEXED_UP_TO` (the probe counts no further), never below the page itself. Without
    an estimate (None), :data:`INDEXED_UP_TO`. A vault's first months matter here: at 4,000
    packages a caller with 2,000 candidates was read through all 2,000 and sorted, where the
    scan finds a page of 50 in about 100 rows.
    """
    if packages is None:
        return INDEXED_UP_TO
    return min(INDEXED_UP_TO, max(page_end, math.isqrt(packages * page_end)))


# About how many packages a vault holds, read without counting them: on SQLite the largest
# rowid (every package ever stored, purged ones too). On PostgreSQL the larger of the planner's
# statistic (kept by ANALYZE, so by autovacuum; -1 before the table's first ANALYZE) and the
# live rows of the cumulative statistics (kept by every insert and delete, without ANALYZE):
# the first alone left a growing vault on "no estimate" for its first minute, and for ever on
# a server with autovacuum off, and so listed callers with up to 2,000 candidates from the
# index where the scan would have read a hundred rows (BENCHMARKS.md, issue 14, 2026-12-07).
_ESTIMATES = {
    "sqlite": text("SELECT max(rowid) FROM package"),
    "postgresql": text(
        "SELECT greatest(reltuples::bigint, pg_stat_get_live_tuples(oid)) FROM pg_class"
        " WHERE oid = to_regclass('package')"
    ),
}


def package_estimate(connection: Connection) -> int | None:
    """About how many packages there are (None when the database can't say cheaply)."""
    statement = _ESTIMATES.get(connection.dialect.name)
    value = None if statement is None else connection.execute(statement).scalar()
    return int(value) if value is not None and value > 0 else None


__all__ = [
    "INDEXED_UP_TO",
    "ListingPlan",
    "candidates",
    "package_estimate",
    "probe",
    "probe_params",
    "switch_point",
    "use_indexed",
]
