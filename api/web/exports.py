"""The seizure figures as CSV and XLSX files, the way the statistics page shows them.

Columns are named as in the JSON of ``GET /stats/seizures`` (grouping keys, ``records``,
``quantity_kg``, ``quantity_l``, ``quantity_units``), so a script reads either. Quantities are
numbers (numeric cells in XLSX); text cells that a spreadsheet would take for a formula
(beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) get a leading
apostrophe, as OWASP's CSV-injection advice says, in both formats.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell

from vault.seizures.figures import BeforeAfter, SeizureStats

__all__ = [
    "FORMATS",
    "Sheet",
    "attachment",
    "before_after_sheet",
    "neutralise",
    "stats_sheet",
    "to_csv",
    "to_xlsx",
]

Cell = str | int | float | None
FORMATS = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_MEASURES = ("records", "quantity_kg", "quantity_l", "quantity_units")


@dataclass(frozen=True)
class Sheet:
    """A table of figures: a title (the XLSX sheet's name), a header and rows."""

    title: str
    header: list[str]
    rows: list[list[Cell]]


def neutralise(value: Cell) -> Cell:
    """A text cell a spreadsheet would run as a formula, made plain text; others as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def stats_sheet(stats: SeizureStats) -> Sheet:
    """Grouped figures: one row per group, its keys then its record count and quantities."""
    rows: list[list[Cell]] = [
        [*(row.keys[key] for key in stats.by), *(getattr(row.totals, m) for m in _MEASURES)]
        for row in stats.rows
    ]
    return Sheet("seizures", [*stats.by, *_MEASURES], rows)


def before_after_sheet(figures: Sequence[BeforeAfter]) -> Sheet:
    """Per crossing point: the window, then for each measure its figure before and after the
    BLO opened and the absolute and relative change (empty where the before figure is 0)."""
    header = ["crossing_point", "country", "name", "blo_opened", "window_days"]
    for measure in _MEASURES:
        header += [f"{measure}_{part}" for part in ("before", "after", "change", "change_ratio")]
    rows: list[list[Cell]] = []
    for f in figures:
        row: list[Cell] = [f.crossing_point, f.country, f.name, f.blo_opened.isoformat()]
        row.append(f.window_days)
        for measure in _MEASURES:
            change, ratio = f.change(measure)
            row += [getattr(f.before, measure), getattr(f.after, measure), change, ratio]
        rows.append(row)
    return Sheet("before-after", header, rows)


def to_csv(sheet: Sheet) -> bytes:
    """The sheet as CSV, UTF-8 with a byte-order mark (so spreadsheets read Cyrillic right)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([neutralise(h) for h in sheet.header])
    for row in sheet.rows:
        writer.writerow(["" if v is None else _text(neutralise(v)) for v in row])
    return out.getvalue().encode("utf-8-sig")


def to_xlsx(sheet: Sheet) -> bytes:
    """The sheet as an XLSX workbook (written in openpyxl's write-only mode)."""
    book = Workbook(write_only=True)
    page = book.create_sheet(sheet.title)
    page.append([_cell(page, h) for h in sheet.header])
    for row in sheet.rows:
        page.append([_cell(page, v) for v in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def attachment(stem: str, fmt: str) -> dict[str, str]:
    """Headers of a download named ``stem.fmt``; ``stem`` is one of the pages' fixed names
    (ASCII letters, digits and dashes: nothing from the request or the data)."""
    if not stem.replace("-", "").isalnum() or not stem.isascii() or fmt not in FORMATS:
        raise ValueError("not a fixed export name")
    return {
        "Content-Disposition": f'attachment; filename="{stem}.{fmt}"',
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }


def _cell(page: object, value: Cell) -> WriteOnlyCell | None:
    if value is None:
        return None
    cell = WriteOnlyCell(page, value=neutralise(value))
    if isinstance(value, str):
        # openpyxl would take any string beginning with "=" for a formula: text stays text.
        cell.data_type = "s"
    return cell


def _text(value: Cell) -> str:
    if isinstance(value, float):
        text = f"{value:.6f}".rstrip("0").rstrip(".")
        return text if text not in ("", "-0") else "0"
    return str(value)
