"""Languages and time zones of the pages.

Every language is one gettext catalogue, ``locale/<code>/LC_MESSAGES/messages.po``, compiled
in memory when the app starts; the languages offered are the catalogues found there, named by
Babel in their own language. Adding Uzbek, Kazakh or Tajik is one new catalogue.
Times are stored in UTC and shown in the reader's zone.
"""

from __future__ import annotations

import gettext
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
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


def N_(message: str) -> str:  # the gettext convention for "translate later"
    """Mark a message for the catalogues; translated where it is shown."""
    return message


# Words the templates translate from data (markings, roles, release states, decisions): named
# here so extraction puts them in every catalogue.
DATA_WORDS = (
    N_("UNCLASSIFIED"),
    N_("RESTRICTED"),
    N_("CONFIDENTIAL"),
    N_("SECRET"),
    N_("officer"),
    N_("supervisor"),
    N_("auditor"),
    N_("admin"),
    N_("pending"),
    N_("active"),
    N_("rejected"),
    N_("revoked"),
    N_("allow"),
    N_("deny"),
    N_("error"),
    # The facts an explanation lists, and yes or no.
    N_("role"),
    N_("agency"),
    N_("country"),
    N_("relations"),
    N_("clearance"),
    N_("classification"),
    N_("cleared"),
    N_("handling"),
    N_("acknowledged"),
    N_("originating_agency"),
    N_("yes"),
    N_("no"),
)


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
        return text % {"n": format_decimal(n, locale=self.code), **values}

    def datetime(self, moment: datetime | None, zone: str) -> str:
        """A time in ``zone``, in this language's usual form; empty for None. Never raises:
        a time the zone can't express is shown in UTC, labelled so."""
        if moment is None:
            return ""
        # At the ends of the calendar (a release valid "until 9999-12-31T23:59:59Z") the
        # reader's zone runs past year 9999 or before year 1. Such times may already be stored,
        # and the page that shows them is the one where the release is revoked, so it must
        # render: then the same moment in UTC, which the calendar holds, labelled so.
        for tzinfo, label in ((ZoneInfo(zone), ""), (UTC, " UTC")):
            try:
                text = format_datetime(moment, "medium", tzinfo=tzinfo, locale=self.code)
            except (OverflowError, ValueError):
                continue
            return str(text) + label
        # Only an aware time whose own offset puts it off the calendar in UTC gets here.
        return moment.isoformat()


class Languages:
    """The catalogues found under ``LOCALE_DIR``, read once when the app is built.

    The ``.po`` files are compiled in memory: a catalogue is the one file a translator edits,
    with no build step, so a fresh ``pip install -e .`` serves every language there is.
    """

    def __init__(self, directory: Path = LOCALE_DIR) -> None:
        self.by_code: dict[str, Language] = {}
        for po in sorted(directory.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
            code = po.parent.parent.name
            try:
                name = Locale.parse(code).get_display_name(code) or code
            except (ValueError, UnknownLocaleError):
                continue  # not a language code: not a catalogue
            self.by_code[code] = Language(code, name.capitalize(), compile_catalogue(po))
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


def compile_catalogue(po: Path) -> Translations:
    """A ``.po`` catalogue as translations (fuzzy entries left out, as msgfmt does)."""
    with po.open("rb") as source:
        catalogue = read_po(source, locale=po.parent.parent.name)
    compiled = io.BytesIO()
    write_mo(compiled, catalogue)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


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
