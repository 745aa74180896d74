"""Seizure records for the statistics pages' tests: two crossing points (one with a hostile
name), records released to KZ and records kept by UZ, and the figures computed here,
independently of the service, from exactly the records a caller may read."""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

from tests.conftest import World
from vault.schemas import NewPackage
from vault.seizures.schema import SeizureRecord
from vault.service import IncomingFile

Row = dict[str, Any]
HOSTILE = '<script>alert("cp")</script> & Bekabad'
OPENED = {"OYBEK": date(2024, 1, 1), "BEKABAD": date(2024, 2, 1)}
FAMILY = {"g": ("quantity_kg", 0.001), "kg": ("quantity_kg", 1.0), "l": ("quantity_l", 1.0)}
FAMILY |= {"tablets": ("quantity_units", 1.0), "units": ("quantity_units", 1.0)}


def record(day: str, point: str, direction: str, commodity: str, qty: float, unit: str) -> Row:
    return {
        "date": day + "T10:30:00",
        "crossing_point": point,
        "direction": direction,
        "commodity": commodity,
        "quantity": qty,
        "unit": unit,
    }


# Released to KZ (the whole package), within 40 days of either opening date.
RELEASED = [
    record("2023-12-10", "OYBEK", "entry", "heroin", 15, "kg"),
    record("2024-01-20", "OYBEK", "exit", "heroin", 500, "g"),
    record("2024-01-25", "BEKABAD", "entry", "cash", 12000, "units"),
    record("2024-02-03", "BEKABAD", "entry", "precursor chemicals", 2.5, "l"),
    record("2024-02-05", "BEKABAD", "exit", "opium", 3.25, "kg"),
]
# Kept by UZ: what KZ may not read, in the same months and commodities and one of its own.
KEPT = [
    record("2024-01-21", "OYBEK", "entry", "heroin", 7, "kg"),
    record("2024-02-10", "BEKABAD", "exit", "methamphetamine", 300, "tablets"),
    record("2023-12-11", "OYBEK", "entry", "heroin", 1, "kg"),
]


@dataclass
class StatsWorld:
    """The two packages of records: ``shared`` released to KZ, ``kept`` not."""

    shared: str
    kept: str
    release: str


def add_crossing_points(world: World) -> None:
    admin = world["uz.admin"]
    world.vault.add_crossing_point(
        admin, "OYBEK", country="UZ", name="Oybek", blo_opened=OPENED["OYBEK"]
    )
    world.vault.add_crossing_point(
        admin, "BEKABAD", country="UZ", name=HOSTILE, blo_opened=OPENED["BEKABAD"]
    )


def upload_records(world: World, rows: list[Row], title: str = "Seizures") -> str:
    """A package by uz.officer with one file and ``rows`` as its seizure records."""
    records = [SeizureRecord.model_validate(row) for row in rows]
    result = world.vault.upload(
        world["uz.officer"],
        NewPackage(title=title),
        [IncomingFile(name="report.txt", reader=io.BytesIO(b"monthly seizures"))],
        records=records,
    )
    return result.package.id


def build(world: World) -> StatsWorld:
    add_crossing_points(world)
    shared = upload_records(world, RELEASED, "Shared seizures")
    release = world.vault.release(world["uz.officer"], shared, country="KZ").release.id
    kept = upload_records(world, KEPT, "Kept seizures")
    return StatsWorld(shared, kept, release)


def monthly(rows: list[Row]) -> dict[str, dict[tuple[str, str], float]]:
    """Per unit family, the total quantity by (month, commodity), nothing else counted."""
    found: dict[str, dict[tuple[str, str], float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        family, factor = FAMILY[row["unit"]]
        found[family][(row["date"][:7], row["commodity"])] += row["quantity"] * factor
    return {family: dict(cells) for family, cells in found.items()}


def before_after(rows: list[Row], point: str, window: int) -> tuple[int, int, float, float]:
    """Records and kg in the ``window`` days before and after ``point``'s BLO opened."""
    opened = datetime.combine(OPENED[point], datetime.min.time())
    before = [
        r
        for r in rows
        if r["crossing_point"] == point
        and opened - timedelta(days=window) <= datetime.fromisoformat(r["date"]) < opened
    ]
    after = [
        r
        for r in rows
        if r["crossing_point"] == point
        and opened <= datetime.fromisoformat(r["date"]) < opened + timedelta(days=window)
    ]

    def kg(rs: list[Row]) -> float:
        return float(
            sum(r["quantity"] * FAMILY[r["unit"]][1] for r in rs if r["unit"] in ("g", "kg"))
        )

    return len(before), len(after), kg(before), kg(after)


class Tables(HTMLParser):
    """The text of every cell of every table with an id, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or None
            if self._table:
                self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> dict[str, list[list[str]]]:
    parser = Tables()
    parser.feed(html)
    return parser.tables


def number(text: str) -> float:
    """A figure as the English page shows it ("12,000", "0.5")."""
    return float(text.replace(",", ""))


def shown_monthly(
    html: str, commodities: dict[str, str]
) -> dict[str, dict[tuple[str, str], float]]:
    """The non-zero cells of the monthly tables of an English page, by family; ``commodities``
    maps the column headings back to codes."""
    found: dict[str, dict[tuple[str, str], float]] = {}
    for table_id, rows in tables(html).items():
        if not table_id.startswith("table-quantity_"):
            continue
        header, *body = rows
        cells = {}
        for month, *values in body:
            for heading, value in zip(header[1:], values, strict=True):
                if number(value):
                    cells[(month, commodities[heading])] = number(value)
        found[table_id.removeprefix("table-")] = cells
    return found
