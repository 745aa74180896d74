"""Signed package manifests (issue 13): the canonical bytes an officer signs for a package.

A manifest states what the originating officer sent: the package id, the originating agency,
classification, handling code and note, the SHA-256 of the title, of the description and of
the package's seizure records (vault.seizures.digest; the empty list's when it has none), and
for each file, in upload order, its name, size and SHA-256. Encoding, version 2, all integers
big endian::

    "blo-vault manifest v2" 0x00                      domain separation and format version
    str package_id | str agency | str classification | str handling | str handling_note
    str title_sha256 | str description_sha256 | str records_sha256     lowercase hex
    u32 file count, then per file: str name | u64 size | str sha256 (lowercase hex)

where ``str`` is u32 length || UTF-8 bytes. The encoding is deterministic and decoding is
strict (the bytes must re-encode to themselves), so one manifest has one byte string and a
signature over it (Ed25519, RFC 8032) covers exactly the fields above. The signature proves
who signed those bytes; it says nothing of releases, of who may read the package, or of when
it was signed. Version 1 (the same without ``records_sha256``) was never released: refused.

An officer's key id is the first 32 hex characters of SHA-256("blo-vault officer key" 0x00
|| the 32-byte public key), so a key id names one key and fits wherever an id goes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vault import crypto
from vault.errors import IntegrityError, InvalidInput

__all__ = [
    "DOMAIN",
    "SIGNATURE_SIZE",
    "Manifest",
    "ManifestFile",
    "check_files",
    "check_matches",
    "check_signature",
    "decode",
    "decode_signature",
    "key_id",
    "sha256_text",
    "sign",
]

DOMAIN = b"blo-vault manifest v2\x00"
SIGNATURE_SIZE = 64
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
# Far above any real package (settings cap files and text), low enough that a forged length
# can't make the decoder allocate much.
_MAX_STRING = 1 << 16
_MAX_FILES = 100_000


@dataclass(frozen=True)
class ManifestFile:
    """One file as the manifest states it."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The fields an originating officer signs for a package."""

    package_id: str
    agency: str
    classification: str
    handling: str
    handling_note: str
    title_sha256: str
    description_sha256: str
    records_sha256: str
    files: tuple[ManifestFile, ...]

    def encode(self) -> bytes:
        """The canonical bytes of this manifest (the module docstring's layout)."""
        out = [DOMAIN]
        for text in (
            self.package_id,
            self.agency,
            self.classification,
            self.handling,
            self.handling_note,
            self.title_sha256,
            self.description_sha256,
            self.records_sha256,
        ):
            out.append(_string(text))
        out.append(_U32.pack(len(self.files)))
        for item in self.files:
            out += [_string(item.name), _U64.pack(item.size), _string(item.sha256)]
        return b"".join(out)


def sha256_text(text: str) -> str:
    """Lowercase hex SHA-256 of ``text``'s UTF-8 bytes (titles and descriptions)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def key_id(public_raw: bytes) -> str:
    """The id of an officer's Ed25519 public key (32 lowercase hex characters)."""
    return hashlib.sha256(b"blo-vault officer key\x00" + public_raw).hexdigest()[:32]


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > _MAX_STRING:
        raise InvalidInput("manifest field too long")
    return _U32.pack(len(raw)) + raw


class _Reader:
    """Strict reading of manifest bytes: any shortfall is malformed input."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, size: int) -> bytes:
        if size > len(self.data) - self.pos:
            raise InvalidInput("manifest is truncated")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def string(self) -> str:
        (size,) = _U32.unpack(self.take(4))
        if size > _MAX_STRING:
            raise InvalidInput("manifest field too long")
        try:
            return self.take(size).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("manifest text is not UTF-8") from None


def decode(data: bytes) -> Manifest:
    """Parse canonical manifest bytes; InvalidInput unless they are exactly one manifest."""
    if not data.startswith(DOMAIN):
        raise InvalidInput("not a blo-vault manifest (version 2)")
    reader = _Reader(data)
    reader.take(len(DOMAIN))
    head = [reader.string() for _ in range(8)]
    (count,) = _U32.unpack(reader.take(4))
    if count > _MAX_FILES:
        raise InvalidInput("manifest lists too many files")
    files = []
    for _ in range(count):
        name = reader.string()
        (size,) = _U64.unpack(reader.take(8))
        files.append(ManifestFile(name=name, size=size, sha256=reader.string()))
    manifest = Manifest(
        package_id=head[0],
        agency=head[1],
        classification=head[2],
        handling=head[3],
        handling_note=head[4],
        title_sha256=head[5],
        description_sha256=head[6],
        records_sha256=head[7],
        files=tuple(files),
    )
    if reader.pos != len(data) or manifest.encode() != data:
        raise InvalidInput("manifest is not in canonical form")
    return manifest


def sign(key: Ed25519PrivateKey, manifest: Manifest) -> bytes:
    """The officer's Ed25519 signature of ``manifest``'s canonical bytes."""
    return key.sign(manifest.encode())


def decode_signature(text: str) -> bytes:
    """A signature from its base64; InvalidInput unless it is exactly 64 bytes."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("signature is not valid base64") from None
    if len(raw) != SIGNATURE_SIZE:
        raise InvalidInput("signature is malformed (an Ed25519 signature is 64 bytes)")
    return raw


def check_signature(public_raw: bytes, manifest_bytes: bytes, signature: bytes) -> None:
    """IntegrityError unless ``signature`` is the key's signature of ``manifest_bytes``."""
    if len(signature) != SIGNATURE_SIZE or not crypto.ed25519_verify(
        public_raw, signature, manifest_bytes
    ):
        raise IntegrityError("the manifest's signature does not verify with the signer's key")


def check_files(manifest: Manifest, files: Sequence[ManifestFile]) -> None:
    """InvalidInput naming the first difference between ``files`` (in order) and the manifest's."""
    listed = {item.name: n for n, item in enumerate(manifest.files)}
    for position, item in enumerate(files):
        where = listed.get(item.name)
        if where is None:
            raise InvalidInput(f"file {position + 1} is not in the signed manifest")
        if where != position:
            raise InvalidInput(
                f"file {position + 1} is listed at position {where + 1} of the signed manifest"
            )
        wanted = manifest.files[position]
        if wanted.size != item.size or not crypto.constant_time_equal(wanted.sha256, item.sha256):
            raise InvalidInput(f"file {position + 1} does not match the signed manifest")
    if len(files) < len(manifest.files):
        raise InvalidInput(
            f"the signed manifest lists {len(manifest.files)} files; {len(files)} were sent"
        )


def check_matches(signed: Manifest, actual: Manifest) -> None:
    """InvalidInput naming the first field in which ``actual`` (what was sent or received)
    differs from the ``signed`` manifest; files last, as :func:`check_files` compares them."""
    if signed.package_id != actual.package_id:
        raise InvalidInput("the signed manifest is for another package id")
    for label, name in (
        ("originating agency", "agency"),
        ("classification", "classification"),
        ("handling code", "handling"),
        ("handling note", "handling_note"),
        ("title", "title_sha256"),
        ("description", "description_sha256"),
        ("seizure records digest", "records_sha256"),
    ):
        if getattr(signed, name) != getattr(actual, name):
            raise InvalidInput(f"the {label} differs from the signed manifest")
    check_files(signed, actual.files)
