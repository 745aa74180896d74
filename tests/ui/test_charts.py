"""The SVG charts of the seizure figures: the same figures give the same drawing, bars are
as tall as their figures, hostile text stays text, and no figures draw an empty chart."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from datetime import date

import pytest

from blo_vault.api.web.charts import (
    ChartText,
    before_after_chart,
    monthly_chart,
    monthly_table,
    plain_number,
)
from vault.seizures.figures import BeforeAfter, SeizureStats, StatsRow, Totals

SVG = "{http://www.w3.org/2000/svg}"
TEXT = ChartText(
    title="Mass seized",
    desc="Kilograms per month",
    x_label="Month",
    y_label="kg",
    empty="No records",
)
NAMES = {"heroin": "Heroin", "opium": "Opium", "cash": "Cash"}


def row(
    month: str, commodity: str, records: int, kg: float = 0, units: float = 0, **more: str
) -> StatsRow:
    return StatsRow(
        {"month": month, "commodity": commodity, **more},
        Totals(records=records, quantity_kg=kg, quantity_units=units),
    )


ROWS = [
    row("2023-11", "heroin", 2, kg=15.5),
    row("2024-02", "opium", 1, kg=3.25),
    row("2024-02", "heroin", 1, kg=40),
    row("2024-01", "cash", 3, units=12000),
]


def stats(rows: list[StatsRow], by: tuple[str, ...] = ("month", "commodity")) -> SeizureStats:
    return SeizureStats(by=by, date_from=None, date_to=None, rows=rows)


def bars(svg: str) -> list[tuple[float, str]]:
    """(height, tooltip) of every bar, parsing the SVG as XML (so it must be well formed)."""
    root = ET.fromstring(svg)
    found = []
    for rect in root.iter(SVG + "rect"):
        if "bar" in rect.get("class", "").split():
            title = rect.find(SVG + "title")
            assert title is not None
            found.append((float(rect.get("height", "0")), title.text or ""))
    return found


def test_monthly_table_fills_months_and_keeps_one_family() -> None:
    table = monthly_table(stats(ROWS), "quantity_kg", order=["opium", "heroin"])
    assert table.months == ["2023-11", "2023-12", "2024-01", "2024-02"]
    assert table.commodities == ["opium", "heroin"]  # cash has no mass: not in this chart
    assert table.value("2024-02", "heroin") == 40
    assert table.value("2023-12", "heroin") == 0
    units = monthly_table(stats(ROWS), "quantity_units")
    assert (units.months, units.commodities) == (["2024-01"], ["cash"])


def test_monthly_table_sums_rows_grouped_by_more_keys() -> None:
    rows = [
        row("2024-01", "heroin", 1, kg=1.5, direction="entry"),
        row("2024-01", "heroin", 1, kg=2.5, direction="exit"),
    ]
    table = monthly_table(stats(rows, ("month", "commodity", "direction")), "quantity_kg")
    assert table.value("2024-01", "heroin") == 4.0


def test_monthly_table_refuses_figures_not_by_month_and_commodity() -> None:
    with pytest.raises(ValueError, match="month and commodity"):
        monthly_table(stats([], ("crossing_point",)), "quantity_kg")
    with pytest.raises(ValueError, match="unit family"):
        monthly_table(stats(ROWS), "records")


def test_same_figures_draw_the_same_chart_whatever_their_order() -> None:
    drawn = {
        monthly_chart(
            monthly_table(
                stats(random.Random(seed).sample(ROWS, len(ROWS))), "quantity_kg", order=list(NAMES)
            ),
            text=TEXT,
            names=NAMES,
            chart_id="kg",
        )
        for seed in range(5)
    }
    assert len(drawn) == 1
    svg = drawn.pop()
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="kg"')
    assert "<script" not in svg
    assert " style=" not in svg


def test_bars_are_as_tall_as_their_figures() -> None:
    table = monthly_table(stats(ROWS), "quantity_kg", order=list(NAMES))
    svg = monthly_chart(table, text=TEXT, names=NAMES, chart_id="kg")
    found = bars(svg)
    assert sorted(tip for _, tip in found) == [
        "2023-11 · Heroin: 15.5",
        "2024-02 · Heroin: 40",
        "2024-02 · Opium: 3.25",
    ]
    per_unit = {round(height / float(tip.rsplit(": ", 1)[1]), 3) for height, tip in found}
    assert len(per_unit) == 1  # one scale for every bar
    root = ET.fromstring(svg)
    assert root.get("role") == "img"
    assert root.get("aria-labelledby") == "kg-title kg-desc"
    assert root.findtext(SVG + "title") == "Mass seized"
    assert root.findtext(SVG + "desc") == "Kilograms per month"
    texts = [t.text for t in root.iter(SVG + "text")]
    assert {"Month", "kg", "Heroin", "Opium"} <= set(texts)
    # The value axis reaches the highest bar with a round top tick.
    ticks = [float(t) for t in texts if t and t.replace(".", "").isdigit()]
    assert max(ticks) >= 40
    assert 0 in ticks


def figures(name: str = "Oybek") -> list[BeforeAfter]:
    return [
        BeforeAfter(
            "OYBEK",
            "UZ",
            name,
            date(2014, 5, 1),
            365,
            before=Totals(records=4, quantity_kg=10),
            after=Totals(records=9, quantity_kg=25),
        ),
        BeforeAfter(
            "BEKABAD",
            "UZ",
            "Bekabad",
            date(2016, 1, 1),
            365,
            before=Totals(),
            after=Totals(records=2, quantity_units=300),
        ),
    ]


def test_before_after_pairs_bars_per_crossing_point() -> None:
    text = ChartText("Records", "Before and after", "Crossing point", "records", "No records")
    svg = before_after_chart(
        figures(), "records", text=text, before="Before", after="After", chart_id="ba-records"
    )
    found = sorted(tip for _, tip in bars(svg))
    assert found == [
        "BEKABAD · Bekabad (UZ) · After: 2",
        "OYBEK · Oybek (UZ) · After: 9",
        "OYBEK · Oybek (UZ) · Before: 4",
    ]
    kg = before_after_chart(
        figures(), "quantity_kg", text=text, before="Before", after="After", chart_id="ba-kg"
    )
    assert [tip for _, tip in bars(kg)] == [
        "OYBEK · Oybek (UZ) · Before: 10",
        "OYBEK · Oybek (UZ) · After: 25",
    ]  # Bekabad had no mass either side: not drawn
    with pytest.raises(ValueError, match="measure"):
        before_after_chart(figures(), "quantity_g", text=text, before="B", after="A", chart_id="x")


def test_a_hostile_crossing_point_name_stays_text() -> None:
    hostile = '</title></rect><script>alert(1)</script><rect onload="alert(2)" x=\'&amp;'
    text = ChartText("<b>t</b>", "d & <i>", "x", "y", "e")
    svg = before_after_chart(
        figures(hostile), "records", text=text, before="<before>", after="After", chart_id="ba"
    )
    root = ET.fromstring(svg)  # well formed: nothing closed early
    assert not list(root.iter(SVG + "script"))
    assert all(not key.startswith("on") for e in root.iter() for key in e.attrib)
    assert "<script>" not in svg
    tips = [tip for _, tip in bars(svg)]
    assert f"OYBEK · {hostile} (UZ) · <before>: 4" in tips  # the same text, as text
    assert root.findtext(SVG + "title") == "<b>t</b>"


def test_no_figures_draw_an_empty_chart() -> None:
    table = monthly_table(stats([]), "quantity_kg")
    assert table.empty
    svg = monthly_chart(table, text=TEXT, names=NAMES, chart_id="kg")
    root = ET.fromstring(svg)
    assert bars(svg) == []
    assert [t.text for t in root.iter(SVG + "text")] == ["No records"]
    assert root.findtext(SVG + "title") == "Mass seized"
    nothing = before_after_chart(
        figures(), "quantity_l", text=TEXT, before="B", after="A", chart_id="ba-l"
    )
    assert bars(nothing) == []
    assert "No records" in nothing


def test_a_chart_id_is_checked() -> None:
    table = monthly_table(stats(ROWS), "quantity_kg")
    with pytest.raises(ValueError, match="chart id"):
        monthly_chart(table, text=TEXT, names=NAMES, chart_id='kg" onload="x')


@pytest.mark.parametrize(
    ("value", "text"), [(40.0, "40"), (3.25, "3.25"), (0.1 + 0.2, "0.3"), (12000, "12000")]
)
def test_plain_numbers(value: float, text: str) -> None:
    assert plain_number(value) == text
