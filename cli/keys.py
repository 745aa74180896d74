"""The officer's signing keys on their own machine, and signing an upload as it streams
(issue 13).

Keys live in ``<config dir>/signing-keys/`` (the folder of the session file, 0700): for each
key made here, ``KEYID.pem`` (PKCS#8, 0600, encrypted when a passphrase was given),
``KEYID.pub`` (base64 public key) and, once registered, ``KEYID.json`` (whose key it is on
which server). ``current`` names the key uploads are signed with. The set of ``*.pem`` files
is what ``blovault keys audit`` calls "created here".
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blo_vault.cli.session import config_dir, private_dir, write_private
from vault import crypto, manifest
from vault.errors import ConfigError
from vault.text import check_filename

__all__ = [
    "PASSPHRASE_ENV",
    "LocalKey",
    "UploadSigner",
    "create_key",
    "current_key",
    "keys_dir",
    "known_key_ids",
    "mark_registered",
]

# For scripts: the passphrase of an encrypted key, instead of a prompt.
PASSPHRASE_ENV = "VAULT_SIGNING_PASSPHRASE"


def keys_dir() -> Path:
    """Where this machine's signing keys are kept."""
    return config_dir() / "signing-keys"


@dataclass(frozen=True)
class LocalKey:
    """A key made on this machine."""

    key_id: str
    public_key: str  # base64
    registration: dict[str, Any] | None

    def private_key(self, passphrase: bytes | None) -> Ed25519PrivateKey:
        """The private key; ConfigError if the passphrase is wrong or missing."""
        pem = (keys_dir() / f"{self.key_id}.pem").read_bytes()
        if passphrase is None and b"ENCRYPTED" in pem:
            env = os.environ.get(PASSPHRASE_ENV)
            if env is None:
                raise ConfigError(f"the signing key is encrypted: set {PASSPHRASE_ENV}")
            passphrase = env.encode()
        return crypto.load_officer_key_pem(pem, passphrase)


def create_key(passphrase: bytes | None) -> LocalKey:
    """Make a new Ed25519 key here and make it the current one."""
    folder = keys_dir()
    private_dir(folder)
    key = crypto.new_ed25519_private_key()
    public = crypto.ed25519_public_bytes(key.public_key())
    key_id = manifest.key_id(public)
    public_b64 = base64.b64encode(public).decode()
    write_private(folder / f"{key_id}.pem", crypto.officer_key_pem(key, passphrase))
    write_private(folder / f"{key_id}.pub", public_b64.encode())
    write_private(folder / "current", key_id.encode())
    return LocalKey(key_id=key_id, public_key=public_b64, registration=None)


def _local(key_id: str) -> LocalKey:
    folder = keys_dir()
    try:
        public_b64 = (folder / f"{key_id}.pub").read_text("ascii").strip()
    except OSError:
        raise ConfigError(f"no signing key {key_id} on this machine") from None
    try:
        registration = json.loads((folder / f"{key_id}.json").read_text("utf-8"))
    except (OSError, ValueError):
        registration = None
    return LocalKey(key_id=key_id, public_key=public_b64, registration=registration)


def current_key() -> LocalKey | None:
    """The key uploads are signed with, if one was made here."""
    try:
        key_id = (keys_dir() / "current").read_text("ascii").strip()
    except OSError:
        return None
    return _local(key_id)


def mark_registered(key: LocalKey, registration: dict[str, Any]) -> None:
    """Remember whose key the server registered ``key`` as (username, agency, server)."""
    write_private(keys_dir() / f"{key.key_id}.json", json.dumps(registration).encode())


def known_key_ids() -> set[str]:
    """Ids of every key made on this machine."""
    folder = keys_dir()
    return {p.stem for p in folder.glob("*.pem")} if folder.is_dir() else set()


