"""Statistics from per-package day totals: pure functions, no database and no keys.

The service hands these only the totals of packages the caller may read; whatever they are
not given cannot change a figure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence

from vault.errors import InvalidInput
from vault.seizures.figures import GROUP_KEYS, BeforeAfter, StatsRow, Totals
from vault.seizures.schema import CrossingPointInfo
from vault.seizures.store import DayTotals

__all__ = [
    "MAX_WINDOW_DAYS",
    "Projected",
    "before_after",
    "check_by",
    "default_window",
    "group",
    "merge",
    "project",
]

# The longest window either side of an opening date; also the default's cap, so a BLO open
# for ten years is compared over the two years either side, not over decades of other change.
MAX_WINDOW_DAYS = 730
_DIGITS = 6  # quantities are rounded for output: sums of floats in any order agree to this


def check_by(by: Sequence[str]) -> tuple[str, ...]:
    """The grouping keys asked for, in GROUP_KEYS order (a key asked twice counts once);
    InvalidInput for an unknown key."""
    asked = {key.strip() for key in by if key.strip()}
    if asked - set(GROUP_KEYS):
        raise InvalidInput(f"group by any of {', '.join(GROUP_KEYS)}")
    return tuple(key for key in GROUP_KEYS if key in asked)


def _totals(sums: Sequence[float]) -> Totals:
    return Totals(
        records=int(sums[0]),
        quantity_kg=round(sums[1], _DIGITS),
        quantity_l=round(sums[2], _DIGITS),
        quantity_units=round(sums[3], _DIGITS),
    )


_Picker = Callable[[DayTotals, Mapping[str, str]], str]
_PICKERS: dict[str, _Picker] = {
    "month": lambda t, _: t.month,
    "commodity": lambda t, _: t.commodity,
    "crossing_point": lambda t, _: t.crossing_point,
    "country": lambda t, countries: countries.get(t.crossing_point, ""),
    "direction": lambda t, _: t.direction,
}


# One package's totals grouped: (key values, records, kg, l, units) a group.
Projected = tuple[tuple[tuple[str, ...], int, float, float, float], ...]


def project(
    days: Sequence[DayTotals],
    by: tuple[str, ...],
    countries: Mapping[str, str],
    *,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
) -> Projected:
    """One package's day totals grouped by ``by`` (checked keys, GROUP_KEYS order), over the
    days between ``date_from`` and ``date_to`` inclusive."""
    low = date_from.toordinal() if date_from else None
    high = date_to.toordinal() if date_to else None
    pick = [_PICKERS[key] for key in by]
    groups: dict[tuple[str, ...], list[float]] = {}
    for t in days:
        if (low is not None and t.day < low) or (high is not None and t.day > high):
            continue
        key = tuple(p(t, countries) for p in pick)
        sums = groups.get(key)
        if sums is None:
            groups[key] = [t.records, t.quantity_kg, t.quantity_l, t.quantity_units]
        else:
            sums[0] += t.records
            sums[1] += t.quantity_kg
            sums[2] += t.quantity_l
            sums[3] += t.quantity_units
    return tuple((k, int(s[0]), s[1], s[2], s[3]) for k, s in groups.items())


def merge(projections: Iterable[Projected], by: tuple[str, ...]) -> list[StatsRow]:
    """The packages' grouped totals added up, one row a group, sorted by their keys."""
    groups: dict[tuple[str, ...], list[float]] = {}
    for projected in projections:
        for key, records, kg, litres, units in projected:
            sums = groups.get(key)
            if sums is None:
                groups[key] = [records, kg, litres, units]
            else:
                sums[0] += records
                sums[1] += kg
                sums[2] += litres
                sums[3] += units
    return [
        StatsRow(keys=dict(zip(by, key, strict=True)), totals=_totals(sums))
        for key, sums in sorted(groups.items())
    ]


def group(
    parts: Iterable[Sequence[DayTotals]],
    by: tuple[str, ...],
    countries: Mapping[str, str],
    *,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
) -> list[StatsRow]:
    """Rows of totals grouped by ``by`` over the day totals of every part (package) between
    ``date_from`` and ``date_to`` inclusive, sorted by their keys."""
    return merge(
        (project(p, by, countries, date_from=date_from, date_to=date_to) for p in parts), by
    )


def default_window(opened: dt.date, today: dt.date) -> int:
    """Days from the opening date to today, at least 1 and at most MAX_WINDOW_DAYS."""
    return max(1, min((today - opened).days, MAX_WINDOW_DAYS))


def before_after(
    parts: Iterable[Sequence[DayTotals]],
    points: Sequence[CrossingPointInfo],
    *,
    window_days: int | None,
    today: dt.date,
) -> list[BeforeAfter]:
    """For each crossing point, the totals in the equal windows before and from its BLO
    opening date (``window_days``, or :func:`default_window` of each point)."""
    windows: dict[str, tuple[int, int, int]] = {}
    for point in points:
        days = window_days if window_days is not None else default_window(point.blo_opened, today)
        opened = point.blo_opened.toordinal()
        windows[point.code] = (opened - days, opened, opened + days)
    sums = {code: ([0.0] * 4, [0.0] * 4) for code in windows}
    for part in parts:
        for t in part:
            window = windows.get(t.crossing_point)
            if window is None or not window[0] <= t.day < window[2]:
                continue
            side = sums[t.crossing_point][0 if t.day < window[1] else 1]
            side[0] += t.records
            side[1] += t.quantity_kg
            side[2] += t.quantity_l
            side[3] += t.quantity_units
    return [
        BeforeAfter(
            crossing_point=p.code,
            country=p.country,
            name=p.name,
            blo_opened=p.blo_opened,
            window_days=windows[p.code][1] - windows[p.code][0],
            before=_totals(sums[p.code][0]),
            after=_totals(sums[p.code][1]),
        )
        for p in points
    ]
