"""The catalogues: every string of the pages is in each, Russian is complete, and a new
language is one new catalogue file and nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from blo_vault.api.web.i18n import LOCALE_DIR, Languages

WEB = Path(__file__).parents[2] / "api" / "web"
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
METHODS = [("**.py", "python"), ("templates/**.html", "jinja2")]


def source_messages() -> set[str]:
    """Every message id the pages' sources use, as Babel extracts them."""
    found = set()
    for _, _, message, _, _ in extract_from_dir(str(WEB), METHODS, keywords=KEYWORDS):
        found.add(message[0] if isinstance(message, tuple) else message)
    return found


@pytest.mark.parametrize("language", ["en", "ru"])
def test_catalogue_has_every_message_translated(language: str) -> None:
    with (LOCALE_DIR / language / "LC_MESSAGES" / "messages.po").open("rb") as source:
        catalogue = read_po(source)
    ids = {m.id[0] if isinstance(m.id, tuple) else m.id for m in catalogue if m.id}
    assert ids == source_messages()
    untranslated = [
        m.id for m in catalogue if m.id and (not m.string or not all(m.string) or m.fuzzy)
    ]
    assert untranslated == []


def test_a_new_language_is_one_catalogue_file(tmp_path: Path) -> None:
    shutil.copytree(LOCALE_DIR, tmp_path, dirs_exist_ok=True)
    uz = tmp_path / "uz" / "LC_MESSAGES"
    uz.mkdir(parents=True)
    text = (LOCALE_DIR / "ru" / "LC_MESSAGES" / "messages.po").read_text(encoding="utf-8")
    text = text.replace('msgstr "Войти"', 'msgstr "Kirish"').replace("Language: ru", "Language: uz")
    (uz / "messages.po").write_text(text, encoding="utf-8")
    languages = Languages(tmp_path)
    assert set(languages.by_code) == {"en", "ru", "uz"}
    assert languages.by_code["uz"].name == "O‘zbek"
    assert languages.choose(None, "uz-UZ,ru;q=0.8").gettext("Sign in") == "Kirish"
    assert languages.choose(None, "kk,ru;q=0.8").gettext("Sign in") == "Войти"
    assert languages.choose(None, "fr").gettext("Sign in") == "Sign in"