class _HashingReader:
    """A file wrapper that hashes what is read (on a second thread, crypto.BackgroundDigest),
    keeping ``fileno`` so the upload keeps its Content-Length."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.size = 0
        self.digest = crypto.BackgroundDigest()

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._inner.read(size)
        self.size += len(data)
        self.digest.update(data)
        return data

    def fileno(self) -> int:
        fd: int = self._inner.fileno()
        return fd


@dataclass
class UploadSigner:
    """Signs one upload: chooses the package id, hashes each file as it is sent, and gives the
    trailing ``signature`` part, built when the transport reaches it (after the files)."""

    key: Ed25519PrivateKey
    key_id: str
    agency: str
    package_id: str = field(default_factory=lambda: secrets.token_hex(16))
    # The digest of the seizure records sent (set by cover_records; none sent: the empty list's).
    records_sha256: str = ""
    _files: list[tuple[str, _HashingReader]] = field(default_factory=list)

    def cover_records(self, records: list[dict[str, Any]]) -> None:
        """State the digest of ``records`` (as sent) in the manifest: validated here as the
        server validates them, so both hash the same records (vault.seizures.digest)."""
        # Imported here: pydantic models are only needed by uploads, not at start-up.
        from vault.seizures.digest import records_sha256
        from vault.seizures.schema import validate_records

        self.records_sha256 = records_sha256(validate_records(records))

    def wrap(self, name: str, handle: Any) -> _HashingReader:
        """Hash ``handle`` (the file called ``name``) as the upload reads it."""
        reader = _HashingReader(handle)
        self._files.append((check_filename(name), reader))
        return reader

    def manifest(self, meta: dict[str, Any], *, placeholder: bool = False) -> manifest.Manifest:
        """The manifest of the files as sent (``placeholder``: digests not known yet)."""
        files = tuple(
            manifest.ManifestFile(
                name, reader.size, "0" * 64 if placeholder else reader.digest.hexdigest()
            )
            for name, reader in self._files
        )
        return manifest.Manifest(
            package_id=self.package_id,
            agency=self.agency,
            classification=meta["classification"],
            handling=meta["handling"],
            handling_note=meta["handling_note"],
            title_sha256=manifest.sha256_text(meta["title"]),
            description_sha256=manifest.sha256_text(meta["description"]),
            records_sha256=self.records_sha256,
            files=files,
        )

    def trailer(self, meta: dict[str, Any]) -> IO[bytes]:
        """The ``signature`` part as a lazy file: its length is known in advance (sizes and
        digests have fixed widths), its content once the files are sent."""
        return cast(IO[bytes], _Trailer(self, meta))

    def part(self, meta: dict[str, Any], *, placeholder: bool = False) -> bytes:
        """The ``signature`` part's JSON."""
        signed = self.manifest(meta, placeholder=placeholder)
        raw = signed.encode()
        signature = bytes(64) if placeholder else manifest.sign(self.key, signed)
        return json.dumps(
            {
                "key_id": self.key_id,
                "manifest": base64.b64encode(raw).decode(),
                "signature": base64.b64encode(signature).decode(),
            },
            separators=(",", ":"),
        ).encode()


class _Trailer:
    """File-like ``signature`` part for httpx: ``seek``/``tell`` report the length up front;
    the first ``read`` (after every file part was read) signs."""

    def __init__(self, signer: UploadSigner, meta: dict[str, Any]) -> None:
        self._signer, self._meta = signer, meta
        self._length = len(signer.part(meta, placeholder=True))
        self._data: bytes | None = None
        self._pos = 0

    def tell(self) -> int:
        return self._pos if self._data is not None else 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            return self._length + offset
        self._pos = offset
        return offset

    def read(self, size: int = -1) -> bytes:
        if self._data is None:
            self._data = self._signer.part(self._meta)
            if len(self._data) != self._length:  # only a bug gets here: widths are fixed
                raise ConfigError("signature part length changed; nothing was stored")
        end = len(self._data) if size < 0 else self._pos + size
        chunk = self._data[self._pos : end]
        self._pos += len(chunk)
        return chunk
