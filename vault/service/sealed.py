"""Opening what the vault stores sealed: a package's metadata (title, description, fields)
and its files' names and digests. The AAD identities here bind each sealed blob to its
package and file, so a blob moved to another row does not open."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from vault import crypto
from vault.errors import IntegrityError
from vault.keys import KeyMaterial
from vault.models import Classification, Handling
from vault.schemas import FileInfo, PackageSummary


def file_identity(package_id: str, file_id: str) -> bytes:
    """The context a file's data key and sealed name are bound to."""
    return f"blo-vault/file/v1\x00{package_id}\x00{file_id}".encode()


def package_identity(package_id: str) -> bytes:
    """The context a package's key and sealed metadata are bound to."""
    return f"blo-vault/package/v1\x00{package_id}".encode()


class SealedRow(Protocol):
    """What opening a package's sealed metadata takes: a Package, or a row of its columns."""

    @property
    def id(self) -> str: ...
    @property
    def kek_id(self) -> str: ...
    @property
    def wrapped_key(self) -> bytes: ...
    @property
    def sealed_meta(self) -> bytes: ...


class SummaryRow(SealedRow, Protocol):
    """What a package summary shows, beside the sealed title."""

    @property
    def classification(self) -> Classification: ...
    @property
    def handling(self) -> Handling: ...
    @property
    def agency_code(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def size(self) -> int: ...
    @property
    def file_count(self) -> int: ...


class FileRow(Protocol):
    """What a file's details take: a PackageFile, or a row of its columns."""

    @property
    def id(self) -> str: ...
    @property
    def package_id(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sealed_meta(self) -> bytes: ...


@dataclass(frozen=True)
class OpenedMeta:
    """A package's opened metadata, and the package key that opens its files' metadata."""

    meta: dict[str, Any]
    key: bytes


def open_meta(keys: KeyMaterial, package: SealedRow) -> OpenedMeta:
    """Unwrap the package key and open the package's metadata; IntegrityError if either was
    tampered with or belongs to another package."""
    identity = package_identity(package.id)
    key = keys.keyring.unwrap(
        crypto.WrappedKey(package.kek_id, package.wrapped_key), context=identity
    )
    meta: dict[str, Any] = json.loads(crypto.open_bytes(key, package.sealed_meta, context=identity))
    return OpenedMeta(meta=meta, key=key)


def summary(
    keys: KeyMaterial, package: SummaryRow, country: str, title: str | None = None
) -> PackageSummary:
    """A package as a listing shows it: its title (opened here unless given: IntegrityError
    as for open_meta)."""
    return PackageSummary(
        id=package.id,
        title=open_meta(keys, package).meta["title"] if title is None else title,
        classification=package.classification,
        handling=package.handling,
        agency=package.agency_code,
        country=country,
        created_at=package.created_at,
        size=package.size,
        file_count=package.file_count,
    )


def file_info(package_key: bytes, row: FileRow) -> FileInfo:
    """A file's details, its sealed name and digest opened with the package key."""
    meta = json.loads(
        crypto.open_bytes(
            package_key, row.sealed_meta, context=file_identity(row.package_id, row.id)
        )
    )
    return FileInfo(id=row.id, name=meta["name"], size=row.size, sha256=meta["sha256"])


def package_digest(files: list[FileInfo]) -> str:
    """SHA-256 over the files' digests and names, in order: one digest for the package."""
    h = hashlib.sha256(b"blo-vault package digest v1\x00")
    for f in files:
        h.update(f"{f.sha256}\x00{f.name}\x00{f.size}\n".encode())
    return h.hexdigest()


def check_package_digest(recorded: str, files: list[FileInfo]) -> None:
    """IntegrityError unless ``files``, in order, are those whose digest was sealed with the
    package's metadata at upload. Each file's blob and sealed name are bound to their package,
    but which files a package has lives in plain database rows: without this, anyone able to
    edit the database, keys or no keys, could drop a file (say, an exculpatory annex) from a
    package, or reorder or resize them, unnoticed."""
    if not crypto.constant_time_equal(package_digest(files), recorded):
        raise IntegrityError("the package's files do not match its sealed digest")
