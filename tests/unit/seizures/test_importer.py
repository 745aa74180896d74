"""Importing seizure records from CSV and XLSX: good files as agencies keep them, and
malformed ones refused with every bad row and column named."""

from __future__ import annotations

import io
import zipfile
from datetime import datetime
from pathlib import Path

import pytest
from openpyxl import Workbook

from vault.errors import InvalidInput, TooLarge
from vault.seizures.importer import MAX_IMPORT_BYTES, MAX_ROWS, read_records, records_from_bytes
from vault.seizures.schema import MAX_RECORDS, check_rows

EXAMPLE = Path(__file__).parents[3] / "docs" / "seizure-records-example.csv"
HEADER = "date,crossing_point,direction,commodity,quantity,unit"


def refused(data: bytes, name: str = "r.csv") -> str:
    with pytest.raises(InvalidInput) as exc:
        records_from_bytes(data, name=name)
    return exc.value.message


def xlsx(rows: list[list[object]]) -> bytes:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_the_example_file_of_the_readme_imports() -> None:
    records = read_records(EXAMPLE)
    assert len(records) == 5
    first = records[0]
    assert (first.date, first.crossing_point, first.commodity) == (
        datetime(2014, 3, 12, 6, 40),
        "OYBEK",
        "heroin",
    )
    assert records[1].in_family()[0] == "kg"
    assert records[1].in_family()[1] == pytest.approx(2.3)
    assert records[4].in_family() == ("units", 350)


def test_a_csv_with_a_byte_order_mark_cyrillic_text_and_semicolons() -> None:
    text = (
        "Date;Crossing_Point;Direction;Commodity;Quantity;Unit;Concealment;Detained\n"
        "12.03.2014 06:40;oybek;въезд;Героин;1 234,5;кг;в запасном колесе;2\n"
        "\n"
        "13.03.2014;OYBEK;выезд;гашиш;3;г;;\n"
    )
    records = records_from_bytes(b"\xef\xbb\xbf" + text.encode(), name="отчёт.CSV")
    assert [(r.direction, r.commodity, r.quantity, r.unit) for r in records] == [
        ("entry", "heroin", 1234.5, "kg"),
        ("exit", "cannabis resin", 3.0, "g"),
    ]
    assert records[0].concealment == "в запасном колесе"
    assert records[1].detained == 0


def test_wrong_columns_are_named() -> None:
    message = refused(b"date,crossing_point,direction,commodity,quantity,weight\n")
    assert "row 1, column 6: unknown column" in message
    assert "missing column(s) unit" in message
    assert "appears twice" in refused((HEADER + ",unit\n").encode())


def test_every_bad_row_and_column_is_reported_and_nothing_returned() -> None:
    rows = [
        HEADER,
        "2014-02-30,OYBEK,entry,heroin,1,kg",  # row 2: no such day
        "2014-03-01,OYBEK,entry,heroin,-4,kg",  # row 3: negative
        "2014-03-01,OYBEK,entry,heroin,ten,kg",  # row 4: not a number
        "2014-03-01,OYBEK,entry,tea,1,kg",  # row 5: unknown commodity
        "2014-03-01,OYBEK,sideways,heroin,1,tons",  # row 6: direction and unit
        "2014-03-01,OYBEK,entry,heroin,1,kg",  # row 7: good
        "2014-03-01,OYBEK,entry,heroin,0,kg,extra",  # row 8: zero, data under no header
    ]
    message = refused("\n".join(rows).encode())
    for expected in (
        "row 2, column date: bad date",
        "row 3, column quantity: quantity must be greater than 0",
        "row 4, column quantity: quantity must be a number",
        "row 5, column commodity: unknown commodity",
        "row 6, column direction: unknown direction",
        "row 6, column unit: unknown unit",
        "row 8, column quantity",
        "row 8, column 7: unknown column",
    ):
        assert expected in message, (expected, message)
    assert "row 7" not in message
    assert message.startswith("8 error(s)")
    # The submitted values are never echoed (messages may reach logs).
    assert "tea" not in message
    assert "tons" not in message


def test_an_xlsx_as_agencies_keep_it() -> None:
    data = xlsx(
        [
            ["date", "crossing_point", "direction", "commodity", "quantity", "unit", "detained"],
            [datetime(2014, 3, 12, 6, 40), "OYBEK", "entry", "опий", 2.5, "kg", 3],
            [None, None, None, None, None, None, None],
            ["2014-03-13", "OYBEK", "exit", "weapons", 2, "units", None],
        ]
    )
    records = records_from_bytes(data, name="seizures.xlsx")
    assert [(r.date, r.commodity, r.detained) for r in records] == [
        (datetime(2014, 3, 12, 6, 40), "opium", 3),
        (datetime(2014, 3, 13), "weapons", 0),
    ]


def test_formulas_in_xlsx_cells_are_refused() -> None:
    data = xlsx(
        [
            ["date", "crossing_point", "direction", "commodity", "quantity", "unit"],
            [datetime(2014, 3, 12), "OYBEK", "entry", "heroin", "=2*7", "kg"],
            [datetime(2014, 3, 12), "OYBEK", "entry", "heroin", 1, "kg"],
            [datetime(2014, 3, 12), "OYBEK", "entry", '=HYPERLINK("http://x","y")', 1, "kg"],
        ]
    )
    message = refused(data, "r.xlsx")
    assert "row 2, column 5: formulas are not accepted" in message
    assert "row 4, column 4: formulas are not accepted" in message
    assert "row 3" not in message


def test_a_100_mb_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "huge.csv"
    with big.open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)  # sparse: nothing is written or read
    with pytest.raises(TooLarge, match=r"100\.0 MiB; at most 20 MiB"):
        read_records(big)
    with pytest.raises(TooLarge):
        records_from_bytes(b"x" * (MAX_IMPORT_BYTES + 1), name="r.csv")


