"""Charts of the seizure figures, drawn on the server as SVG: no script, no third-party asset.

Pure functions from the figures (``vault.seizures.figures``) to an SVG string that the pages
put inline, so the pages' own stylesheet sizes and colours it (classes only: the pages' CSP
refuses inline ``style``). Every text that comes from the data or the caller (commodity names,
crossing-point codes and names, the translated labels) is escaped; the only attribute values
are numbers, fixed class names and a checked element id.

Quantities are drawn per unit family, one family per chart, never summed across families.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

from vault.seizures.figures import BeforeAfter, SeizureStats, Totals

__all__ = [
    "FAMILIES",
    "MEASURES",
    "ChartText",
    "MonthlyTable",
    "before_after_chart",
    "monthly_chart",
    "monthly_table",
    "plain_number",
]

FAMILIES = ("quantity_kg", "quantity_l", "quantity_units")
MEASURES = ("records", *FAMILIES)
PALETTE_SIZE = 10  # classes c0..c9 in vault.css; more series than that reuse colours

WIDTH = 720
PLOT_HEIGHT = 240
LEFT, RIGHT, TOP = 72, 16, 16
X_LABELS = 56  # room under the plot for the category labels and the axis title
LEGEND_ROW = 20
LEGEND_COLUMN = 176
MAX_BAR = 48
_CHART_ID = re.compile(r"[a-z][a-z0-9-]{0,40}")


def plain_number(value: float) -> str:
    """A figure as text, locale-free: integers without decimals, others to three places."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class ChartText:
    """The words of one chart, already in the reader's language."""

    title: str
    desc: str
    x_label: str
    y_label: str
    empty: str  # what the chart says when there is nothing to draw


@dataclass(frozen=True)
class MonthlyTable:
    """One unit family's quantities by month and commodity, months without records filled in
    with zero (so the axis is time, not just the months that had seizures)."""

    family: str
    months: list[str]
    commodities: list[str]
    values: dict[tuple[str, str], float]

    def value(self, month: str, commodity: str) -> float:
        """The quantity of ``commodity`` in ``month`` (zero when none)."""
        return self.values.get((month, commodity), 0.0)

    @property
    def empty(self) -> bool:
        """Whether there is nothing of this family to show."""
        return not self.commodities


def monthly_table(stats: SeizureStats, family: str, order: Sequence[str] = ()) -> MonthlyTable:
    """The ``family`` quantities of ``stats`` (grouped by month and commodity) as a table;
    commodities with none of it are left out, the rest listed in ``order`` first.
    ValueError if ``stats`` is not grouped by month and commodity or ``family`` is unknown."""
    if family not in FAMILIES:
        raise ValueError(f"unknown unit family {family!r}")
    if "month" not in stats.by or "commodity" not in stats.by:
        raise ValueError("the monthly chart needs figures grouped by month and commodity")
    values: dict[tuple[str, str], float] = {}
    for row in stats.rows:
        quantity = float(getattr(row.totals, family))
        if quantity:
            key = (row.keys["month"], row.keys["commodity"])
            # Grouped by more keys than these two, a month and commodity spans several rows.
            values[key] = values.get(key, 0.0) + quantity
    commodities = _ordered({c for _, c in values}, order)
    return MonthlyTable(family, _months_between({m for m, _ in values}), commodities, values)


def monthly_chart(
    table: MonthlyTable,
    *,
    text: ChartText,
    names: Mapping[str, str],
    chart_id: str,
    number: Callable[[float], str] = plain_number,
    palette: Sequence[str] = (),
) -> Markup:
    """Grouped bars: for each month, one bar per commodity, coloured by the commodity's
    place in ``palette`` (else in the table). ``names`` gives each commodity's label."""
    series = [
        (c, names.get(c, c), _colour(c, palette or table.commodities)) for c in table.commodities
    ]
    bars = [[(c, table.value(month, c)) for c in table.commodities] for month in table.months]
    return _grouped_bars(
        categories=table.months,
        tooltips=table.months,
        series=series,
        bars=bars,
        text=text,
        chart_id=chart_id,
        number=number,
    )


