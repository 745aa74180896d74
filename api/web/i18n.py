"""Languages and time zones of the pages.

Every language is one gettext catalogue under ``locale/<code>/LC_MESSAGES/messages.po``
(compiled to ``messages.mo`` beside it); the languages offered are the folders found there,
named by Babel in their own language. Adding Uzbek, Kazakh or Tajik is one new catalogue.
Times are stored in UTC and shown in the reader's zone.
"""

from __future__ import annotations

import gettext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_datetime
from babel.support import Translations

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "messages"
DEFAULT_LANGUAGE = "en"
# The zones of the offices that use the vault; a reader's default follows their country.
ZONES = ("Asia/Tashkent", "Asia/Almaty", "Asia/Dushanbe", "Asia/Bishkek", "Asia/Ashgabat", "UTC")
_COUNTRY_ZONE = {
    "UZ": "Asia/Tashkent",
    "KZ": "Asia/Almaty",
    "TJ": "Asia/Dushanbe",
    "KG": "Asia/Bishkek",
    "TM": "Asia/Ashgabat",
}


def zone_for(country: str, chosen: str | None) -> str:
    """The zone to show times in: the reader's choice, else their country's."""
    if chosen in ZONES:
        return chosen
    return _COUNTRY_ZONE.get(country, "UTC")


@dataclass(frozen=True)
class Language:
    """One language the pages are offered in."""

    code: str
    name: str  # in the language itself
    translations: gettext.NullTranslations

    def gettext(self, message: str, **values: Any) -> str:
        """``message`` in this language, with ``%(name)s`` placeholders filled."""
        text: str = self.translations.gettext(message)
        return text % values if values else text

    def ngettext(self, singular: str, plural: str, n: int, **values: Any) -> str:
        """The form of a message for ``n``, placeholders filled (``n`` among them)."""
        text: str = self.translations.ngettext(singular, plural, n)
        return text % {"n": n, **values}

    def datetime(self, moment: datetime | None, zone: str) -> str:
        """A time in ``zone``, in this language's usual form; empty for None."""
        if moment is None:
            return ""
        return str(format_datetime(moment, "medium", tzinfo=ZoneInfo(zone), locale=self.code))


class Languages:
    """The catalogues found under ``LOCALE_DIR``, loaded once."""

    def __init__(self, directory: Path = LOCALE_DIR) -> None:
        self.by_code: dict[str, Language] = {}
        for folder in sorted(p for p in directory.iterdir() if (p / "LC_MESSAGES").is_dir()):
            try:
                name = Locale.parse(folder.name).get_display_name(folder.name) or folder.name
            except (ValueError, UnknownLocaleError):
                continue  # not a language code: not a catalogue
            translations = Translations.load(str(directory), [folder.name], DOMAIN)
            self.by_code[folder.name] = Language(folder.name, name.capitalize(), translations)
        if DEFAULT_LANGUAGE not in self.by_code:
            self.by_code[DEFAULT_LANGUAGE] = Language(DEFAULT_LANGUAGE, "English", Translations())

    def choose(self, chosen: str | None, accept_language: str) -> Language:
        """The session's choice if offered, else the best of ``Accept-Language``, else
        English."""
        if chosen in self.by_code:
            return self.by_code[chosen]
        for code in _preferred(accept_language):
            primary = code.split("-")[0]
            if primary in self.by_code:
                return self.by_code[primary]
        return self.by_code[DEFAULT_LANGUAGE]


def _preferred(header: str) -> list[str]:
    """Language tags of an Accept-Language header, most wanted first (RFC 9110, 12.5.4)."""
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(header[:1000].split(",")):
        tag, _, params = item.strip().partition(";")
        weight = 1.0
        if params.strip().startswith("q="):
            try:
                weight = float(params.strip()[2:])
            except ValueError:
                weight = 0.0
        if tag and weight > 0:
            ranked.append((-weight, position, tag.lower()))
    return [tag for _, _, tag in sorted(ranked)]