@pytest.mark.parametrize(
    ("data", "name", "expected"),
    [
        (HEADER.encode() + b"\n2014-03-01,OYBEK,entry,\xff,1,kg\n", "r.csv", "not UTF-8"),
        (b"PK\x03\x04 not really a zip", "r.xlsx", "not a readable XLSX file"),
        (b"anything", "r.ods", "must be a .csv or .xlsx file"),
        (b"", "r.csv", "empty"),
        (HEADER.encode() + b"\n", "r.csv", "no records"),
        (b'date,"crossing_point\n', "r.csv", "malformed CSV"),
    ],
)
def test_unreadable_files_are_refused_clearly(data: bytes, name: str, expected: str) -> None:
    assert expected in refused(data, name)


# --- files made to cost the server memory and CPU ----------------------------------------------


def test_a_row_of_endless_cells_is_refused_at_once() -> None:
    """A 2 MiB row of ",x" cells: each used to become a field of its own for pydantic to
    refuse one by one (1.3 GiB). Now the row is refused by its count of cells."""
    wide = HEADER + "\n2024-03-12,OYBEK,entry,heroin,1,kg" + ",x" * 1_000_000 + "\n"
    assert refused(wide.encode()) == "row 2 has more than 64 cells"


def test_data_beyond_the_header_is_named_once() -> None:
    message = refused((HEADER + "\n2024-03-12,OYBEK,entry,heroin,1,kg,x,y,z\n").encode())
    assert message.count("row 2") == 1
    assert "row 2, column 7: unknown column" in message


def test_a_record_of_many_made_up_keys_is_counted_not_validated() -> None:
    record: dict[str, object] = {
        "date": "2024-03-12",
        "crossing_point": "OYBEK",
        "direction": "entry",
    }
    record |= {f"k{i}": 1 for i in range(200_000)}
    records, problems = check_rows([record])
    assert records == []
    assert problems == ["row 1: 200000 unknown columns"]


def test_an_xlsx_of_endless_shared_strings_is_refused_before_it_is_read() -> None:
    """A few hundred KB that openpyxl would inflate into millions of strings in memory."""
    strings = "".join(f"<si><t>{i % 10}</t></si>" for i in range(1_200_000))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/sharedStrings.xml", f'<sst xmlns="x" count="1200000">{strings}</sst>')
    assert len(out.getvalue()) < 1024 * 1024
    with pytest.raises(TooLarge, match="inflates to more"):
        records_from_bytes(out.getvalue(), name="r.xlsx")


def _with_dimension(data: bytes, ref: str) -> bytes:
    """``data`` (an XLSX) with its sheet's ``<dimension>`` replaced by ``ref``."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            part = source.read(info.filename)
            if info.filename == "xl/worksheets/sheet1.xml":
                start = part.index(b"<dimension ")
                end = part.index(b"/>", start) + 2
                part = part[:start] + f'<dimension ref="{ref}" />'.encode() + part[end:]
            archive.writestr(info.filename, part)
    return out.getvalue()


@pytest.mark.parametrize("ref", ["A1:F2", "A1:F1", "A1"])
def test_an_xlsx_with_a_stale_dimension_keeps_every_row(ref: str) -> None:
    """Some writers leave the sheet's declared size stale; openpyxl's read-only mode stopped
    there, and the rows below it were dropped without a word (and the figures with them)."""
    rows: list[list[object]] = [
        ["date", "crossing_point", "direction", "commodity", "quantity", "unit"]
    ]
    rows += [[f"2024-01-0{day}", "OYBEK", "entry", "heroin", 10 * day, "kg"] for day in (1, 2, 3)]
    records = records_from_bytes(_with_dimension(xlsx(rows), ref), name="seizures.xlsx")
    assert [r.quantity for r in records] == [10, 20, 30]


def test_a_file_of_blank_lines_is_refused_by_its_count_of_rows() -> None:
    """Blank rows are skipped, but counted: 20 MiB of line breaks took 8 s of CPU to parse
    to the end before the file was found to hold no record."""
    message = refused((HEADER + "\n" + "\n" * (MAX_RECORDS * 2 + 10)).encode())
    assert message == f"at most {MAX_ROWS} rows, blank ones included"
    # As many blank rows as records, and the records, still import.
    good = HEADER + "\n" + "\n2024-03-12,OYBEK,entry,heroin,1,kg" * 3 + "\n"
    assert len(records_from_bytes(good.encode(), name="r.csv")) == 3


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("quantity", 10**400, "row 1, column quantity: quantity must be at most"),
        ("quantity", "1" + "0" * 400, "row 1, column quantity: quantity must be at most"),
        ("quantity", float("inf"), "row 1, column quantity: quantity must be at most"),
        ("quantity", float("nan"), "row 1, column quantity: quantity must be a number"),
        ("detained", 1e999, "row 1, column detained: detained must be a whole number"),
        ("detained", float("nan"), "row 1, column detained: detained must be a whole number"),
        ("detained", 10**400, "row 1, column detained: detained must be a whole number"),
    ],
)
def test_numbers_too_large_for_a_column_are_refused_as_input(
    column: str, value: object, expected: str
) -> None:
    """They raised OverflowError, which nothing caught: a server error, and no ledger entry."""
    record = {
        "date": "2024-03-12",
        "crossing_point": "OYBEK",
        "direction": "entry",
        "commodity": "heroin",
        "quantity": 1,
        "unit": "kg",
        column: value,
    }
    records, problems = check_rows([record])
    assert records == []
    assert len(problems) == 1
    assert problems[0].startswith(expected), problems
