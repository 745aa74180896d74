"""Public shapes the service returns and accepts; table models never leave the service."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from vault.errors import InvalidInput
from vault.kinds import Classification, Handling, ReleaseKind, ReleaseStatus, Role
from vault.seizures.schema import SeizureRecord

# The text checks live in vault.text (light to import: the CLI uses them); named here too.
from vault.text import (
    MAX_FILENAME_BYTES,
    check_filename,
    check_text,
    filename_key,
    safe_text_pattern,
    unsafe_char,
)

__all__ = [
    "MAX_FILENAME_BYTES",
    "USERNAME",
    "AuditView",
    "CheckpointInfo",
    "ConsistencyProof",
    "Explanation",
    "FileInfo",
    "InclusionProof",
    "KeyHistory",
    "LedgerEntries",
    "LedgerReport",
    "LoginResult",
    "MultiLineText",
    "NewPackage",
    "OfficerKeyInfo",
    "OneLineText",
    "PackageDetail",
    "PackageList",
    "PackageSignature",
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


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a vault id (32 lowercase hex); InvalidInput otherwise."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidInput(f"{what} is not a valid id")
    return value


def is_id(value: object) -> bool:
    """Whether ``value`` is a well-formed id (only those may enter the ledger as targets)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


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


class _SafeTextSchema:
    """States in the JSON schema what the text check refuses, as a pattern (combined with a
    field's own, which must then match somewhere in the text)."""

    def __init__(self, *, multiline: bool) -> None:
        self.multiline = multiline

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        safe = safe_text_pattern(multiline=self.multiline)
        own = schema.get("pattern")
        schema["pattern"] = safe if own is None else f"^(?=[\\s\\S]*?(?:{own})){safe[1:]}"
        return schema


OneLineText = Annotated[str, BeforeValidator(_one_line), _SafeTextSchema(multiline=False)]
"""Text on one line: refused if it holds anything :func:`unsafe_char` names, LF and TAB too."""

MultiLineText = Annotated[str, BeforeValidator(_lines), _SafeTextSchema(multiline=True)]
"""Text that may hold LF and TAB (CRLF taken as LF); otherwise as :data:`OneLineText`."""


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
    # Chosen by a signing client (a fresh random id), so that it can sign a manifest naming
    # the package before the server has seen it (issue 13); assigned by the server if absent.
    package_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")

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


class PackageSignature(_Out):
    """The originating officer's signature of a package's manifest (vault.manifest), as the
    server checked it at upload. A client that does not trust the server checks it again."""

    key_id: str
    signer: str
    agency: str
    public_key: str  # base64 of the 32-byte Ed25519 key
    manifest: str  # base64 of the canonical manifest bytes
    signature: str  # base64 of the 64-byte signature
    registered_seq: int  # the key's key.register ledger entry
    key_revoked: bool


class PackageDetail(PackageSummary):
    """A package with its description, files and (for the originator) its releases."""

    description: str
    handling_note: str
    fields: dict[str, str]
    digest: str
    creator: str
    files: list[FileInfo]
    releases: list[ReleaseInfo]
    # None: uploaded unsigned (the web pages, or a vault where signatures are optional).
    signature: PackageSignature | None = None
    # The package's seizure records, validated, in upload order: shown to whoever may read
    # the package, so a recipient can check them against the signed manifest's digest.
    records: list[SeizureRecord] = Field(default_factory=list)


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
    receipt: int | None = None  # the check's own ledger entry (over the API)


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


class OfficerKeyInfo(_Out):
    """A registered officer key and, when asked for, the inclusion proof of its registration
    entry up to a signed checkpoint."""

    id: str
    username: str
    agency: str
    public_key: str
    created_at: datetime
    registered_seq: int
    revoked_at: datetime | None = None
    revoked_seq: int | None = None
    proof: InclusionProof | None = None
    # The registration entry's C2SP tlog-proof bundle up to the newest witnessed checkpoint
    # (None: no witnessed checkpoint covers it yet), for recipients holding a witness policy.
    witnessed_proof: str | None = None
    receipt: int | None = None


class KeyHistory(_Out):
    """Every key.register / key.revoke ledger entry naming one user, each with its inclusion
    proof, for the user (or their agency's auditor) to compare with the keys they made."""

    username: str
    entries: list[InclusionProof]
    receipt: int | None = None
