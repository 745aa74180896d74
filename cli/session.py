"""Where ``blovault login`` keeps the server address and token (mode 0600)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vault.errors import AuthenticationFailed


def config_dir() -> Path:
    """``$VAULT_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/blovault``, else ``~/.config/blovault``."""
    explicit = os.environ.get("VAULT_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "blovault"


@dataclass(frozen=True)
class StoredSession:
    """A logged-in session."""

    server: str
    username: str
    token: str


def _path() -> Path:
    return config_dir() / "session.json"


def save(session: StoredSession) -> Path:
    """Write the session atomically, readable by the owner only."""
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".session-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(session.__dict__, out)
        os.replace(tmp, _path())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return _path()


def load() -> StoredSession:
    """The saved session; AuthenticationFailed if there is none."""
    try:
        data = json.loads(_path().read_text())
        return StoredSession(server=data["server"], username=data["username"], token=data["token"])
    except (OSError, ValueError, KeyError, TypeError):
        raise AuthenticationFailed("not logged in: run 'blovault login' first") from None
