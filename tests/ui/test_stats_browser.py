"""The statistics page in a real Chromium (Debian's chromium and chromium-driver, driven by
Selenium), against a real server on 127.0.0.1 that the test starts and stops, in English and
in Russian: the figures in the tables under the charts equal those computed in the test from
exactly the records released to the reader, every chart is drawn (one bar per non-zero
figure), a hostile crossing-point name is shown as text, and no script runs from it.
Screenshots go into docs/screenshots/{en,ru}/stats.png when VAULT_UI_SCREENSHOTS names that
folder (as for tests/ui/test_browser.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.conftest import World, running_server
from tests.ui.stats_world import HOSTILE, RELEASED, before_after, build, monthly
from tests.ui.test_browser import CHROMEDRIVER, CHROMIUM, Browsers, no_dialog, shot, sign_in, until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="no Chromium here: install Debian's chromium and chromium-driver (.ci/run does)",
    ),
]

# The page's words for the commodities the released records hold, by language.
COMMODITIES = {
    "en": {
        "Heroin": "heroin",
        "Opium": "opium",
        "Cash": "cash",
        "Precursor chemicals": "precursor chemicals",
    },
    "ru": {
        "Героин": "heroin",
        "Опий": "opium",
        "Наличные": "cash",
        "Прекурсоры": "precursor chemicals",
    },
}
HEADINGS = {"en": "Seizure statistics", "ru": "Статистика изъятий"}
RECORDS = {"en": "Records", "ru": "Записи"}
MASS = {"en": "Mass, kg", "ru": "Масса, кг"}


@pytest.fixture
def browsers(tmp_path: Path) -> Iterator[Browsers]:
    started = Browsers(tmp_path)
    try:
        yield started
    finally:
        for driver, _ in started.started:
            driver.quit()


def figure(text: str, language: str) -> float:
    """A number as the page shows it in ``language`` (grouping and decimal signs)."""
    text = text.replace("\u00a0", "").replace("\u202f", "").replace(" ", "")
    return float(text.replace(",", ".") if language == "ru" else text.replace(",", ""))


def cells(driver: WebDriver, table_id: str) -> list[list[str]]:
    table = driver.find_element(By.ID, table_id)
    return [
        [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")]
        for row in table.find_elements(By.TAG_NAME, "tr")
    ]


def shown_monthly(driver: WebDriver, language: str) -> dict[str, dict[tuple[str, str], float]]:
    found = {}
    for table in driver.find_elements(By.CSS_SELECTOR, "table.figures[id^='table-quantity_']"):
        family = str(table.get_attribute("id")).removeprefix("table-")
        header, *body = cells(driver, f"table-{family}")
        values = {}
        for month, *row in body:
            for heading, text in zip(header[1:], row, strict=True):
                if figure(text, language):
                    values[(month, COMMODITIES[language][heading])] = figure(text, language)
        found[family] = values
        bars = driver.find_elements(By.CSS_SELECTOR, f"#chart-{family.replace('_', '-')} rect.bar")
        assert len(bars) == len(values), family  # one bar per non-zero figure
    return found


def shown_before_after(driver: WebDriver, language: str) -> dict[str, tuple[float, ...]]:
    found: dict[str, tuple[float, ...]] = {}
    point, window = "", 0
    for row in cells(driver, "table-before-after")[1:]:
        if len(row) == 8:
            point, window = row[0].split(" · ")[0], int(figure(row[2], language))
            row = row[3:]
        if row[0] == RECORDS[language]:
            found[point] = (window, figure(row[1], language), figure(row[2], language))
        elif row[0] == MASS[language]:
            found[point] += (figure(row[1], language), figure(row[2], language))
    return found


@pytest.mark.parametrize("language", ["en", "ru"])
def test_statistics_page_shows_exactly_the_released_figures(
    world: World, browsers: Browsers, tmp_path: Path, language: str
) -> None:
    screenshots = Path(os.environ.get("VAULT_UI_SCREENSHOTS") or tmp_path / "screenshots")
    build(world)
    with running_server(world.vault) as base:
        kz = browsers(language)
        sign_in(kz, base, "kz.officer")
        kz.get(base + "/ui/stats")
        until(kz, lambda d: d.find_elements(By.ID, "table-before-after"))
        assert kz.find_element(By.TAG_NAME, "h1").text == HEADINGS[language]
        assert kz.find_element(By.TAG_NAME, "html").get_attribute("lang") == language
        assert shown_monthly(kz, language) == monthly(RELEASED)
        before_after_figures = shown_before_after(kz, language)
        assert set(before_after_figures) == {"OYBEK", "BEKABAD"}
        for point, (window, *shown) in before_after_figures.items():
            expected = before_after(RELEASED, point, int(window))
            assert shown == pytest.approx(list(expected)), point
        # The hostile name is on the page as the text it is, and ran nothing.
        assert HOSTILE in kz.find_element(By.ID, "table-before-after").text
        no_dialog(kz)
        charts = kz.find_elements(By.CSS_SELECTOR, "svg.chart")
        assert len(charts) >= 4  # kg, l, units by month; records and kg before/after
        assert all(chart.size["width"] > 300 for chart in charts)
        shot(kz, screenshots / language, "stats")


def test_records_file_through_the_upload_form_is_counted(
    world: World, browsers: Browsers, tmp_path: Path
) -> None:
    """The upload form (sent by upload.js) with a records file: TJ, to whom nothing was
    released, sees exactly its own records' figures; a bad file is refused row by row."""
    build(world)
    records = tmp_path / "tj-january.csv"
    records.write_text(
        "date,crossing_point,direction,commodity,quantity,unit\n"
        "2024-01-20,OYBEK,entry,героин,1500,г\n"
        "2024-01-22,OYBEK,exit,cash,12000,units\n",
        encoding="utf-8-sig",
    )
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "date,crossing_point,direction,commodity,quantity,unit\n2024-01-20,OYBEK,entry,heroin,-1,kg\n"
    )
    report = tmp_path / "report.txt"
    report.write_bytes(b"January at Oybek\n")
    with running_server(world.vault) as base:
        tj = browsers("en")
        sign_in(tj, base, "tj.officer")
        for path in (bad, records):
            tj.get(base + "/ui/upload")
            tj.find_element(By.ID, "title").send_keys("January")
            tj.find_element(By.ID, "records").send_keys(str(path))
            tj.find_element(By.ID, "file").send_keys(str(report))
            tj.find_element(By.ID, "submit").click()
            if path is bad:
                problems = until(tj, lambda d: d.find_elements(By.ID, "records-problems"))
                assert "row 2" in problems[0].text
                assert world.vault.list_packages(world["tj.officer"]).items == []
        until(tj, lambda d: "/ui/packages/" in d.current_url)
        tj.get(base + "/ui/stats")
        assert shown_monthly(tj, "en") == {
            "quantity_kg": {("2024-01", "heroin"): 1.5},
            "quantity_units": {("2024-01", "cash"): 12000},
        }
        no_dialog(tj)
