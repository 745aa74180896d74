"""One seizure record, validated by one schema for the API, the CLI and the importer.

The controlled lists (commodity, unit, direction) have English lower-case codes; the Russian
names agencies keep their tables in are accepted on input and stored as the English code.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from vault.errors import InvalidInput
from vault.text import check_text

__all__ = [
    "COMMODITIES",
    "DIRECTIONS",
    "MAX_RECORDS",
    "UNITS",
    "UNIT_FAMILY",
    "CrossingPointInfo",
    "SeizureRecord",
    "check_crossing_point",
    "check_rows",
    "normalise_commodity",
    "refuse_if_any",
    "validate_records",
]

# UNODC's drug categories and the other goods BLOs report, as stored (English, lower case).
COMMODITIES = (
    "heroin",
    "opium",
    "cannabis resin",
    "cannabis herb",
    "methamphetamine",
    "other synthetic drugs",
    "precursor chemicals",
    "cash",
    "weapons",
    "other",
)
_COMMODITY_RU = {
    "героин": "heroin",
    "опий": "opium",
    "опиум": "opium",
    "смола каннабиса": "cannabis resin",
    "гашиш": "cannabis resin",
    "трава каннабиса": "cannabis herb",
    "марихуана": "cannabis herb",
    "метамфетамин": "methamphetamine",
    "другие синтетические наркотики": "other synthetic drugs",
    "прочие синтетические наркотики": "other synthetic drugs",
    "синтетические наркотики": "other synthetic drugs",
    "прекурсоры": "precursor chemicals",
    "химические прекурсоры": "precursor chemicals",
    "наличные": "cash",
    "денежные средства": "cash",
    "валюта": "cash",
    "оружие": "weapons",
    "другое": "other",
    "прочее": "other",
}
UNITS = ("g", "kg", "l", "tablets", "units")
_UNIT_RU = {"г": "g", "гр": "g", "кг": "kg", "л": "l", "таблетки": "tablets", "табл": "tablets"}
_UNIT_RU |= {"шт": "units", "единицы": "units", "ед": "units"}
# Each unit's family and its factor to the family's unit: mass in kg, volume in l, counts.
UNIT_FAMILY: dict[str, tuple[str, float]] = {
    "g": ("kg", 0.001),
    "kg": ("kg", 1.0),
    "l": ("l", 1.0),
    "tablets": ("units", 1.0),
    "units": ("units", 1.0),
}
DIRECTIONS = ("entry", "exit")
_DIRECTION_RU = {"въезд": "entry", "ввоз": "entry", "выезд": "exit", "вывоз": "exit"}

_CROSSING_POINT = re.compile(r"[A-Z0-9][A-Z0-9_-]{1,31}")
_SPACES = re.compile(r"[\s_]+")
_MAX_QUANTITY = 1e9


def _key(value: object) -> str:
    """Lower case, underscores and runs of spaces as one space, trimmed ('Cannabis_Resin')."""
    return _SPACES.sub(" ", str(value)).strip().lower().rstrip(".")


def _choice(value: object, what: str, codes: tuple[str, ...], russian: dict[str, str]) -> str:
    key = _key(value)
    if key in codes:
        return key
    if key in russian:
        return russian[key]
    # The value itself is not echoed: error messages may be logged, and records are sensitive.
    raise ValueError(f"unknown {what} (one of: {', '.join(codes)})")


def normalise_commodity(value: object) -> str:
    """The English code of a commodity given in English or Russian; ValueError otherwise."""
    return _choice(value, "commodity", COMMODITIES, _COMMODITY_RU)


def check_crossing_point(value: object) -> str:
    """A crossing point code: 2-32 of A-Z, 0-9, '-' and '_' (lower case is raised)."""
    code = str(value).strip().upper() if isinstance(value, str) else ""
    if not _CROSSING_POINT.fullmatch(code):
        raise InvalidInput("crossing point codes are 2-32 of A-Z, 0-9, '-' and '_', e.g. OYBEK")
    return code


def _crossing_point(value: object) -> str:
    try:
        return check_crossing_point(value)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None


_DATE_FORMATS = ("%Y-%m-%d", "%d.%m.%Y")
_TIME_FORMATS = ("", " %H:%M", " %H:%M:%S", "T%H:%M", "T%H:%M:%S")


def _when(value: object) -> dt.datetime:
    """A date and time: a datetime or date (from XLSX), ISO 8601 or DD.MM.YYYY [HH:MM[:SS]].

    Times with a zone are converted to UTC; times without one are kept as written (the
    crossing point's local time, as the agencies record it)."""
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        when = _parse_when(text)
    else:
        raise ValueError("date must be a date and time, e.g. 2024-05-01 14:30")
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    if not 1990 <= when.year <= 2100:
        raise ValueError("date must be between 1990 and 2100")
    return when.replace(microsecond=0)


def _parse_when(text: str) -> dt.datetime:
    for day in _DATE_FORMATS:
        for time in _TIME_FORMATS:
            try:
                return dt.datetime.strptime(text, day + time)
            except ValueError:
                continue
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("bad date: use YYYY-MM-DD or DD.MM.YYYY, optionally with HH:MM") from None


def _quantity(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("quantity must be a number")
    if isinstance(value, str):
        # "1 234,5" as typed in Russian locales
        value = value.strip().replace("\u00a0", "").replace(" ", "").replace(",", ".")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError("quantity must be a number") from None
    except OverflowError:  # an integer too large for a float
        raise ValueError(f"quantity must be at most {_MAX_QUANTITY:.0f}") from None
    if math.isnan(number):
        raise ValueError("quantity must be a number")
    if number <= 0:
        raise ValueError("quantity must be greater than 0")
    if number > _MAX_QUANTITY:  # infinity too
        raise ValueError(f"quantity must be at most {_MAX_QUANTITY:.0f}")
    return number


def _detained(value: object) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0
    if isinstance(value, bool):
        raise ValueError("detained must be a whole number >= 0")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("detained must be a whole number from 0 to 100000")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        value = value.strip()
    try:
        number: int = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise ValueError("detained must be a whole number >= 0") from None
    if not 0 <= number <= 100_000:
        raise ValueError("detained must be a whole number from 0 to 100000")
    return number


def _one_line(value: object, info: ValidationInfo) -> object:
    # vault.schemas.OneLineText's check, defined here because vault.schemas shows records
    # (PackageDetail) and so imports this module.
    return check_text(value, info.field_name or "text") if isinstance(value, str) else value


OneLineText = Annotated[str, BeforeValidator(_one_line)]


def _optional_text(value: object) -> Any:
    return "" if value is None else value


class SeizureRecord(BaseModel):
    """One seizure at a border-crossing point. Field names are the import's column headers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    date: Annotated[dt.datetime, BeforeValidator(_when)]
    crossing_point: Annotated[str, BeforeValidator(_crossing_point)]
    direction: str
    commodity: Annotated[str, BeforeValidator(normalise_commodity)]
    quantity: Annotated[float, BeforeValidator(_quantity)]
    unit: str
    concealment: Annotated[OneLineText, BeforeValidator(_optional_text)] = Field(
        default="", max_length=200
    )
    transport: Annotated[OneLineText, BeforeValidator(_optional_text)] = Field(
        default="", max_length=200
    )
    detained: Annotated[int, BeforeValidator(_detained)] = 0

    @field_validator("direction", mode="before")
    @classmethod
    def _direction(cls, value: object) -> str:
        return _choice(value, "direction", DIRECTIONS, _DIRECTION_RU)

    @field_validator("unit", mode="before")
    @classmethod
    def _unit(cls, value: object) -> str:
        return _choice(value, "unit", UNITS, _UNIT_RU)

    def in_family(self) -> tuple[str, float]:
        """The unit family ('kg', 'l' or 'units') and the quantity in the family's unit."""
        family, factor = UNIT_FAMILY[self.unit]
        return family, self.quantity * factor


@dataclass(frozen=True)
class CrossingPointInfo:
    """A registered border-crossing point and the date its BLO opened."""

    code: str
    country: str
    name: str
    blo_opened: dt.date


# At most this many records a package, and this many errors listed in one refusal.
MAX_RECORDS = 50_000
_MAX_ERRORS_SHOWN = 100


def validate_records(
    rows: Sequence[Mapping[str, object]], *, first_row: int = 1
) -> list[SeizureRecord]:
    """Every row checked against :class:`SeizureRecord`; InvalidInput listing every bad row
    and column ("row 3, column quantity: ...") if any is bad, so nothing is stored.

    ``first_row`` is the number the first row is reported as (2 for a file with a header)."""
    records, problems = check_rows(rows, first_row=first_row)
    refuse_if_any(problems)
    return records


def check_rows(
    rows: Sequence[Mapping[str, object]], *, first_row: int = 1
) -> tuple[list[SeizureRecord], list[str]]:
    """The valid records, and a message for each bad row and column."""
    if len(rows) > MAX_RECORDS:
        raise InvalidInput(f"at most {MAX_RECORDS} seizure records a package")
    records: list[SeizureRecord] = []
    problems: list[str] = []
    fields = SeizureRecord.model_fields
    for number, row in enumerate(rows, start=first_row):
        if not isinstance(row, Mapping):
            problems.append(f"row {number}: a record must be an object")
            continue
        unknown = sum(1 for key in row if key not in fields)
        if unknown > 1:
            # Counted, not validated: pydantic would build an error for each (a JSON record of
            # 1.5 million made-up keys once took 1.6 GiB).
            problems.append(f"row {number}: {unknown} unknown columns")
            continue
        try:
            records.append(SeizureRecord.model_validate(dict(row)))
        except ValidationError as exc:
            problems.extend(_row_problems(number, exc))
    return records, problems


def refuse_if_any(problems: Sequence[str]) -> None:
    """InvalidInput listing ``problems`` (the first hundred), if there are any."""
    if problems:
        shown = problems[:_MAX_ERRORS_SHOWN]
        more = len(problems) - len(shown)
        raise InvalidInput(
            f"{len(problems)} error(s) in the seizure records, nothing stored: "
            + "; ".join(shown)
            + (f"; and {more} more" if more else "")
        )


def _row_problems(number: int, exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors(include_input=False, include_url=False):
        column = ".".join(str(part) for part in error.get("loc", ())) or "?"
        if error["type"] == "missing":
            message = "missing"
        elif error["type"] == "extra_forbidden":
            message = "unknown column"
        else:
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        out.append(f"row {number}, column {column}: {message}")
    return out
