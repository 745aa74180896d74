"""Where ``blovault login`` keeps the server address and tokens: ``session.json``, mode 0600,
in a folder of mode 0700.

The file holds the session's refresh token, which gets new access tokens for the rest of the
shift: whoever can read it can act as the officer until the session ends. So the folder and
the file are made private whatever the umask, and a file or folder found open to other users
is warned about, with the command that fixes it.

:func:`private_file` is that way of writing, for every file the CLI saves that others must
not read (signing keys, signed bundles with their seizure records, scoped ledger exports).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from blo_vault.cli.errors import BadServerReply, field
from vault.errors import AuthenticationFailed

__all__ = [
    "StoredSession",
    "config_dir",
    "delete",
    "from_tokens",
    "load",
    "private_dir",
    "private_file",
    "rotate",
    "save",
    "write_private",
]

_NOT_LOGGED_IN = "not logged in: run 'blovault login' first"


def config_dir() -> Path:
    """``$VAULT_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/blovault``, else ``~/.config/blovault``."""
    explicit = os.environ.get("VAULT_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "blovault"


@dataclass(frozen=True)
class StoredSession:
    """A logged-in session: the access token, and the refresh token that renews it."""

    server: str
    username: str
    token: str
    refresh_token: str = ""
    # When the access token expires, by this machine's clock (seconds since the epoch).
    access_expires_at: float = 0.0


def from_tokens(server: str, username: str, result: dict[str, Any]) -> StoredSession:
    """The session a login, refresh or password change answered with; BadServerReply for a
    token that can't go in an Authorization header (saved, it failed every later command)."""
    token = field(result, "access_token", str, "token reply")
    refresh = result.get("refresh_token", "")
    for value in (token, refresh):
        if not isinstance(value, str) or (value and not _B64TOKEN.fullmatch(value)):
            raise BadServerReply("the server's token reply holds a token no header can carry")
    return StoredSession(
        server=server,
        username=username,
        token=token,
        refresh_token=refresh,
        access_expires_at=time.time() + _seconds(result.get("expires_in")),
    )


# RFC 6750, 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def _seconds(value: Any) -> float:
    """A lifetime from the server's reply; anything that is not a plain number counts as
    already expired (the token is then renewed when next needed), never as a crash."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e9:
        return float(value)
    return 0.0


def _path() -> Path:
    return config_dir() / "session.json"


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


def _check_private(path: Path, info: os.stat_result, mode: int) -> None:
    """Warn when ``path`` is open to group or others, or belongs to someone else."""
    if stat.S_IMODE(info.st_mode) & 0o077:
        _warn(
            f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"anyone who can read it can use your session: chmod {mode:o} {path}"
        )
    if info.st_uid != os.getuid():
        _warn(f"{path} belongs to another user (uid {info.st_uid}); log in again")


def private_dir(folder: Path) -> None:
    """Make ``folder`` private (0700) as the session's folder is (see ``_private_dir``)."""
    _private_dir(folder)


def _private_dir(folder: Path) -> None:
    """Make ``folder`` and any missing parent 0700; warn about an existing ``folder`` that is
    open to others (not changed: we did not create it)."""
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    created = set()
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue  # another process made it; not ours to change
        # mkdir's mode is masked by the umask, and parents would get 0777 & ~umask.
        os.chmod(path, 0o700)
        created.add(path)
    if folder not in created:
        _check_private(folder, folder.stat(), 0o700)


@contextlib.contextmanager
def private_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary handle (readable too, to check what was written) whose content becomes
    ``path``, mode 0600, when the block ends without an error; on any exception, including
    SystemExit from a signal, the temp file is removed and ``path`` left as it was."""
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".blovault-", suffix=".part")
    except OSError as exc:
        # mkstemp names its random temp file; the user knows only the path they gave.
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w+b") as handle:
            # mkstemp creates 0600 already; said again so the mode never rests on its defaults.
            os.fchmod(handle.fileno(), 0o600)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 whatever the umask."""
    with private_file(path) as handle:
        handle.write(data)


def save(session: StoredSession) -> Path:
    """Write the session atomically, readable by the owner only, in a private folder."""
    _private_dir(config_dir())
    write_private(_path(), json.dumps(asdict(session)).encode())
    return _path()


def _read(*, check: bool) -> StoredSession:
    path = _path()
    try:
        # O_NOFOLLOW: a symlink planted in our place is refused, not followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise AuthenticationFailed(_NOT_LOGGED_IN) from None
    with os.fdopen(fd) as handle:
        if check:
            _check_private(path, os.fstat(handle.fileno()), 0o600)
            with contextlib.suppress(OSError):
                _check_private(path.parent, path.parent.stat(), 0o700)
        try:
            data = json.load(handle)
            return StoredSession(
                server=str(data["server"]),
                username=str(data["username"]),
                token=str(data["token"]),
                refresh_token=str(data.get("refresh_token", "")),
                access_expires_at=float(data.get("access_expires_at", 0.0)),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise AuthenticationFailed(_NOT_LOGGED_IN) from None


def load() -> StoredSession:
    """The saved session (warning on stderr if it is open to others); AuthenticationFailed if
    there is none."""
    return _read(check=True)


def delete() -> bool:
    """Forget the saved session; True if there was one."""
    try:
        _path().unlink()
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def _refresh_lock() -> Iterator[None]:
    """One refresh at a time among this user's blovault processes."""
    folder = config_dir()
    _private_dir(folder)
    fd = os.open(folder / ".refresh-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def rotate(current: StoredSession, refresh: Callable[[str], dict[str, Any]]) -> StoredSession:
    """Renew ``current``'s access token with ``refresh`` (POST /auth/refresh) and save the
    rotated tokens; returns the session to use.

    A refresh token works once, and the server ends the whole session when one is presented
    twice. Two blovault commands that found the same expired token must therefore not both
    refresh: under a lock, the second finds the file already rotated and uses that.
    """
    with _refresh_lock():
        try:
            on_disk = _read(check=False)
        except AuthenticationFailed:
            on_disk = None
        if (
            on_disk is not None
            and (on_disk.server, on_disk.username) == (current.server, current.username)
            and on_disk.refresh_token
            and on_disk.refresh_token != current.refresh_token
        ):
            return on_disk
        renewed = from_tokens(current.server, current.username, refresh(current.refresh_token))
        save(renewed)
        return renewed
