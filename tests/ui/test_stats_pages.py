"""The statistics pages without a browser: each caller's charts, tables and files hold exactly
the figures computed here from the records released to them; revoking a release changes them
on the next request; a record they may not read changes not a byte of the page; hostile text
stays text; every read is in the ledger; both languages."""

from __future__ import annotations

import csv
import io
import re

import httpx
import pytest
from openpyxl import load_workbook

from blo_vault.api.web.security import CSP
from tests.conftest import World
from tests.ui.conftest import Browser
from tests.ui.stats_world import (
    HOSTILE,
    KEPT,
    RELEASED,
    Row,
    before_after,
    build,
    monthly,
    number,
    shown_monthly,
    tables,
    upload_records,
)
from tests.ui.test_pages import INLINE

ENGLISH = {
    "Heroin": "heroin",
    "Opium": "opium",
    "Cash": "cash",
    "Precursor chemicals": "precursor chemicals",
    "Methamphetamine": "methamphetamine",
}


def normalised(html: str) -> str:
    """A page without what differs between two answers to the same question."""
    html = re.sub(r'name="csrf" value="[^"]+"', "", html)
    return re.sub(r"#\d+", "#N", html)


def before_after_shown(html: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(crossing point, measure) -> (before, after) from the before/after table."""
    found = {}
    point = ""
    for row in tables(html)["table-before-after"][1:]:
        if len(row) == 8:  # the first row of a crossing point carries its name, date, window
            point = row[0].split(" · ")[0]
            row = row[3:]
        found[(point, row[0])] = (number(row[1]), number(row[2]))
    return found


def windows(html: str) -> dict[str, int]:
    return {
        row[0].split(" · ")[0]: int(number(row[2]))
        for row in tables(html)["table-before-after"][1:]
        if len(row) == 8
    }


@pytest.mark.parametrize(
    ("username", "readable"), [("kz.officer", RELEASED), ("uz.officer", RELEASED + KEPT)]
)
def test_each_caller_sees_the_figures_of_exactly_what_they_may_read(
    world: World, browser: Browser, username: str, readable: list[Row]
) -> None:
    build(world)
    browser.sign_in(username)
    page = browser.client.get("/ui/stats")
    assert page.status_code == 200
    assert shown_monthly(page.text, ENGLISH) == monthly(readable)
    shown = before_after_shown(page.text)
    for point, window in windows(page.text).items():
        before, after, kg_before, kg_after = before_after(readable, point, window)
        assert shown[(point, "Records")] == (before, after), point
        assert shown[(point, "Mass, kg")] == pytest.approx((kg_before, kg_after)), point
    assert set(windows(page.text)) == {"OYBEK", "BEKABAD"}
    # One chart per unit family with figures, one bar per non-zero table cell.
    for family, cells in monthly(readable).items():
        chart = re.search(
            rf'<svg [^>]*id="chart-{family.replace("_", "-")}".*?</svg>', page.text, re.S
        )
        assert chart, family
        assert chart.group(0).count('<rect class="bar ') == len(cells), family


def test_revoking_the_release_changes_the_figures_on_the_next_request(
    world: World, browser: Browser
) -> None:
    shared = build(world)
    browser.sign_in("kz.officer")
    assert shown_monthly(browser.client.get("/ui/stats").text, ENGLISH) == monthly(RELEASED)
    world.vault.revoke_release(world["uz.officer"], shared.shared, shared.release)
    page = browser.client.get("/ui/stats").text
    assert shown_monthly(page, ENGLISH) == {}
    assert 'id="monthly-none"' in page
    assert all(pair == (0, 0) for pair in before_after_shown(page).values())


def test_a_record_one_may_not_read_changes_not_a_byte(world: World, browser: Browser) -> None:
    build(world)
    browser.sign_in("kz.officer")
    first = browser.client.get("/ui/stats?by=month,commodity,crossing_point,direction").text
    upload_records(world, KEPT, "More kept seizures")
    again = browser.client.get("/ui/stats?by=month,commodity,crossing_point,direction").text
    assert normalised(again) == normalised(first)
    csv_first = browser.client.get("/ui/stats/before-after.csv").content
    upload_records(world, KEPT, "Still more")
    assert browser.client.get("/ui/stats/before-after.csv").content == csv_first


def test_a_hostile_crossing_point_name_stays_text(world: World, browser: Browser) -> None:
    build(world)
    browser.sign_in("kz.officer")
    answer = browser.client.get("/ui/stats")
    page = answer.text
    assert "<script>alert" not in page
    assert not INLINE.search(page)  # charts and all: nothing the CSP would have to refuse
    assert answer.headers["content-security-policy"] == CSP
    assert "&lt;script&gt;alert(&#34;cp&#34;)&lt;/script&gt; &amp; Bekabad" in page
    exported = browser.client.get("/ui/stats/before-after.csv").content.decode("utf-8-sig")
    names = [row["name"] for row in csv.DictReader(io.StringIO(exported))]
    assert HOSTILE in names


def test_grouped_figures_and_their_files_agree(world: World, browser: Browser) -> None:
    build(world)
    browser.sign_in("kz.officer")
    query = "?by=commodity,direction&from=2024-01-01&to=2024-02-29"
    page = browser.client.get("/ui/stats" + query).text
    inside = [r for r in RELEASED if "2024-01-01" <= r["date"][:10] <= "2024-02-29"]
    expected: dict[tuple[str, str], int] = {}
    for r in inside:
        key = (str(r["commodity"]), str(r["direction"]))
        expected[key] = expected.get(key, 0) + 1
    shown = {(row[0].lower(), row[1]): int(row[2]) for row in tables(page)["table-grouped"][1:]}
    assert shown == expected
    answer = browser.client.get("/ui/stats/seizures.csv" + query)
    assert answer.headers["content-disposition"] == 'attachment; filename="seizure-stats.csv"'
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.content.decode("utf-8-sig"))))
    assert {(r["commodity"], r["direction"]): int(r["records"]) for r in rows} == expected
    book = browser.client.get("/ui/stats/seizures.xlsx" + query)
    assert book.headers["content-disposition"] == 'attachment; filename="seizure-stats.xlsx"'
    sheet = load_workbook(io.BytesIO(book.content))["seizures"]
    header, *values = [[c.value for c in row] for row in sheet.iter_rows()]
    assert header[:3] == ["commodity", "direction", "records"]
    assert {(v[0], v[1]): v[2] for v in values} == expected


def test_every_read_is_in_the_ledger_and_bad_filters_are_refused(
    world: World, browser: Browser
) -> None:
    build(world)
    browser.sign_in("kz.officer")
    size = world.vault.ledger_size()
    assert browser.client.get("/ui/stats").status_code == 200
    assert world.vault.ledger_size() - size == 2  # the monthly figures and before/after
    size = world.vault.ledger_size()
    assert browser.client.get("/ui/stats?by=country").status_code == 200
    assert world.vault.ledger_size() - size == 3  # and the figures grouped as asked
    size = world.vault.ledger_size()
    assert browser.client.get("/ui/stats/seizures.xlsx").status_code == 200
    assert browser.client.get("/ui/stats/before-after.csv").status_code == 200
    assert world.vault.ledger_size() - size == 2
    for bad in (
        "/ui/stats?by=password",
        "/ui/stats?from=2024-13-01",
        "/ui/stats?from=2024-03-01&to=2024-01-01",
        "/ui/stats/seizures.html",
        "/ui/stats/before-after.exe",
    ):
        answer = browser.client.get(bad)
        assert answer.status_code == 422, bad
        assert "Some of what was entered is not valid" in answer.text, bad


def test_the_page_in_russian(world: World, browser: Browser) -> None:
    build(world)
    browser.client.headers["Accept-Language"] = "ru"
    browser.sign_in("kz.officer")
    page = browser.client.get("/ui/stats").text
    assert 'lang="ru"' in page
    assert "Статистика изъятий" in page
    assert "До и после открытия ПОГ" in page
    cells = tables(page)["table-quantity_kg"]
    assert cells[0] == ["Месяц", "Героин", "Опий"]
    assert ["2024-01", "0,5", "0"] in cells  # 500 g of heroin, in Russian number format
    assert "Скачать CSV" in page


def test_signed_out_reader_is_sent_to_sign_in(browser: Browser) -> None:
    for path in ("/ui/stats", "/ui/stats/seizures.csv", "/ui/stats/before-after.xlsx"):
        answer = browser.client.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"] == "/ui/signin"


# --- the upload form's records file -------------------------------------------------------

RECORDS_CSV = (
    "\ufeffdate,crossing_point,direction,commodity,quantity,unit,concealment\n"
    "2024-01-20,OYBEK,entry,героин,1500,г,тайник в бензобаке\n"
    "2024-01-22,OYBEK,exit,cash,12000,units,\n"
)


def send_upload(browser: Browser, records: tuple[str, bytes, str] | None) -> httpx.Response:
    files = [("records", records or ("", b"", "application/octet-stream"))]
    files.append(("file", ("report.txt", b"monthly seizures", "text/plain")))
    answer: httpx.Response = browser.client.post(
        "/ui/upload",
        data={"csrf": browser.csrf("/ui/upload"), "title": "Oybek, January"},
        files=files,
        follow_redirects=False,
    )
    return answer


def test_upload_form_takes_a_records_file_and_the_page_counts_it(
    world: World, browser: Browser
) -> None:
    build(world)
    browser.sign_in("tj.officer")  # nothing released to TJ: its own records are all it sees
    assert shown_monthly(browser.client.get("/ui/stats").text, ENGLISH) == {}
    answer = send_upload(browser, ("january.csv", RECORDS_CSV.encode("utf-8"), "text/csv"))
    assert answer.status_code == 303, answer.text
    assert shown_monthly(browser.client.get("/ui/stats").text, ENGLISH) == {
        "quantity_kg": {("2024-01", "heroin"): 1.5},  # "героин", 1500 "г"
        "quantity_units": {("2024-01", "cash"): 12000},
    }


def test_upload_form_without_records_stores_none(world: World, browser: Browser) -> None:
    build(world)
    browser.sign_in("tj.officer")
    answer = send_upload(browser, None)
    assert answer.status_code == 303
    assert shown_monthly(browser.client.get("/ui/stats").text, ENGLISH) == {}


@pytest.mark.parametrize("language", ["en", "ru"])
def test_a_bad_records_file_lists_every_bad_row_and_stores_nothing(
    world: World, browser: Browser, language: str
) -> None:
    build(world)
    browser.client.headers["Accept-Language"] = language
    browser.sign_in("tj.officer")
    bad = (
        "date,crossing_point,direction,commodity,quantity,unit\n"
        "2024-01-20,OYBEK,entry,heroin,-3,kg\n"
        "2024-13-01,OYBEK,entry,heroin,3,kg\n"
        "2024-01-21,OYBEK,entry,salt,3,parsecs\n"
        "2024-01-21,OYBEK,entry,heroin,3,kg\n"
    )
    size = world.vault.ledger_size()
    answer = send_upload(browser, ("bad.csv", bad.encode(), "text/csv"))
    assert answer.status_code == 422
    text = answer.text
    for row in ("row 2", "row 3", "row 4"):
        assert row in text, row
    assert "row 5" not in text
    assert 'id="records-problems"' in text
    assert ("nothing was stored" if language == "en" else "ничего не сохранено") in text
    # Refused before the service was asked to store anything: no upload entry, no package;
    # the page's refusal is recorded (the route and the reason, never the rows).
    refused = world.vault.unscoped_entries(size, world.vault.ledger_size())
    assert [(e.action, e.decision, e.reason) for e in refused] == [
        ("request", "deny", "invalid_input")
    ]
    assert world.vault.list_packages(world["tj.officer"]).items == []
    wrong = send_upload(browser, ("records.txt", b"date\n", "text/plain"))
    assert wrong.status_code == 422
    assert ".csv or .xlsx" in wrong.text
