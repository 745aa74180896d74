"""Loading the vault's keys, and generating development keys on first start.

Three secrets: the key-encryption key (KEK) that wraps every data key, the P-256 key that signs
access tokens, and the Ed25519 log key that signs ledger checkpoints. In development, missing
ones are generated under ``<data_dir>/dev-keys`` (mode 0600). Production refuses to start unless
every key comes from an explicitly configured file (or, for the KEK, ``VAULT_KEK``) outside that
folder.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from vault import crypto
from vault.config import Settings
from vault.errors import ConfigError, VaultMissing

__all__ = [
    "DEV_KEY_DIR",
    "KeyMaterial",
    "generate_key_files",
    "load_keys",
    "read_kek",
]

DEV_KEY_DIR = "dev-keys"
_KEK_FILE = "kek.b64"
_TOKEN_FILE = "token-signing.pem"
_LEDGER_FILE = "ledger-signing.b64"


@dataclass(frozen=True)
class KeyMaterial:
    """Everything secret the service needs, loaded once per process."""

    keyring: crypto.Keyring
    token_private_pem: bytes = field(repr=False)
    token_public_pem: bytes
    ledger_key: ed25519.Ed25519PrivateKey = field(repr=False)
    development: bool
    # Keys the ledger's records of failed logins by unknown usernames (see Vault.login).
    pseudonym_key: bytes = field(repr=False)


def read_kek(path: Path) -> crypto.Kek:
    """A KEK from a file holding its base64 (one line) or its 32 raw bytes."""
    raw = _read_secret(path)
    return crypto.Kek(_decode_32(raw, what=f"KEK in {path}"))


def _decode_32(raw: bytes, *, what: str) -> bytes:
    if len(raw) == 32:
        return raw
    try:
        decoded = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what} is neither 32 raw bytes nor base64") from None
    if len(decoded) != 32:
        raise ConfigError(f"{what} must decode to 32 bytes")
    return decoded


def _read_secret(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None


def _write_new_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 atomically; if another process won the race, keep theirs."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".new-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def generate_key_files(out_dir: Path) -> dict[str, Path]:
    """Write a fresh KEK, token signing key and ledger key (mode 0600) for production use.

    Refuses to overwrite: replacing a KEK or ledger key in place would orphan data or forks.
    """
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = {
        "VAULT_KEK_FILE": (out_dir / _KEK_FILE, base64.b64encode(crypto.new_data_key()) + b"\n"),
        "VAULT_JWT_KEY_FILE": (out_dir / _TOKEN_FILE, crypto.new_token_signing_key_pem()),
        "VAULT_LEDGER_KEY_FILE": (
            out_dir / _LEDGER_FILE,
            base64.b64encode(crypto.ed25519_seed(crypto.new_ed25519_private_key())) + b"\n",
        ),
    }
    existing = [str(path) for path, _ in files.values() if path.exists()]
    if existing:
        raise ConfigError(f"refusing to overwrite existing key files: {', '.join(existing)}")
    for path, data in files.values():
        _write_new_secret(path, data)
    return {name: path for name, (path, _) in files.items()}


def _dev_key(settings: Settings, name: str, make: Callable[[], bytes], *, create: bool) -> Path:
    path = settings.data_dir.resolve() / DEV_KEY_DIR / name
    if not path.exists():
        if not create:
            # A new key here would not open what the old one sealed: never made on the side.
            raise VaultMissing(
                f"no development key at {path}: run 'blovault admin init' to create a vault, "
                "or point VAULT_DATA_DIR at an existing one"
            )
        _write_new_secret(path, make())
    return path


def key_file_warnings(settings: Settings) -> list[str]:
    """A warning for each configured key file that users other than its owner may read: the
    vault still runs (a secrets mount may not let it be fixed from inside), but the KEKs (old
    ones too: they open every key not yet re-wrapped), the token key or the ledger key must
    be the vault's alone."""
    warnings = []
    paths = (settings.kek_file, *settings.kek_old_files, settings.jwt_key_file)
    for path in (*paths, settings.ledger_key_file):
        if path is None:
            continue
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            continue  # load_keys says why it can't be read
        if mode & 0o077:
            warnings.append(
                f"key file {path} may be read by other users (mode {mode:04o}): chmod 600 it"
            )
    return warnings


def load_keys(settings: Settings, *, create: bool = True) -> KeyMaterial:
    """Load configured keys; generate development keys for those unset, unless in production
    or unless ``create`` is False (then a missing development key is VaultMissing)."""
    dev_dir = (settings.data_dir / DEV_KEY_DIR).resolve()
    development = False

    def configured(path: Path | None, what: str, env_name: str) -> Path | None:
        if path is None:
            if settings.env == "production":
                raise ConfigError(f"production mode refuses development keys: set {env_name}")
            return None
        resolved = path.resolve()
        if settings.env == "production" and resolved.is_relative_to(dev_dir):
            raise ConfigError(f"production mode refuses the development {what} in {dev_dir}")
        return resolved

    kek_secret = os.environ.get("VAULT_KEK")
    if kek_secret and settings.kek_file is not None:
        # One would silently win: a rotation with the new KEK in VAULT_KEK_FILE while an old
        # VAULT_KEK was still exported re-wrapped nothing and said the old KEK was not needed.
        raise ConfigError("both VAULT_KEK and VAULT_KEK_FILE are set: set only one")
    if kek_secret:
        current = crypto.Kek(_decode_32(kek_secret.encode(), what="VAULT_KEK"))
    else:
        kek_path = configured(settings.kek_file, "KEK", "VAULT_KEK_FILE or VAULT_KEK")
        if kek_path is None:
            development = True
            kek_path = _dev_key(
                settings,
                _KEK_FILE,
                lambda: base64.b64encode(crypto.new_data_key()) + b"\n",
                create=create,
            )
        current = read_kek(kek_path)
    previous = tuple(read_kek(p) for p in settings.kek_old_files)

    token_path = configured(settings.jwt_key_file, "token signing key", "VAULT_JWT_KEY_FILE")
    if token_path is None:
        development = True
        token_path = _dev_key(
            settings, _TOKEN_FILE, crypto.new_token_signing_key_pem, create=create
        )
    token_private = _read_secret(token_path)
    token_public = crypto.token_public_key_pem(token_private)

    ledger_path = configured(settings.ledger_key_file, "ledger key", "VAULT_LEDGER_KEY_FILE")
    if ledger_path is None:
        development = True
        ledger_path = _dev_key(
            settings,
            _LEDGER_FILE,
            lambda: base64.b64encode(crypto.ed25519_seed(crypto.new_ed25519_private_key())) + b"\n",
            create=create,
        )
    ledger_key = crypto.ed25519_from_seed(
        _decode_32(_read_secret(ledger_path), what=f"ledger key in {ledger_path}")
    )

    return KeyMaterial(
        keyring=crypto.Keyring(current=current, previous=previous),
        token_private_pem=token_private,
        token_public_pem=token_public,
        ledger_key=ledger_key,
        development=development,
        # From the ledger key: the pseudonyms live in the ledger, and that key lives as long
        # as the ledger does (counterparts verify every checkpoint with it, so it is never
        # replaced), so a name keeps its pseudonym across restarts and rotations. The KEK is
        # rotated (rotate-kek) and the token key may be; either would break correlation.
        pseudonym_key=crypto.derive_key(
            crypto.ed25519_seed(ledger_key), purpose=b"blo-vault/login-pseudonym/v1"
        ),
    )
