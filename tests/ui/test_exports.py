"""The figures as files: the CSV and XLSX hold the same figures as the statistics, numbers as
numbers, and no text cell a spreadsheet would run as a formula."""

from __future__ import annotations

import csv
import io
from datetime import date

import pytest
from openpyxl import load_workbook

from blo_vault.api.web.exports import (
    attachment,
    before_after_sheet,
    neutralise,
    stats_sheet,
    to_csv,
    to_xlsx,
)
from vault.seizures.figures import BeforeAfter, SeizureStats, StatsRow, Totals

HOSTILE = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]


def stats() -> SeizureStats:
    rows = [
        StatsRow({"month": "2024-01", "commodity": "heroin"}, Totals(2, 15.5, 0.0, 0.0)),
        StatsRow({"month": "2024-02", "commodity": "cash"}, Totals(1, 0.0, 0.0, 12000.0)),
    ]
    return SeizureStats(("month", "commodity"), None, None, rows)


def figures(name: str = "Ойбек") -> list[BeforeAfter]:
    return [
        BeforeAfter(
            "OYBEK",
            "UZ",
            name,
            date(2014, 5, 1),
            365,
            before=Totals(4, 10.0, 0.0, 0.0),
            after=Totals(2, 25.0, 0.0, 0.0),
        )
    ]


@pytest.mark.parametrize("text", HOSTILE)
def test_formula_like_text_is_neutralised(text: str) -> None:
    assert neutralise(text) == "'" + text
    assert neutralise("Oybek") == "Oybek"
    assert neutralise(-3.5) == -3.5  # a number stays a number


def test_csv_has_the_figures_a_bom_and_the_json_column_names() -> None:
    data = to_csv(stats_sheet(stats()))
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows == [
        ["month", "commodity", "records", "quantity_kg", "quantity_l", "quantity_units"],
        ["2024-01", "heroin", "2", "15.5", "0", "0"],
        ["2024-02", "cash", "1", "0", "0", "12000"],
    ]


def test_before_after_csv_has_changes_and_cyrillic() -> None:
    rows = list(csv.reader(io.StringIO(to_csv(before_after_sheet(figures())).decode("utf-8-sig"))))
    header, row = rows
    named = dict(zip(header, row, strict=True))
    assert named["name"] == "Ойбек"
    assert named["blo_opened"] == "2014-05-01"
    assert (named["records_before"], named["records_after"]) == ("4", "2")
    assert (named["records_change"], named["records_change_ratio"]) == ("-2", "-0.5")
    assert named["quantity_l_change_ratio"] == ""  # nothing before: no ratio


@pytest.mark.parametrize("text", HOSTILE)
def test_a_hostile_name_is_text_in_both_formats(text: str) -> None:
    sheet = before_after_sheet(figures(text))
    rows = list(csv.reader(io.StringIO(to_csv(sheet).decode("utf-8-sig"), newline="")))
    assert rows[1][2] == "'" + text
    book = load_workbook(io.BytesIO(to_xlsx(sheet)))
    page = book["before-after"]
    cell = page.cell(row=2, column=3)
    assert cell.data_type == "s"
    assert cell.value == ("'" + text).replace("\r", "\n")  # XML reads CR as LF
    # Quantities stay numeric cells (a negative change too), not text.
    values = [c.value for c in page[2]]
    assert values[5:9] == [4, 2, -2, -0.5]


def test_xlsx_holds_the_same_figures() -> None:
    book = load_workbook(io.BytesIO(to_xlsx(stats_sheet(stats()))))
    page = book["seizures"]
    assert [[c.value for c in row] for row in page.iter_rows()] == [
        ["month", "commodity", "records", "quantity_kg", "quantity_l", "quantity_units"],
        ["2024-01", "heroin", 2, 15.5, 0, 0],
        ["2024-02", "cash", 1, 0, 0, 12000],
    ]


def test_attachment_names_are_fixed() -> None:
    headers = attachment("seizure-stats", "csv")
    assert headers["Content-Disposition"] == 'attachment; filename="seizure-stats.csv"'
    assert headers["X-Content-Type-Options"] == "nosniff"
    for stem, fmt in (('a"; x=', "csv"), ("a\r\nSet-Cookie: x", "csv"), ("ok", "html")):
        with pytest.raises(ValueError, match="fixed export name"):
            attachment(stem, fmt)
