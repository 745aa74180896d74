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
    if after:
        day += timedelta(days=1)
    return datetime.combine(day, time(), tzinfo=ZoneInfo(zone)).astimezone(UTC)


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
    return moment.astimezone(UTC)


def optional(value: str | None) -> str | None:
    """A text field, stripped; None when empty."""
    value = (value or "").strip()
    return value or None
