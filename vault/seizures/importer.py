"""Seizure records from the CSV and XLSX files agencies keep: every row checked, every error
reported with its row and column, nothing returned unless every row is good.

Columns are found by their header (first row), in any order and case: ``date``,
``crossing_point``, ``direction``, ``commodity``, ``quantity``, ``unit`` and, optionally,
``concealment``, ``transport``, ``detained``. Row numbers are the spreadsheet's (the header
is row 1).
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vault.errors import InvalidInput, TooLarge
from vault.seizures.schema import MAX_RECORDS, SeizureRecord, check_rows, refuse_if_any

__all__ = ["COLUMNS", "MAX_IMPORT_BYTES", "REQUIRED", "read_records", "records_from_bytes"]

# 20 MiB holds some 200,000 rows of CSV: a package's worth many times over. XLSX is a zip: its
# parts may inflate to at most MAX_XLSX_INFLATED bytes (a zip bomb stops there).
MAX_IMPORT_BYTES = 20 * 1024 * 1024
# The largest sheet of MAX_RECORDS rows inflates to some 20 MiB; more is a bomb, and its
# shared strings, which openpyxl reads whole into memory, have a cap of their own (a 470 KB
# file of 11 million one-letter strings once took 1.7 GiB and 81 s of CPU).
MAX_XLSX_INFLATED = 64 * 1024 * 1024
MAX_XLSX_SHARED_STRINGS = 16 * 1024 * 1024
# Cells a row may have: every column and some slack for blank ones. Each cell beyond the
# header used to become a field of its own (a 2 MiB CSV row of ",x" cost 1.3 GiB).
MAX_CELLS = 64
# Rows read in all, header and blank ones included: room for every record and as many blanks.
MAX_ROWS = 2 * MAX_RECORDS + 1
REQUIRED = ("date", "crossing_point", "direction", "commodity", "quantity", "unit")
COLUMNS = (*REQUIRED, "concealment", "transport", "detained")


def read_records(path: Path) -> list[SeizureRecord]:
    """The records of a .csv or .xlsx file; InvalidInput (TooLarge) naming every problem."""
    try:
        size = path.stat().st_size
        if size > MAX_IMPORT_BYTES:
            raise _too_large(size)
        with path.open("rb") as handle:
            data = handle.read(MAX_IMPORT_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read the records file: {exc.strerror or 'error'}") from None
    return records_from_bytes(data, name=path.name)


def records_from_bytes(data: bytes, *, name: str) -> list[SeizureRecord]:
    """The records of a file's bytes; the format follows its name's extension."""
    if len(data) > MAX_IMPORT_BYTES:
        raise _too_large(len(data))
    suffix = Path(name).suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(data)
        problems: list[str] = []
    elif suffix == ".xlsx":
        rows, problems = _xlsx_rows(data)
    else:
        raise InvalidInput("seizure records must be a .csv or .xlsx file")
    records: list[SeizureRecord] = []
    for number, row in rows:  # one at a time: each keeps its own row number
        good, bad = check_rows([row], first_row=number)
        records += good
        problems += bad
    refuse_if_any(problems)
    if not records:
        raise InvalidInput("the records file has a header but no records")
    return records


def _too_large(size: int) -> TooLarge:
    return TooLarge(
        f"the records file is {size / 1048576:.1f} MiB; at most "
        f"{MAX_IMPORT_BYTES // 1048576} MiB (split it into several packages)"
    )


def _header(cells: list[Any]) -> tuple[list[str | None], list[str]]:
    """Each column's field (None for a blank header), and the header's problems."""
    names: list[str | None] = []
    problems = []
    for position, cell in enumerate(cells, start=1):
        name = str(cell).strip().lower().replace(" ", "_") if cell is not None else ""
        if not name:
            names.append(None)
            continue
        if name not in COLUMNS:
            problems.append(
                f"row 1, column {position}: unknown column (expected {', '.join(COLUMNS)})"
            )
        elif name in names:
            problems.append(f"row 1, column {position}: column {name} appears twice")
        names.append(name if name in COLUMNS else None)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        problems.append(f"row 1: missing column(s) {', '.join(missing)}")
    return names, problems


def _mapped(names: list[str | None], cells: list[Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    stray = False
    for position, value in enumerate(cells):
        if position >= len(names) or names[position] is None:
            if value not in (None, "") and not stray:
                row[str(position + 1)] = value  # data under no header: the row is refused
                stray = True  # for the first such cell: one is enough to say why
            continue
        if isinstance(value, str):
            value = value.strip()
        if value not in (None, ""):
            row[str(names[position])] = value
    return row


def _blank(cells: list[Any]) -> bool:
    return all(c is None or (isinstance(c, str) and not c.strip()) for c in cells)


def _csv_rows(data: bytes) -> list[tuple[int, Mapping[str, Any]]]:
    try:
        text = data.decode("utf-8-sig")  # with or without a byte-order mark
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the CSV file is not UTF-8 (byte {exc.start + 1}): save it as 'CSV UTF-8'"
        ) from None
    first = text.split("\n", 1)[0]
    # Spreadsheets in Russian locales write ';' between fields (',' is their decimal mark).
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        return _table_rows(([*row], reader.line_num) for row in reader)
    except csv.Error:
        raise InvalidInput(f"malformed CSV at line {reader.line_num}") from None


def _table_rows(rows: Iterator[tuple[list[Any], int]]) -> list[tuple[int, Mapping[str, Any]]]:
    """Rows under the header, blank ones skipped, with their numbers; header problems raised."""
    names: list[str | None] | None = None
    out: list[tuple[int, Mapping[str, Any]]] = []
    for number, (cells, _) in enumerate(rows, start=1):
        if names is None:
            if _blank(cells):
                raise InvalidInput("row 1: the first row must be the header (column names)")
            names, problems = _header(cells)
            refuse_if_any(problems)
            continue
        if len(cells) > MAX_CELLS:
            raise InvalidInput(f"row {number} has more than {MAX_CELLS} cells")
        if number > MAX_ROWS:
            # Blank rows cost parsing too: a file of line breaks must not run to its end.
            raise InvalidInput(f"at most {MAX_ROWS} rows, blank ones included")
        if _blank(cells):
            continue
        if len(out) >= MAX_RECORDS:
            raise InvalidInput(f"at most {MAX_RECORDS} seizure records a package")
        out.append((number, _mapped(names, cells)))
    if names is None:
        raise InvalidInput("the records file is empty")
    return out


def _xlsx_rows(data: bytes) -> tuple[list[tuple[int, Mapping[str, Any]]], list[str]]:
    from openpyxl import load_workbook  # imported when needed: most uploads carry no XLSX

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            parts = archive.infolist()
            if sum(info.file_size for info in parts) > MAX_XLSX_INFLATED or any(
                info.filename.lower().endswith("sharedstrings.xml")
                and info.file_size > MAX_XLSX_SHARED_STRINGS
                for info in parts
            ):
                raise TooLarge("the XLSX file inflates to more than a records file can hold")
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=False)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, SyntaxError):
        # SyntaxError: the XML parser's ParseError, for a damaged part
        raise InvalidInput("not a readable XLSX file") from None
    try:
        sheet = book.worksheets[0]
        # Read-only mode stops at the sheet's declared <dimension>, which some writers leave
        # stale: rows below it would be dropped without a word. Walk the rows the XML holds.
        if hasattr(sheet, "reset_dimensions"):
            sheet.reset_dimensions()
        formulas: list[str] = []

        def cells() -> Iterator[tuple[list[Any], int]]:
            for number, row in enumerate(sheet.iter_rows(), start=1):
                values: list[Any] = []
                for position, cell in enumerate(row, start=1):
                    if position > MAX_CELLS:  # refused by _table_rows: read no further
                        values.append(None)
                        break
                    if getattr(cell, "data_type", None) == "f":
                        # A formula's value is whatever the last program to save it computed,
                        # or nothing: only typed values are accepted.
                        formulas.append(
                            f"row {number}, column {position}: formulas are not accepted "
                            "(paste the values instead)"
                        )
                        values.append(None)
                    else:
                        values.append(getattr(cell, "value", None))
                yield values, number

        try:
            rows = _table_rows(cells())
        except (KeyError, ValueError, SyntaxError):
            raise InvalidInput("not a readable XLSX file") from None
    finally:
        book.close()
    return rows, formulas
