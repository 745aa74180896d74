"""Seizure statistics over exactly the records the caller may read, and the crossing points
they are recorded at (issue 16).

Which packages count is decided fresh on every request, by the same readable-clause SQL as
the package listing: a release revoked, expired or not yet in force, a purge, a change of
role or clearance all change the figures on the very next request. Only what never changes
for a package is cached: its records' day totals, keyed by package id and records version.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlmodel import col

from vault import crypto
from vault.authz import Facts
from vault.errors import AccessDenied, Conflict, InvalidInput, NotFound
from vault.models import Agency, Country, CrossingPoint, Package, PackageRecords, utcnow
from vault.schemas import check_country, check_text
from vault.seizures import aggregate
from vault.seizures.figures import BeforeAfter, SeizureStats
from vault.seizures.schema import CrossingPointInfo, check_crossing_point
from vault.seizures.store import DayTotals, open_day_totals
from vault.service._core import ALLOW, Core, Principal
from vault.service.access import Access
from vault.service.refusals import records_refusals
from vault.service.sealed import package_identity

STATS_ACTION = "stats.read"
_MISS_BATCH = 500

# The sealed records and package keys of the packages whose totals are not cached yet.
_SEALED_RECORDS = (
    sa_select(
        col(PackageRecords.package_id),
        col(PackageRecords.version),
        col(PackageRecords.sealed),
        col(Package.kek_id),
        col(Package.wrapped_key),
    )
    .join(Package, col(Package.id) == col(PackageRecords.package_id))
    .where(col(PackageRecords.package_id).in_(bindparam("ids", expanding=True)))
)


class _Cached:
    """One package's day totals, and their groupings by each ``by`` asked for so far (over
    all dates). A crossing point never changes country, so a grouping by country stays true.
    ``rows`` counts what it holds; ``kept`` is told of each grouping it adds (the cache's
    count), and ``cached`` says whether the cache still holds it.
    """

    __slots__ = ("cached", "days", "first", "grouped", "kept", "last", "rows")

    def __init__(self, days: tuple[DayTotals, ...], kept: Callable[[_Cached, int], None]) -> None:
        self.days = days
        self.first = min((t.day for t in days), default=0)
        self.last = max((t.day for t in days), default=0)
        self.grouped: dict[tuple[str, ...], aggregate.Projected] = {}
        self.rows = len(days)
        self.kept = kept
        self.cached = False

    def within(
        self,
        keys: tuple[str, ...],
        countries: dict[str, str],
        date_from: dt.date | None,
        date_to: dt.date | None,
    ) -> aggregate.Projected:
        """The grouping over the days between two dates: the kept one when every record is
        inside them, nothing when none is, else grouped afresh."""
        low = date_from.toordinal() if date_from else self.first
        high = date_to.toordinal() if date_to else self.last
        if low <= self.first and self.last <= high:
            return self.by(keys, countries)
        if self.last < low or high < self.first:
            return ()
        return aggregate.project(self.days, keys, countries, date_from=date_from, date_to=date_to)

    def by(self, keys: tuple[str, ...], countries: dict[str, str]) -> aggregate.Projected:
        found = self.grouped.get(keys)
        if found is None:
            found = aggregate.project(self.days, keys, countries)
            if self.grouped.setdefault(keys, found) is found:  # not another thread's first
                self.kept(self, len(found))
        return found


class SeizureService:
    """Crossing points, and statistics over the seizure records the caller may read."""

    def __init__(self, core: Core, access: Access) -> None:
        self.core = core
        self.access = access
        self._lock = threading.Lock()
        self._totals: OrderedDict[tuple[str, int], _Cached] = OrderedDict()
        self._rows = 0  # what the cached entries hold, in rows
        # Counted in rows, not packages: one package of 50,000 records in distinct cells,
        # grouped all 31 ways, held 178,000 rows (54 MiB), and a bound by package count let
        # any officer fill the server's memory with their own uploads.
        self._max_rows = core.settings.stats_cache_rows
        self._statements: dict[tuple[str, str, str], Any] = {}

    # --- crossing points ----------------------------------------------------------------------

    @records_refusals("manage")
    def add_crossing_point(
        self, principal: Principal, code: str, *, country: str, name: str, blo_opened: dt.date
    ) -> int:
        """Register a crossing point of an existing country and the date its BLO opened;
        returns the ledger receipt. Conflict if the code is taken."""
        code, country = check_crossing_point(code), check_country(country)
        name = check_text(name.strip(), "name") if isinstance(name, str) else ""
        if not 1 <= len(name) <= 200:
            raise InvalidInput("names are 1-200 characters")
        if not isinstance(blo_opened, dt.date) or not 1990 <= blo_opened.year <= 2100:
            raise InvalidInput("the BLO opening date must be a date between 1990 and 2100")
        subject = f"crossing_point:{code}"
        self.core.require_global(principal, "manage", subject=subject)
        try:
            with self.core.tx() as session:
                if session.get(Country, country) is None:
                    raise InvalidInput(f"unknown country {country}")
                if session.get(CrossingPoint, code) is not None:
                    raise Conflict(f"crossing point {code} exists already")
                session.add(
                    CrossingPoint(code=code, country_code=country, name=name, blo_opened=blo_opened)
                )
                session.flush()
                return self.core.record_in(
                    session,
                    actor=principal.actor,
                    action="manage",
                    decision=ALLOW,
                    reason="created",
                    subject=subject,
                )
        except DBIntegrityError:  # a concurrent add of the same code
            raise Conflict(f"crossing point {code} exists already") from None

    def crossing_points(self, principal: Principal) -> tuple[list[CrossingPointInfo], int]:
        """Every registered crossing point, by code (reference data, like countries: any
        signed-in caller may list them), and the receipt of the look, recorded like any read."""
        points = self._points()
        receipt = self.core.record_decision(
            principal.actor, "list", ALLOW, "ok", subject=f"crossing-points:{len(points)}"
        )
        return points, receipt

    def _points(self) -> list[CrossingPointInfo]:
        """The crossing points, for a read that records itself."""
        with self.core.lookup() as connection:
            rows = connection.execute(
                sa_select(CrossingPoint).order_by(col(CrossingPoint.code))
            ).all()
        return [
            CrossingPointInfo(
                code=r.code, country=r.country_code, name=r.name, blo_opened=r.blo_opened
            )
            for r in rows
        ]

    # --- statistics ---------------------------------------------------------------------------

    @records_refusals(STATS_ACTION)
    def seizure_stats(
        self,
        principal: Principal,
        *,
        by: Sequence[str],
        date_from: dt.date | None = None,
        date_to: dt.date | None = None,
    ) -> tuple[SeizureStats, int]:
        """Totals of the records the caller may read, grouped by ``by`` (GROUP_KEYS), between
        two dates inclusive; and the ledger receipt of the read."""
        keys = aggregate.check_by(by)
        if date_from and date_to and date_from > date_to:
            raise InvalidInput("'from' must not be after 'to'")
        self._require_stats(principal)
        parts = self._readable_totals(principal)
        countries = {p.code: p.country for p in self._points()}
        # Each package's grouping over all its dates is kept: a request merges those, and
        # regroups only the packages a date range cuts through.
        rows = aggregate.merge((c.within(keys, countries, date_from, date_to) for c in parts), keys)
        span = f" from:{date_from or ''} to:{date_to or ''}" if date_from or date_to else ""
        receipt = self._record_read(principal, f"by:{','.join(keys) or '-'}{span}")
        return SeizureStats(by=keys, date_from=date_from, date_to=date_to, rows=rows), receipt

    @records_refusals(STATS_ACTION)
    def seizure_before_after(
        self,
        principal: Principal,
        *,
        crossing_point: str | None = None,
        window_days: int | None = None,
    ) -> tuple[list[BeforeAfter], int]:
        """Totals of the readable records in equal windows before and from each crossing
        point's BLO opening (or one point's); window_days defaults to the days since the
        opening, capped at MAX_WINDOW_DAYS. NotFound for an unregistered point."""
        if window_days is not None and not 1 <= window_days <= aggregate.MAX_WINDOW_DAYS:
            raise InvalidInput(f"window_days must be 1-{aggregate.MAX_WINDOW_DAYS}")
        code = check_crossing_point(crossing_point) if crossing_point is not None else None
        self._require_stats(principal)
        points = self._points()
        if code is not None:
            points = [p for p in points if p.code == code]
            if not points:
                raise NotFound("crossing point not found")
        parts = self._readable_totals(principal)
        figures = aggregate.before_after(
            (c.days for c in parts), points, window_days=window_days, today=utcnow().date()
        )
        receipt = self._record_read(
            principal, f"before-after:{code or '*'} window:{window_days or 'default'}"
        )
        return figures, receipt

    def _require_stats(self, principal: Principal) -> None:
        """Statistics are for whoever may list packages (they summarise the same packages);
        a refusal is recorded as a stats read refused and raised as AccessDenied."""
        facts = Facts.global_action(principal.role.value, "list")
        if not self.core.authz.allows(facts):
            raise self.core.record_refusal(
                AccessDenied("your role may not read statistics"),
                principal.actor,
                STATS_ACTION,
                "role_not_permitted",
            )

    def _record_read(self, principal: Principal, subject: str) -> int:
        # No count in the entry: a figure of what the caller may not read must not appear
        # anywhere they could see it, the ledger included.
        return self.core.record(
            actor=principal.actor,
            action=STATS_ACTION,
            decision=ALLOW,
            reason="ok",
            subject=subject,
        )

    # --- the readable packages' totals --------------------------------------------------------

    def _readable_statement(self, principal: Principal) -> Any:
        """Ids and records versions of the packages with records the caller may read: the
        listing's readable clause, built once per (role, clearance, policy)."""
        key = (principal.role.value, principal.clearance.value, self.core.authz.policy_hash)
        statement = self._statements.get(key)
        if statement is None:
            statement = (
                sa_select(col(PackageRecords.package_id), col(PackageRecords.version))
                .join(Package, col(Package.id) == col(PackageRecords.package_id))
                .join(Agency, col(Agency.code) == col(Package.agency_code))
                .where(col(Package.purged_at).is_(None), self.access.readable_clause(principal))
            )
            if len(self._statements) >= 256:  # old policy versions: start afresh
                self._statements.clear()
            self._statements[key] = statement
        return statement

    def _readable_totals(self, principal: Principal) -> list[_Cached]:
        """The day totals of every package the caller may read now (opened where not cached)."""
        params = {"now": utcnow(), "agency": principal.agency, "country": principal.country}
        with self.core.tx(readonly=True) as session:
            connection = session.connection()
            readable = connection.execute(self._readable_statement(principal), params).all()
            found: dict[tuple[str, int], _Cached] = {}
            with self._lock:
                for pid, version in readable:
                    totals = self._totals.get((pid, version))
                    if totals is not None:
                        self._totals.move_to_end((pid, version))
                        found[(pid, version)] = totals
            missing = [pid for pid, version in readable if (pid, version) not in found]
            opened: dict[tuple[str, int], _Cached] = {}
            for start in range(0, len(missing), _MISS_BATCH):
                batch = missing[start : start + _MISS_BATCH]
                for row in connection.execute(_SEALED_RECORDS, {"ids": batch}):
                    opened[(row.package_id, row.version)] = _Cached(self._open(row), self._grew)
        if opened:
            with self._lock:
                for key, entry in opened.items():
                    if (old := self._totals.pop(key, None)) is not None:
                        self._forget(old)
                    self._totals[key] = entry
                    entry.cached = True
                    self._rows += entry.rows
                self._evict()
            found |= opened
        # Only the versions the readable query returned count (a row changed in between is
        # left out rather than counted in another version).
        return [found[(pid, version)] for pid, version in readable if (pid, version) in found]

    def _grew(self, entry: _Cached, rows: int) -> None:
        """A cached package kept another grouping of ``rows`` rows."""
        with self._lock:
            entry.rows += rows
            if entry.cached:
                self._rows += rows
                self._evict()

    def _forget(self, entry: _Cached) -> None:
        entry.cached = False
        self._rows -= entry.rows

    def _evict(self) -> None:
        """Drop least recently used packages until the cache is within its bound in rows
        (the newest stays, even alone above it: it is in use). Under the lock."""
        while self._rows > self._max_rows and len(self._totals) > 1:
            self._forget(self._totals.popitem(last=False)[1])

    def _open(self, row: Any) -> tuple[DayTotals, ...]:
        identity = package_identity(row.package_id)
        key = self.core.keys.keyring.unwrap(
            crypto.WrappedKey(row.kek_id, row.wrapped_key), context=identity
        )
        return open_day_totals(key, row.package_id, row.sealed)
