"""The one way the CLI shows text it did not write itself (server replies, ledger entries).

A reply may come from a malicious or compromised server, and a ledger entry may hold a name
someone tried to log in with: every character a terminal acts on, or that hides or reorders
text (the set :func:`vault.schemas.unsafe_char` names), is shown as a visible escape such as
``\\x1b`` or ``\\u202e``, and the result is a :class:`rich.text.Text`, which rich never reads
as markup (``[bold]``) or emoji codes (``:smile:``).

Every command prints through the two consoles here, ``out`` (stdout: results) and ``err``
(stderr: messages, progress bars), and writes ``--json`` replies with :func:`print_json`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

from vault.text import unsafe_char

# soft_wrap: messages stay one line whatever the terminal width (scripts grep them).
__all__ = [
    "cells",
    "clean",
    "err",
    "line",
    "out",
    "print_json",
    "print_json_line",
    "print_verbatim",
    "text",
]

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def print_json(data: Any) -> None:
    """Write ``data`` to stdout as indented JSON with sorted keys (``--json`` output)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_json_line(data: Any) -> None:
    """Write ``data`` to stdout as one line of JSON (a stream of records, one per line)."""
    sys.stdout.write(json.dumps(data) + "\n")


def print_verbatim(text: str) -> None:
    """Write ``text`` to stdout byte for byte: only for text the vault itself produced and
    whose exact bytes matter, such as a signed note."""
    sys.stdout.write(text)


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


def cells(*values: object) -> list[Text]:
    """One table row: each value cleaned (one line), in order."""
    return [text(value) for value in values]
