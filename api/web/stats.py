"""The seizure statistics pages: charts, the tables of figures under them, and the figures
as CSV or XLSX files. Every figure comes from the service's statistics over the records the
reader may read (each read recorded in the ledger); the page only draws and lays them out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Annotated

from babel.numbers import format_decimal
from fastapi import APIRouter, Query, Response
from markupsafe import Markup

from blo_vault.api.errors import RECEIPT_HEADER
from blo_vault.api.web import exports
from blo_vault.api.web.charts import (
    FAMILIES,
    ChartText,
    MonthlyTable,
    before_after_chart,
    monthly_chart,
    monthly_table,
)
from blo_vault.api.web.context import PREFIX, SignedIn
from blo_vault.api.web.i18n import N_, Language
from vault.errors import InvalidInput
from vault.seizures.figures import GROUP_KEYS, BeforeAfter, SeizureStats

router = APIRouter(include_in_schema=False)
STATS_PATH = PREFIX + "/stats"
CHART_BY = ("month", "commodity")
# The controlled list's codes (as stored) and how the pages name them; its order is also the
# order of the series and of their colours in every chart.
COMMODITIES = {
    "heroin": N_("Heroin"),
    "opium": N_("Opium"),
    "cannabis resin": N_("Cannabis resin"),
    "cannabis herb": N_("Cannabis herb"),
    "methamphetamine": N_("Methamphetamine"),
    "other synthetic drugs": N_("Other synthetic drugs"),
    "precursor chemicals": N_("Precursor chemicals"),
    "cash": N_("Cash"),
    "weapons": N_("Weapons"),
    "other": N_("Other"),
}
KEY_NAMES = {
    "month": N_("Month"),
    "commodity": N_("Commodity"),
    "crossing_point": N_("Crossing point"),
    "country": N_("Country"),
    "direction": N_("Direction"),
}
DIRECTIONS = {"entry": N_("entry"), "exit": N_("exit")}
MEASURE_NAMES = {
    "records": N_("Records"),
    "quantity_kg": N_("Mass, kg"),
    "quantity_l": N_("Volume, l"),
    "quantity_units": N_("Count, tablets and units"),
}
UNIT_NAMES = {
    "records": N_("records"),
    "quantity_kg": N_("kg"),
    "quantity_l": N_("l"),
    "quantity_units": N_("tablets, units"),
}
ExportFormat = Annotated[str, "csv or xlsx"]


@dataclass(frozen=True)
class Filters:
    """What the reader asked for: grouping keys and a date range (both ends included)."""

    by: tuple[str, ...]
    date_from: date | None
    date_to: date | None

    @classmethod
    def read(cls, by: Sequence[str], date_from: str, date_to: str) -> Filters:
        """From the query; InvalidInput for an unknown key or a date not ``YYYY-MM-DD``."""
        keys = {k.strip() for value in by for k in value.split(",") if k.strip()}
        if keys - set(GROUP_KEYS):
            raise InvalidInput(f"group by some of: {', '.join(GROUP_KEYS)}")
        chosen = tuple(k for k in GROUP_KEYS if k in keys) or CHART_BY
        return cls(chosen, _day(date_from), _day(date_to))

    def query(self) -> dict[str, str]:
        """The filters as the form and the export links carry them."""
        return {
            "by": ",".join(self.by),
            "from": self.date_from.isoformat() if self.date_from else "",
            "to": self.date_to.isoformat() if self.date_to else "",
        }


@dataclass(frozen=True)
class Chart:
    """One drawn chart with what its table needs."""

    key: str
    heading: str
    svg: Markup
    table: MonthlyTable | None = None
    measure: str = ""


By = Annotated[list[str] | None, Query(max_length=100)]
From = Annotated[str, Query(alias="from", max_length=10)]
To = Annotated[str, Query(alias="to", max_length=10)]


@router.get(STATS_PATH)
def stats_page(
    current: SignedIn, by: By = None, date_from: From = "", date_to: To = ""
) -> Response:
    """The monthly charts per unit family, the grouped figures, and before/after per crossing
    point, each with its table."""
    filters = Filters.read(by or [], date_from, date_to)
    vault, user = current.vault, current.user
    monthly, receipt = vault.seizure_stats(
        user, by=CHART_BY, date_from=filters.date_from, date_to=filters.date_to
    )
    receipts = [receipt]
    grouped = monthly
    if filters.by != CHART_BY:
        grouped, receipt = vault.seizure_stats(
            user, by=filters.by, date_from=filters.date_from, date_to=filters.date_to
        )
        receipts.append(receipt)
    figures, receipt = vault.seizure_before_after(user)
    receipts.append(receipt)
    names = Names(current.language)
    return current.render(
        "stats.html",
        # Figures drawn from whatever the reader may read: marked as high as that may go.
        classification=user.clearance,
        filters=filters,
        query=filters.query(),
        group_keys=GROUP_KEYS,
        monthly=_monthly_charts(monthly, names),
        grouped=grouped,
        before_after=figures,
        before_after_charts=_before_after_charts(figures, names),
        measures=list(MEASURE_NAMES),
        names=names,
        number=names.number,
        receipts=receipts,
    )


@router.get(STATS_PATH + "/seizures.{fmt}")
def stats_export(
    fmt: ExportFormat,
    current: SignedIn,
    by: By = None,
    date_from: From = "",
    date_to: To = "",
) -> Response:
    """The grouped figures as a CSV or XLSX file."""
    _format(fmt)
    filters = Filters.read(by or [], date_from, date_to)
    stats, receipt = current.vault.seizure_stats(
        current.user, by=filters.by, date_from=filters.date_from, date_to=filters.date_to
    )
    return _file(exports.stats_sheet(stats), "seizure-stats", fmt, receipt)


@router.get(STATS_PATH + "/before-after.{fmt}")
def before_after_export(fmt: ExportFormat, current: SignedIn) -> Response:
    """Before/after per crossing point as a CSV or XLSX file."""
    _format(fmt)
    figures, receipt = current.vault.seizure_before_after(current.user)
    return _file(exports.before_after_sheet(figures), "seizure-before-after", fmt, receipt)


class Names:
    """The pages' words for the figures' codes, and their numbers, in the reader's language."""

    def __init__(self, language: Language) -> None:
        self.language = language

    def commodity(self, code: str) -> str:
        """A commodity's name (the code itself if the list has grown since)."""
        return self.language.gettext(COMMODITIES[code]) if code in COMMODITIES else code

    def key(self, key: str) -> str:
        """A grouping key's column heading."""
        return self.language.gettext(KEY_NAMES[key])

    def value(self, key: str, value: str) -> str:
        """A grouping key's value as shown: commodities and directions translated."""
        if key == "commodity":
            return self.commodity(value)
        if key == "direction" and value in DIRECTIONS:
            return self.language.gettext(DIRECTIONS[value])
        return value

    def measure(self, measure: str) -> str:
        """A measure's heading (records, or a unit family with its unit)."""
        return self.language.gettext(MEASURE_NAMES[measure])

    def unit(self, measure: str) -> str:
        """A measure's unit, for an axis."""
        return self.language.gettext(UNIT_NAMES[measure])

    def number(self, value: float | None) -> str:
        """A figure in the reader's usual form (empty for none)."""
        if value is None:
            return ""
        return str(format_decimal(value, locale=self.language.code))

    def percent(self, ratio: float | None) -> str:
        """A relative change as a signed percentage (a dash where there was nothing before)."""
        if ratio is None:
            return "—"
        sign = "+" if ratio > 0 else ""
        return sign + str(format_decimal(ratio * 100, "#,##0.#", locale=self.language.code)) + " %"


