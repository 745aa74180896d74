"""The figures the seizure statistics answer with, shared by the API, the CLI and the pages.

Quantities are totalled per unit family, never across families: mass in kilograms, volume in
litres, counted items (tablets, units) as a count. A figure is only ever computed over the
records the caller may read, so every number here, counts included, is release-aware.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

__all__ = [
    "GROUP_KEYS",
    "BeforeAfter",
    "SeizureStats",
    "StatsRow",
    "Totals",
]

# The grouping keys, in the order the JSON rows and the tables list them. ``month`` is
# "YYYY-MM", ``commodity`` the English code of the controlled list, ``crossing_point`` the
# registered code, ``country`` the crossing point's ISO 3166 alpha-2 code, ``direction``
# "entry" or "exit".
GROUP_KEYS = ("month", "commodity", "crossing_point", "country", "direction")


@dataclass(frozen=True)
class Totals:
    """A count of records and their quantities per unit family."""

    records: int = 0
    quantity_kg: float = 0.0
    quantity_l: float = 0.0
    quantity_units: float = 0.0


@dataclass(frozen=True)
class StatsRow:
    """One group: its key values (only the keys asked for, in GROUP_KEYS order) and totals."""

    keys: dict[str, str]
    totals: Totals


@dataclass(frozen=True)
class SeizureStats:
    """Grouped statistics over the records the caller may read."""

    by: tuple[str, ...]
    date_from: date | None
    date_to: date | None
    rows: list[StatsRow] = field(default_factory=list)


@dataclass(frozen=True)
class BeforeAfter:
    """Equal-length windows either side of a crossing point's BLO opening date.

    ``before`` covers [blo_opened - window_days, blo_opened) and ``after``
    [blo_opened, blo_opened + window_days), both over readable records only.
    """

    crossing_point: str
    country: str
    name: str
    blo_opened: date
    window_days: int
    before: Totals
    after: Totals

    def change(self, family: str) -> tuple[float, float | None]:
        """Absolute and relative change of ``records`` or a ``quantity_*`` family; the
        relative change is None where the before figure is zero."""
        old = float(getattr(self.before, family))
        new = float(getattr(self.after, family))
        return new - old, ((new - old) / old if old else None)
