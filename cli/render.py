"""The one way the CLI shows text it did not write itself (server replies, ledger entries).

A reply may come from a malicious or compromised server, and a ledger entry may hold a name
someone tried to log in with: every character a terminal acts on, or that hides or reorders
text (the set :func:`vault.schemas.unsafe_char` names), is shown as a visible escape such as
``\\x1b`` or ``\\u202e``, and the result is a :class:`rich.text.Text`, which rich never reads
as markup (``[bold]``) or emoji codes (``:smile:``).
"""

from __future__ import annotations

from rich.text import Text

from vault.schemas import unsafe_char

__all__ = [
    "clean",
    "line",
    "text",
]


def _visible(ch: str) -> str:
    # unicode_escape writes \x1b, \u202e, \U000e0041, \n, and a lone surrogate as \ud800.
    return ch.encode("unicode_escape").decode("ascii")


def clean(value: object, *, multiline: bool = False) -> str:
    """``value`` as text with every unsafe character escaped; LF and TAB kept if ``multiline``."""
    text = value if isinstance(value, str) else str(value)
    return "".join(_visible(ch) if unsafe_char(ch, multiline=multiline) else ch for ch in text)


def text(value: object, *, multiline: bool = False, style: str = "") -> Text:
    """``value`` cleaned, as rich Text (never markup), optionally styled."""
    return Text(clean(value, multiline=multiline), style=style)


def line(*parts: str | Text) -> Text:
    """One line of text: ``str`` parts cleaned (one line), ``Text`` parts (already cleaned,
    perhaps styled) kept; so a server value in an f-string is safe too."""
    return Text.assemble(*(clean(p) if isinstance(p, str) else p for p in parts))
