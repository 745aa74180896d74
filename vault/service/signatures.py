"""The server's check of an originator's signature on upload (issue 13), and the signature a
package's details show.

The client sends, after the files, a ``signature`` part: JSON ``{"key_id", "manifest",
"signature"}`` (manifest and signature in base64). The server rebuilds the manifest from what
it received (metadata, the digest of the validated seizure records, and each file's name, size
and SHA-256 as it sealed it), names the
first difference from the signed one, and verifies the signature against the uploader's
active registered key, inside the transaction that commits the package: an upload that fails
any check stores nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from vault import manifest
from vault.errors import AccessDenied, IntegrityError, InvalidInput
from vault.models import OfficerKey, User
from vault.schemas import FileInfo, NewPackage, PackageSignature, check_id
from vault.seizures.digest import records_sha256
from vault.seizures.schema import SeizureRecord
from vault.service._core import Principal

__all__ = ["MAX_SIGNATURE_PART", "SignedManifest", "check_upload", "parse_part", "shown"]

# A manifest of the largest allowed package (names up to 255 bytes) stays far below this.
MAX_SIGNATURE_PART = 4 << 20


@dataclass(frozen=True)
class SignedManifest:
    """A client's signed manifest, as sent: the key id, canonical bytes and signature."""

    key_id: str
    manifest: bytes
    signature: bytes

    def sealed_form(self) -> dict[str, str]:
        """What goes into the package's sealed metadata."""
        return {
            "key_id": self.key_id,
            "manifest": base64.b64encode(self.manifest).decode(),
            "signature": base64.b64encode(self.signature).decode(),
        }


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"signature part: {what} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"signature part: {what} is not valid base64") from None


def parse_part(raw: bytes) -> SignedManifest:
    """The ``signature`` part's JSON; InvalidInput if malformed."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidInput("signature part is not JSON") from None
    if not isinstance(data, dict) or set(data) != {"key_id", "manifest", "signature"}:
        raise InvalidInput("signature part must hold exactly key_id, manifest and signature")
    signature = _b64(data["signature"], "signature")
    if len(signature) != manifest.SIGNATURE_SIZE:
        raise InvalidInput("signature is malformed (an Ed25519 signature is 64 bytes)")
    return SignedManifest(
        key_id=check_id(data["key_id"], "key id"),
        manifest=_b64(data["manifest"], "manifest"),
        signature=signature,
    )


def received(
    package_id: str,
    agency: str,
    meta: NewPackage,
    files: list[FileInfo],
    records: Sequence[SeizureRecord],
) -> manifest.Manifest:
    """The manifest of what the server received (``records`` as validated)."""
    return manifest.Manifest(
        package_id=package_id,
        agency=agency,
        classification=meta.classification.value,
        handling=meta.handling.value,
        handling_note=meta.handling_note,
        title_sha256=manifest.sha256_text(meta.title),
        description_sha256=manifest.sha256_text(meta.description),
        records_sha256=records_sha256(records),
        files=tuple(manifest.ManifestFile(f.name, f.size, f.sha256) for f in files),
    )


def check_upload(
    session: Session,
    principal: Principal,
    signed: SignedManifest,
    actual: manifest.Manifest,
) -> None:
    """Refuse unless ``signed`` is the uploader's active key's signature of ``actual``:
    AccessDenied for a key that is unknown, another user's or revoked; InvalidInput for a
    manifest that differs from the upload or a signature that does not verify."""
    key = session.get(OfficerKey, signed.key_id)
    if key is None:
        raise AccessDenied(f"signing key {signed.key_id} is not registered")
    if key.user_id != principal.user_id:
        raise AccessDenied(f"signing key {signed.key_id} belongs to another user")
    if key.revoked_at is not None:
        raise AccessDenied(f"signing key {signed.key_id} is revoked")
    manifest.check_matches(manifest.decode(signed.manifest), actual)
    try:
        manifest.check_signature(key.public_key, signed.manifest, signed.signature)
    except IntegrityError as exc:
        raise InvalidInput(exc.message) from None


def shown(session: Session, sealed_form: Any) -> PackageSignature | None:
    """The signature a package's details show, from its sealed metadata (None: unsigned)."""
    if not isinstance(sealed_form, dict):
        return None
    key = session.get(OfficerKey, sealed_form["key_id"])
    user = session.get(User, key.user_id) if key is not None else None
    if key is None or user is None:  # keys are never deleted: only tampering gets here
        raise IntegrityError("the package's signing key is missing")
    return PackageSignature(
        key_id=key.id,
        signer=user.username,
        agency=user.agency_code,
        public_key=base64.b64encode(key.public_key).decode(),
        manifest=sealed_form["manifest"],
        signature=sealed_form["signature"],
        registered_seq=key.registered_seq,
        key_revoked=key.revoked_at is not None,
    )