def before_after_chart(
    figures: Sequence[BeforeAfter],
    measure: str,
    *,
    text: ChartText,
    before: str,
    after: str,
    chart_id: str,
    number: Callable[[float], str] = plain_number,
) -> Markup:
    """Paired bars: for each crossing point, its ``measure`` (``records`` or a unit family)
    in the window before its BLO opened and in the window after. ValueError for an unknown
    measure."""
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}")
    shown = [f for f in figures if _of(f.before, measure) or _of(f.after, measure)]
    series = [("before", before, "before"), ("after", after, "after")]
    bars = [[("before", _of(f.before, measure)), ("after", _of(f.after, measure))] for f in shown]
    return _grouped_bars(
        categories=[f.crossing_point for f in shown],
        tooltips=[f"{f.crossing_point} · {f.name} ({f.country})" for f in shown],
        series=series,
        bars=bars,
        text=text,
        chart_id=chart_id,
        number=number,
    )


def _grouped_bars(
    *,
    categories: Sequence[str],
    tooltips: Sequence[str],
    series: Sequence[tuple[str, str, str]],
    bars: Sequence[Sequence[tuple[str, float]]],
    text: ChartText,
    chart_id: str,
    number: Callable[[float], str],
) -> Markup:
    """The one drawing both charts share: categories along x, a bar per series in each,
    value axis from zero with round ticks, legend under the plot."""
    if not _CHART_ID.fullmatch(chart_id):
        raise ValueError("a chart id is lower-case letters, digits and dashes")
    top = max((value for group in bars for _, value in group), default=0.0)
    if top <= 0 or not categories:
        return _frame(chart_id, text, TOP + PLOT_HEIGHT + X_LABELS, [_empty(text)])
    ticks = _ticks(top)
    scale = PLOT_HEIGHT / ticks[-1]
    base = TOP + PLOT_HEIGHT
    labels = {s: label for s, label, _ in series}
    colours = {s: colour for s, _, colour in series}
    parts = _axes(ticks, scale, text, number)
    group_width = (WIDTH - LEFT - RIGHT) / len(categories)
    # Bars no wider than MAX_BAR, so one month or one crossing point is not one slab.
    bar_width = min(max(group_width * 0.8 / len(series), 0.5), MAX_BAR)
    inset = (group_width - bar_width * len(series)) / 2
    every = max(1, math.ceil(len(categories) * 48 / (WIDTH - LEFT - RIGHT)))
    for index, (category, tooltip, group) in enumerate(
        zip(categories, tooltips, bars, strict=True)
    ):
        left = LEFT + index * group_width + inset
        for position, (key, value) in enumerate(group):
            if value <= 0:
                continue
            height = value * scale
            parts.append(
                f'<rect class="bar {colours[key]}" x="{_n(left + position * bar_width)}" '
                f'y="{_n(base - height)}" width="{_n(bar_width)}" height="{_n(height)}">'
                f"<title>{escape(tooltip)} · {escape(labels[key])}: {escape(number(value))}"
                "</title></rect>"
            )
        if index % every == 0:
            middle = LEFT + (index + 0.5) * group_width
            parts.append(
                f'<text class="tick" x="{_n(middle)}" y="{_n(base + 16)}" '
                f'text-anchor="middle">{escape(category)}</text>'
            )
    parts.append(
        f'<text class="axis-label" x="{_n(LEFT + (WIDTH - LEFT - RIGHT) / 2)}" '
        f'y="{_n(base + 40)}" text-anchor="middle">{escape(text.x_label)}</text>'
    )
    legend, legend_height = _legend(series, base + X_LABELS)
    parts.extend(legend)
    return _frame(chart_id, text, base + X_LABELS + legend_height, parts)


