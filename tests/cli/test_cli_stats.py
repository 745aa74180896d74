"""``blovault stats``, ``admin add-crossing-point`` and ``package upload --records`` against a
live server: the figures are those of exactly the records released to the caller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cli.test_cli_access import LoggedIn, ok_json, refused, write_source
from tests.conftest import CliRunner
from vault.seizures.importer import read_records

EXAMPLE = Path(__file__).parents[2] / "docs" / "seizure-records-example.csv"


def add_points(cli: CliRunner) -> None:
    for code, country, name, opened in (
        ("OYBEK", "UZ", "Oybek", "2014-05-01"),
        ("BEKABAD", "UZ", "Bekabad", "2014-07-01"),
    ):
        result = cli(
            "admin", "add-crossing-point", code, "--country", country, "--name", name,
            "--blo-opened", opened,
        )  # fmt: skip
        assert result.code == 0, result.stderr
        assert f"crossing point {code} added (ledger #" in result.stderr


def upload_with_records(cli: CliRunner, tmp_path: Path, records: Path) -> Any:
    return cli(
        "package", "upload", write_source(tmp_path), "--title", "Monthly seizures",
        "--records", records, "--json", user="uz.officer",
    )  # fmt: skip


def expected_rows() -> list[dict[str, Any]]:
    """The example file's totals by month and commodity, computed here from its rows."""
    sums: dict[tuple[str, str], dict[str, Any]] = {}
    factor = {"g": ("quantity_kg", 0.001), "kg": ("quantity_kg", 1), "l": ("quantity_l", 1)}
    factor |= {"tablets": ("quantity_units", 1), "units": ("quantity_units", 1)}
    for r in read_records(EXAMPLE):
        key = (f"{r.date:%Y-%m}", r.commodity)
        row = sums.setdefault(
            key,
            {"month": key[0], "commodity": key[1], "records": 0, "quantity_kg": 0.0}
            | {"quantity_l": 0.0, "quantity_units": 0.0},
        )
        family, k = factor[r.unit]
        row["records"] += 1
        row[family] = round(row[family] + r.quantity * k, 6)
    return [sums[k] for k in sorted(sums)]


def test_stats_follow_releases_end_to_end(
    cli: CliRunner, logged_in: LoggedIn, tmp_path: Path
) -> None:
    add_points(cli)
    for user in ("uz.officer", "kz.officer", "tj.officer"):
        logged_in(user)
    package_id = ok_json(upload_with_records(cli, tmp_path, EXAMPLE))["id"]
    stats = ["stats", "seizures", "--by", "month,commodity", "--json"]
    assert ok_json(cli(*stats, user="uz.officer")) == expected_rows()
    assert ok_json(cli(*stats, user="kz.officer")) == []
    granted = ok_json(
        cli("package", "release", package_id, "--country", "KZ", "--json", user="uz.officer")
    )
    assert ok_json(cli(*stats, user="kz.officer")) == expected_rows()
    assert ok_json(cli(*stats, user="tj.officer")) == []
    spring = ok_json(
        cli("stats", "seizures", "--by", "direction", "--from", "2014-03-01", "--to",
            "2014-03-31", "--json", user="kz.officer")
    )  # fmt: skip
    assert spring == [
        {"direction": "entry", "records": 2, "quantity_kg": 17.1, "quantity_l": 0.0}
        | {"quantity_units": 0.0}
    ]
    table = cli("stats", "seizures", "--by", "crossing_point", user="kz.officer")
    assert table.code == 0
    assert "BEKABAD" in table.stdout
    assert "OYBEK" in table.stdout
    figures = ok_json(cli("stats", "before-after", "--window-days", "100", "--json",
                          user="kz.officer"))  # fmt: skip
    oybek = next(f for f in figures if f["crossing_point"] == "OYBEK")
    # Feb 9 - Apr 30 2014: two records (heroin, opium); May 1 - Aug 8: one (cash).
    assert (oybek["before"]["records"], oybek["after"]["records"]) == (2, 1)
    assert oybek["change"]["records"] == {"absolute": -1, "relative": -0.5}
    cli("package", "revoke", package_id, "--release", granted["id"], user="uz.officer")
    assert ok_json(cli(*stats, user="kz.officer")) == []


def test_a_bad_records_file_uploads_nothing(
    cli: CliRunner, logged_in: LoggedIn, tmp_path: Path
) -> None:
    add_points(cli)
    logged_in("uz.officer")
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "date,crossing_point,direction,commodity,quantity,unit\n"
        "2014-03-12,OYBEK,entry,heroin,-1,kg\n"
        "2014-13-12,OYBEK,entry,tea,1,kg\n",
        encoding="utf-8",
    )
    message = refused(upload_with_records(cli, tmp_path, bad), 2)
    assert "row 2, column quantity" in message
    assert "row 3, column date" in message
    assert "row 3, column commodity" in message
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(
        "date,crossing_point,direction,commodity,quantity,unit\n"
        "2014-03-12,NOWHERE,entry,heroin,1,kg\n",
        encoding="utf-8",
    )
    assert "not registered" in refused(upload_with_records(cli, tmp_path, unknown), 2)
    assert ok_json(cli("package", "list", "--json", user="uz.officer"))["items"] == []


def test_crossing_points_are_checked(cli: CliRunner) -> None:
    add_points(cli)
    again = cli(
        "admin", "add-crossing-point", "OYBEK", "--country", "UZ", "--name", "Oybek",
        "--blo-opened", "2014-05-01",
    )  # fmt: skip
    assert "exists already" in refused(again, 8)
    for args, code in (
        (["NEW", "--country", "XX", "--name", "x", "--blo-opened", "2014-05-01"], 2),
        (["NEW", "--country", "UZ", "--name", "x", "--blo-opened", "01.05.2014"], 2),
        (["N!", "--country", "UZ", "--name", "x", "--blo-opened", "2014-05-01"], 2),
    ):
        result = cli("admin", "add-crossing-point", *args)
        assert result.code == code, (args, result.stderr)
