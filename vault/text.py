"""Text the vault takes in and shows: what a terminal would act on, and safe filenames.

Kept apart from :mod:`vault.schemas` (which re-exports them) so that the command line can use
the same checks without importing pydantic models and the database models at start-up.
"""

from __future__ import annotations

import functools
import sys
import unicodedata

from vault.errors import InvalidInput

__all__ = [
    "MAX_FILENAME_BYTES",
    "check_filename",
    "check_text",
    "filename_key",
    "safe_text_pattern",
    "unsafe_char",
]

MAX_FILENAME_BYTES = 255

# ZWNJ and ZWJ are the only format characters kept: Persian, Dari, Pashto and Indic scripts
# and emoji sequences need them, and they can't reorder or hide other text.
_JOINERS = frozenset("\u200c\u200d")
_KINDS = {
    "Cc": "control character",
    "Cf": "invisible format character",
    "Cs": "surrogate",
    "Zl": "line separator",
    "Zp": "paragraph separator",
}


def unsafe_char(ch: str, *, multiline: bool = False) -> bool:
    """True if ``ch`` is something a terminal acts on, or that hides or reorders text.

    That is: every C0/C1 control and DEL (ESC starts a sequence that can hide or rewrite what
    is shown; a lone CR overwrites a line) except LF and TAB in multi-line text; every format
    character but ZWNJ and ZWJ (bidi overrides and isolates reorder text, zero-width and tag
    characters hide it); surrogates; line and paragraph separators (some terminals break
    lines on them); and noncharacters. The CLI escapes the same set in what it shows.
    """
    if multiline and ch in "\n\t":
        return False
    category = unicodedata.category(ch)
    if category in _KINDS:
        return ch not in _JOINERS
    return _noncharacter(ord(ch))


@functools.cache
def safe_text_pattern(*, multiline: bool = False) -> str:
    """A regular expression matching text with nothing :func:`unsafe_char` names, read
    alike by ECMA-262 and Python's re: the JSON schema states the check with it, so a client
    generating requests from the schema (a fuzzer, say) sends only what is accepted. Built
    from this Python's Unicode database (a few tenths of a second: when a schema is first
    made, not on import)."""
    ranges: list[tuple[int, int]] = []
    for cp in range(sys.maxunicode + 1):
        # Not surrogates: a pattern can't name them (Rust's regex, which JSON schema
        # validators use, refuses \ud800), and no text a JSON decoder makes whole holds one.
        if not 0xD800 <= cp <= 0xDFFF and unsafe_char(chr(cp), multiline=multiline):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))

    def escape(cp: int) -> str:
        # ECMA-262 (the dialect of JSON schema patterns) has no escape for a code point past
        # U+FFFF without its "u" flag, and Python's re none in ECMA's spelling: such a code
        # point is written as itself, which both read as one character.
        return f"\\u{cp:04x}" if cp <= 0xFFFF else chr(cp)

    refused = "".join(escape(a) if a == b else f"{escape(a)}-{escape(b)}" for a, b in ranges)
    return f"^[^{refused}]*$"


def _noncharacter(cp: int) -> bool:
    return 0xFDD0 <= cp <= 0xFDEF or cp & 0xFFFE == 0xFFFE


def _unsafe_message(what: str, ch: str) -> str:
    cp = ord(ch)
    kind = "noncharacter" if _noncharacter(cp) else _KINDS[unicodedata.category(ch)]
    hint = " (one line only)" if ch in "\n\t" else ""
    return f"{what}: {kind} U+{cp:04X} is not allowed{hint}"


def check_text(value: str, what: str, *, multiline: bool = False) -> str:
    """``value`` if a terminal can show it as it is; InvalidInput naming ``what`` and the
    first offending code point otherwise (see :func:`unsafe_char`).

    In multi-line text CRLF line ends become LF (what a pasted Windows text holds); a CR left
    after that would let a line overwrite the one before it, so it is refused.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text")
    if multiline:
        value = value.replace("\r\n", "\n")
    for ch in value:
        if unsafe_char(ch, multiline=multiline):
            raise InvalidInput(_unsafe_message(what, ch))
    return value


# Device names Windows opens instead of a file, whatever the extension (COM/LPT with the
# superscript digits too: Windows reads those as 1-3).
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{n}" for port in ("COM", "LPT") for n in "123456789\u00b9\u00b2\u00b3"}
)
_WINDOWS_ILLEGAL = frozenset('<>:"|?*\\/')


def check_filename(name: str) -> str:
    """A safe base filename, NFC-normalised: no path parts, not hidden (a leading dot),
    nothing :func:`unsafe_char` names (nor any format character), at most 255 bytes, and a
    name Windows can hold too (no reserved device name, none of ``<>:"|?*\\/``, no
    trailing dot or space)."""
    if not isinstance(name, str):
        raise InvalidInput("filename must be text")
    name = unicodedata.normalize("NFC", name)
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise InvalidInput("filenames must be plain names without path separators")
    for ch in name:
        if unsafe_char(ch) or unicodedata.category(ch) == "Cf":
            raise InvalidInput(f"filenames must not contain control characters (U+{ord(ch):04X})")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        raise InvalidInput(f"filenames are at most {MAX_FILENAME_BYTES} bytes")
    if name != name.strip() or name.startswith("-"):
        raise InvalidInput("filenames must not start with '-' or have outer spaces")
    if name.startswith("."):
        # A hidden file lands unseen, and some run: a package saved into a home folder
        # could plant a .bash_profile or .bashrc.
        raise InvalidInput("filenames must not start with '.' (hidden files)")
    if any(ch in _WINDOWS_ILLEGAL for ch in name):
        raise InvalidInput('filenames must not contain any of < > : " | ? * \\ /')
    if name.endswith("."):
        raise InvalidInput("filenames must not end with a dot")
    if name.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        raise InvalidInput("filenames must not be a Windows device name (CON, NUL, COM1...)")
    return name


def filename_key(name: str) -> str:
    """What two filenames clash on: equal after NFC and case folding, they would be one file
    on a case-insensitive or normalising file system (NTFS, APFS)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())
