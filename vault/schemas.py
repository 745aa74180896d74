"""Public shapes the service returns and accepts; table models never leave the service."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from vault.errors import InvalidInput
from vault.models import Classification, Handling, ReleaseKind, ReleaseStatus, Role

__all__ = [
    "MAX_FILENAME_BYTES",
    "USERNAME",
    "AuditView",
    "CheckpointInfo",
    "ConsistencyProof",
    "Explanation",
    "FileInfo",
    "InclusionProof",
    "LedgerEntries",
    "LedgerReport",
    "LoginResult",
    "MultiLineText",
    "NewPackage",
    "OneLineText",
    "PackageDetail",
    "PackageList",
    "PackageSummary",
    "Receipt",
    "ReleaseInfo",
    "ReleaseResult",
    "UploadResult",
    "UserInfo",
    "check_agency",
    "check_country",
    "check_filename",
    "check_id",
    "check_text",
    "check_username",
    "filename_key",
    "unsafe_char",
]

_ID = re.compile(r"[0-9a-f]{32}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_AGENCY = re.compile(r"[A-Z0-9][A-Z0-9_-]{1,63}")
USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")
MAX_FILENAME_BYTES = 255


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a vault id (32 lowercase hex); InvalidInput otherwise."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidInput(f"{what} is not a valid id")
    return value


def check_country(value: str) -> str:
    """An ISO 3166-1 alpha-2 code, upper case."""
    if not isinstance(value, str) or not _COUNTRY.fullmatch(value):
        raise InvalidInput("country codes are ISO 3166-1 alpha-2, e.g. UZ")
    return value


def check_agency(value: str) -> str:
    """An agency code: upper-case letters, digits, '-' and '_', 2 to 64 characters."""
    if not isinstance(value, str) or not _AGENCY.fullmatch(value):
        raise InvalidInput("agency codes are 2-64 of A-Z, 0-9, '-' and '_', e.g. UZ-CUSTOMS")
    return value


def check_username(value: str) -> str:
    """A username: lower-case letters, digits, '.', '_' and '-', 2 to 64 characters."""
    if not isinstance(value, str) or not USERNAME.fullmatch(value):
        raise InvalidInput("usernames are 2-64 of a-z, 0-9, '.', '_' and '-'")
    return value


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


# Raising InvalidInput (not ValueError) from a validator makes pydantic let it through as it
# is, so the API answers with this message, naming the field and the code point. The check
# runs before pydantic's own: that one refuses a lone surrogate (JSON "\ud800") without
# saying which character; anything not a string is left to pydantic to refuse.
def _one_line(value: object, info: ValidationInfo) -> object:
    return check_text(value, info.field_name or "text") if isinstance(value, str) else value


def _lines(value: object, info: ValidationInfo) -> object:
    if not isinstance(value, str):
        return value
    return check_text(value, info.field_name or "text", multiline=True)


OneLineText = Annotated[str, BeforeValidator(_one_line)]
"""Text on one line: refused if it holds anything :func:`unsafe_char` names, LF and TAB too."""

MultiLineText = Annotated[str, BeforeValidator(_lines)]
"""Text that may hold LF and TAB (CRLF taken as LF); otherwise as :data:`OneLineText`."""

# Device names Windows opens instead of a file, whatever the extension (COM/LPT with the
# superscript digits too: Windows reads those as 1-3).
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{n}" for port in ("COM", "LPT") for n in "123456789\u00b9\u00b2\u00b3"}
)
_WINDOWS_ILLEGAL = frozenset('<>:"|?*\\/')


def check_filename(name: str) -> str:
    """A safe base filename, NFC-normalised: no path parts, nothing :func:`unsafe_char` names
    (nor any format character), at most 255 bytes, and a name Windows can hold too (no
    reserved device name, none of ``<>:"|?*\\/``, no trailing dot or space)."""
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


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class NewPackage(BaseModel):
    """What an officer gives when uploading, besides the files."""

    model_config = ConfigDict(extra="forbid")

    # Title and structured fields are one line; description and the H3 note may hold LF and
    # TAB. None may hold what a terminal acts on (see unsafe_char).
    title: OneLineText = Field(min_length=1, max_length=500)
    description: MultiLineText = Field(default="", max_length=20_000)
    classification: Classification = Classification.UNCLASSIFIED
    handling: Handling = Handling.H0
    handling_note: MultiLineText = Field(default="", max_length=2_000)
    fields: dict[OneLineText, OneLineText] = Field(default_factory=dict, max_length=50)

    @field_validator("fields")
    @classmethod
    def _short_fields(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not 1 <= len(key) <= 64 or len(item) > 1000:
                raise ValueError("structured fields: names 1-64 characters, values <= 1000")
        return value


class FileInfo(_Out):
    """A file of a package, as its reader sees it."""

    id: str
    name: str
    size: int
    sha256: str


class ReleaseInfo(_Out):
    """A release of a package to a country or one agency."""

    id: str
    package_id: str
    country: str
    agency: str | None
    status: ReleaseStatus
    kind: ReleaseKind
    in_force: bool
    not_before: datetime | None
    expires_at: datetime | None
    created_at: datetime
    requested_by: str
    decided_by: str | None


class PackageSummary(_Out):
    """A package in a listing."""

    id: str
    title: str
    classification: Classification
    handling: Handling
    agency: str
    country: str
    created_at: datetime
    size: int
    file_count: int


class PackageDetail(PackageSummary):
    """A package with its description, files and (for the originator) its releases."""

    description: str
    handling_note: str
    fields: dict[str, str]
    digest: str
    creator: str
    files: list[FileInfo]
    releases: list[ReleaseInfo]


class Receipt(_Out):
    """Sequence number of the ledger entry an action caused."""

    receipt: int


class AuditView(_Out):
    """An auditor's view of a package: who, when, how sensitive, to whom; no titles or content."""

    id: str
    agency: str
    country: str
    classification: Classification
    handling: Handling
    created_at: datetime
    size: int
    file_count: int
    file_ids: list[str]
    releases: list[ReleaseInfo]


class Explanation(_Out):
    """Why a request is allowed or denied (full form for auditors and admins)."""

    allowed: bool
    user: str
    package: str
    action: str
    policy_hash: str
    relation: str | None = None
    facts: dict[str, object] | None = None
    rules: list[list[str]] | None = None
    grants: list[str] | None = None
    notes: list[str] | None = None


class PackageList(_Out):
    """One page of the packages the caller may read."""

    items: list[PackageSummary]
    limit: int
    offset: int
    receipt: int


class UploadResult(_Out):
    """An accepted upload."""

    package: PackageDetail
    receipt: int


class ReleaseResult(_Out):
    """A release created."""

    release: ReleaseInfo
    receipt: int


class LoginResult(_Out):
    """A fresh access token, and the refresh token of its session (login, refresh, password)."""

    access_token: str
    token_type: str = "bearer"
    # Seconds the access token lives.
    expires_in: int
    receipt: int
    # Single use: each refresh returns a new one, and presenting a used one ends the session.
    refresh_token: str
    # Seconds until the session dies unless refreshed (idle timeout) ...
    refresh_expires_in: int
    # ... and until it ends whatever happens (absolute lifetime).
    session_expires_in: int


class UserInfo(_Out):
    """A user, without secrets."""

    id: str
    username: str
    agency: str
    country: str
    role: Role
    clearance: Classification
    disabled: bool


class LedgerReport(_Out):
    """Outcome of verifying the ledger."""

    ok: bool
    size: int
    root: str
    checkpoint_size: int | None
    first_bad_seq: int | None = None
    problem: str | None = None


class CheckpointInfo(_Out):
    """A signed checkpoint and the key that verifies it."""

    origin: str
    size: int
    root: str
    vkey: str
    note: str
    # Ledger entry recording this read (absent when the server signed on its own).
    receipt: int | None = None


class WitnessedCheckpointInfo(CheckpointInfo):
    """The newest checkpoint a quorum of witnesses cosigned: ``note`` carries the log's
    signature and the cosignature lines; counterparts check it with their own policy."""

    published_at: datetime


class WitnessLag(_Out):
    """How far one witness of the policy is behind: the size and time of its last cosignature
    the vault's publisher knows of, and the error of its last failed round (None if fine)."""

    name: str
    size: int
    behind: int
    cosigned_at: datetime | None
    age_seconds: float | None
    error: str | None
    checked_at: datetime


class WitnessStatus(_Out):
    """The ledger's size and what the witnesses have cosigned of it (``ledger status``)."""

    ledger_size: int
    witnessed_size: int | None
    witnessed_at: datetime | None
    witnesses: list[WitnessLag]


class InclusionProof(_Out):
    """Proof that entry ``leaf_index`` is in the tree of ``tree_size`` entries."""

    leaf_index: int
    tree_size: int
    entry: str
    leaf_hash: str
    hashes: list[str]
    root: str
    checkpoint: str
    # Ledger entry recording this read (absent when the server signed on its own).
    receipt: int | None = None


class ConsistencyProof(_Out):
    """Proof that the tree of ``new_size`` entries extends the tree of ``old_size``."""

    old_size: int
    new_size: int
    old_root: str
    new_root: str
    hashes: list[str]
    checkpoint: str
    # Ledger entry recording this read (absent when the server signed on its own).
    receipt: int | None = None


class LedgerEntries(_Out):
    """A range of entries, as base64 of their exact bytes."""

    start: int
    entries: list[str]
    # Openings of the committed entries in the range that the caller may see (README "What
    # the log reveals"): {"seq": n, "fields": {name: [salt base64, value]}}.
    openings: list[dict[str, Any]] = []
    # Ledger entry recording this read (absent when the server signed on its own).
    receipt: int | None = None