def _axes(
    ticks: Sequence[float], scale: float, text: ChartText, number: Callable[[float], str]
) -> list[str]:
    """Grid lines and value labels at each tick, the axis title, and the base line."""
    base = TOP + PLOT_HEIGHT
    parts = []
    for tick in ticks:
        y = _n(base - tick * scale)
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}"/>')
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y}" text-anchor="end" '
            f'dominant-baseline="middle">{escape(number(tick))}</text>'
        )
    middle = _n(TOP + PLOT_HEIGHT / 2)
    parts.append(
        f'<text class="axis-label" x="14" y="{middle}" text-anchor="middle" '
        f'transform="rotate(-90 14 {middle})">{escape(text.y_label)}</text>'
    )
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}"/>')
    return parts


def _legend(series: Sequence[tuple[str, str, str]], top: float) -> tuple[list[str], float]:
    """One swatch and label per series, in rows under the plot; the parts and their height."""
    per_row = max(1, (WIDTH - LEFT - RIGHT) // LEGEND_COLUMN)
    parts = ['<g class="legend">']
    for index, (_, label, colour) in enumerate(series):
        x = LEFT + (index % per_row) * LEGEND_COLUMN
        y = top + (index // per_row) * LEGEND_ROW
        parts.append(f'<rect class="swatch {colour}" x="{x}" y="{_n(y)}" width="12" height="12"/>')
        parts.append(f'<text x="{x + 18}" y="{_n(y + 10)}">{escape(label)}</text>')
    parts.append("</g>")
    rows = math.ceil(len(series) / per_row)
    return parts, rows * LEGEND_ROW + 4


def _frame(chart_id: str, text: ChartText, height: float, parts: Iterable[str]) -> Markup:
    """The ``<svg>`` element around ``parts``: sized, with its accessible name and
    description."""
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{chart_id}" '
        f'viewBox="0 0 {WIDTH} {_n(height)}" width="{WIDTH}" height="{_n(height)}" '
        f'role="img" aria-labelledby="{chart_id}-title {chart_id}-desc">'
        f'<title id="{chart_id}-title">{escape(text.title)}</title>'
        f'<desc id="{chart_id}-desc">{escape(text.desc)}</desc>'
    )
    # Every piece was built above from numbers, fixed names and escaped text.
    return Markup(head + "".join(parts) + "</svg>")  # noqa: S704


def _empty(text: ChartText) -> str:
    return (
        f'<text class="empty" x="{WIDTH // 2}" y="{TOP + PLOT_HEIGHT // 2}" '
        f'text-anchor="middle">{escape(text.empty)}</text>'
    )


def _ticks(top: float) -> list[float]:
    """Round tick values from zero to at least ``top``: steps of 1, 2 or 5 times a power of
    ten, about five of them."""
    raw = top / 5
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    count = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(count + 1)]


def _months_between(months: set[str]) -> list[str]:
    """Every month from the first to the last of ``months`` ("YYYY-MM"); the months as given,
    sorted, if one is not of that form."""
    try:
        parsed = sorted(date.fromisoformat(m + "-01") for m in months)
    except ValueError:
        return sorted(months)
    if not parsed:
        return []
    first, last = parsed[0], parsed[-1]
    count = (last.year - first.year) * 12 + last.month - first.month + 1
    return [
        f"{first.year + (first.month - 1 + i) // 12:04d}-{(first.month - 1 + i) % 12 + 1:02d}"
        for i in range(count)
    ]


def _ordered(keys: set[str], order: Sequence[str]) -> list[str]:
    """``keys`` in ``order``, then any others sorted."""
    known = [k for k in order if k in keys]
    return known + sorted(keys - set(known))


def _colour(key: str, palette: Sequence[str]) -> str:
    """The colour class of a series: its place in ``palette``."""
    index = palette.index(key) if key in palette else len(palette)
    return f"c{index % PALETTE_SIZE}"


def _of(totals: Totals, measure: str) -> float:
    return float(getattr(totals, measure))


def _n(value: float) -> str:
    """A coordinate, rounded so the same figures always give the same text."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text
