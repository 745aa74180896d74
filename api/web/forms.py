"""Reading the pages' form values: dates and times in the reader's zone, enum choices, and
the page number; a bad value is InvalidInput like any other."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, time, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo

from vault.errors import InvalidInput

E = TypeVar("E", bound=enum.Enum)
PAGE_SIZE = 25
OUT_OF_RANGE = "the date is too near year 1 or year 9999 to be read in UTC"


def choice(kind: type[E], value: str | None) -> E | None:
    """The member of ``kind`` named by a form value; None when empty."""
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise InvalidInput("not one of the choices offered") from None


def day_start(value: str | None, zone: str, *, after: bool = False) -> datetime | None:
    """The UTC start of a day (``YYYY-MM-DD``) in the reader's zone; of the next day if
    ``after`` (so an "until" date includes that whole day)."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidInput("dates are YYYY-MM-DD") from None
    try:
        if after:
            day += timedelta(days=1)
        return datetime.combine(day, time(), tzinfo=ZoneInfo(zone)).astimezone(UTC)
    except OverflowError:
        # The first and last days of the calendar: the next day, or the day's start in UTC,
        # is off it. A refusal like any other bad date, not a server error.
        raise InvalidInput(OUT_OF_RANGE) from None


def local_time(value: str | None, zone: str) -> datetime | None:
    """A ``datetime-local`` form value, read in the reader's zone, as UTC."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput("times are YYYY-MM-DDTHH:MM") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00 east of UTC is before year 1 in UTC.
        raise InvalidInput(OUT_OF_RANGE) from None


def optional(value: str | None) -> str | None:
    """A text field, stripped; None when empty."""
    value = (value or "").strip()
    return value or None