def _monthly_charts(stats: SeizureStats, names: Names) -> list[Chart]:
    """One chart per unit family that has any quantity, with its table."""
    _ = names.language.gettext
    order = list(COMMODITIES)
    charts = []
    for family in FAMILIES:
        table = monthly_table(stats, family, order)
        if table.empty:
            continue
        heading = _("Monthly quantities: %(measure)s", measure=names.measure(family))
        text = ChartText(
            title=heading,
            desc=_("Quantity seized per month and commodity, in records you may read."),
            x_label=_("Month"),
            y_label=names.unit(family),
            empty=_("No records"),
        )
        svg = monthly_chart(
            table,
            text=text,
            names={c: names.commodity(c) for c in table.commodities},
            chart_id=f"chart-{family.replace('_', '-')}",
            number=names.number,
            palette=order,
        )
        charts.append(Chart(family, heading, svg, table=table))
    return charts


def _before_after_charts(figures: Sequence[BeforeAfter], names: Names) -> list[Chart]:
    """One chart per measure that any crossing point has a figure for, records first."""
    _ = names.language.gettext
    charts = []
    for measure in MEASURE_NAMES:
        if not any(getattr(f.before, measure) or getattr(f.after, measure) for f in figures):
            continue
        heading = _("Before and after the BLO opened: %(measure)s", measure=names.measure(measure))
        text = ChartText(
            title=heading,
            desc=_("Equal windows before and after each crossing point's BLO opened."),
            x_label=_("Crossing point"),
            y_label=names.unit(measure),
            empty=_("No records"),
        )
        svg = before_after_chart(
            figures,
            measure,
            text=text,
            before=_("Before"),
            after=_("After"),
            chart_id=f"chart-ba-{measure.replace('_', '-')}",
            number=names.number,
        )
        charts.append(Chart(measure, heading, svg, measure=measure))
    return charts


def _format(fmt: str) -> None:
    if fmt not in exports.FORMATS:
        raise InvalidInput("export as csv or xlsx")


def _file(sheet: exports.Sheet, stem: str, fmt: str, receipt: int) -> Response:
    write: Callable[[exports.Sheet], bytes] = exports.to_csv if fmt == "csv" else exports.to_xlsx
    headers = {**exports.attachment(stem, fmt), RECEIPT_HEADER: str(receipt)}
    return Response(write(sheet), media_type=exports.FORMATS[fmt], headers=headers)


def _day(value: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput("dates are YYYY-MM-DD") from None
