"""HTTP client for the vault API (httpx), used by the officer commands."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
import unicodedata
from collections.abc import Callable, Generator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpcore
import httpx

from blo_vault.cli import session as stored
from blo_vault.cli.errors import BY_CODE, BadServerReply, Reply, count, field, obj, objects
from blo_vault.cli.keys import UploadSigner
from vault.crypto import BackgroundDigest, constant_time_equal
from vault.errors import (
    AuthenticationFailed,
    Conflict,
    IntegrityError,
    InvalidInput,
    StorageUnavailable,
    VaultError,
)
from vault.text import MAX_FILENAME_BYTES, check_filename, filename_key, unsafe_char

__all__ = [
    "ApiClient",
    "Progress",
    "file_list",
    "local_names",
]

Progress = Callable[[int], None]
_CHUNK = 1024 * 1024
# A download asks the kernel to start writing what it has received every this many bytes, so
# the disk works while the network does and the fsync before the rename has little left to do.
_WRITEBACK_BYTES = 32 * _CHUNK
# An upload's body can't be sent twice, so its access token is renewed before it starts when
# it has less than this left (a large upload authenticates once, at its start).
_RENEW_BEFORE_STREAM_SECONDS = 60
_WINDOWS_ILLEGAL = '<>:"|?*\\/'
_READ_BYTES = 256 * 1024
# httpcore reads a response 64 KiB at a time, each read an h11 event and an httpx chunk. 256 KiB
# reads took 10-15 % less of the CLI's user CPU on a 1 GiB download; 1 MiB reads took some
# 2 s more system time (measured, cause not traced; probably a fresh 1 MiB buffer per read).
# This process only talks to the vault server, so the setting is the CLI's own.
httpcore.HTTP11Connection.READ_NUM_BYTES = _READ_BYTES
# A reply read whole (JSON, or an error's body) may be at most this large, decoded, and take
# at most this long in all: the largest the vault sends (a package with 50,000 seizure
# records) is some 10 MiB, and a hostile server must not fill the CLI's memory or hold it
# for ever one byte a minute (the timeout counts per read).
_MAX_REPLY_BYTES = 64 * _CHUNK
_MAX_ERROR_BYTES = _CHUNK
_REPLY_SECONDS = 600.0
# Only for the replies themselves: how the headers are kept when the body is read here.
_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def _check_encoding(response: httpx.Response, what: str) -> None:
    """BadServerReply for a compressed body: the CLI asks for none (``identity``), and one
    chunk of gzip can inflate a thousandfold before any count of its bytes could stop it."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise BadServerReply(
            f"the server's reply to {what} is compressed ({encoding[:40]!r}), "
            "which was not asked for"
        )


def _read_bounded(response: httpx.Response, limit: int, what: str) -> httpx.Response:
    """``response`` (streamed) read to its end, as a response holding its body;
    BadServerReply if it is compressed, over ``limit`` bytes, or takes over _REPLY_SECONDS."""
    _check_encoding(response, what)
    deadline = time.monotonic() + _REPLY_SECONDS
    parts: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise BadServerReply(f"the server's reply to {what} is over {limit // _CHUNK} MiB")
        if time.monotonic() > deadline:
            raise BadServerReply(f"the server's reply to {what} took over {_REPLY_SECONDS:.0f} s")
        parts.append(chunk)
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _BODY_HEADERS]
    return httpx.Response(
        response.status_code, headers=headers, content=b"".join(parts), request=response.request
    )


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        cls = BY_CODE.get(str(error["code"]), VaultError)
        exc = cls(str(error["message"]))
        exc.receipt = error.get("receipt")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        exc = VaultError(f"server answered HTTP {response.status_code}")
    raise exc


class _CountingReader:
    """A file wrapper that reports bytes read (for progress bars), keeping fileno for length."""

    def __init__(self, handle: IO[bytes], progress: Progress | None) -> None:
        self._handle = handle
        self._progress = progress
        self._unreported = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        if self._progress:
            # Reported per MiB (and at the end): httpx reads 64 KiB at a time, and a progress
            # update per read cost more than the read.
            self._unreported += len(data)
            if self._unreported >= _CHUNK or (not data and self._unreported):
                self._progress(self._unreported)
                self._unreported = 0
        return data

    def fileno(self) -> int:
        return self._handle.fileno()


class ApiClient:
    """Talks to one vault server with one bearer token.

    Given a stored ``session``, a request refused with 401 (the access token expired) is
    retried once after renewing the tokens with the session's refresh token; the rotated
    tokens are saved to the session file.
    """

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        session: stored.StoredSession | None = None,
        verify: bool | str = True,
        timeout: float = 60.0,
    ) -> None:
        self._session = session
        if session is not None:
            token = session.token
        headers = {"Accept-Encoding": "identity"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            self._http = httpx.Client(
                base_url=server.rstrip("/"),
                headers=headers,
                verify=verify,
                timeout=httpx.Timeout(timeout, connect=10.0),
            )
        except httpx.InvalidURL as exc:
            raise InvalidInput(f"not a valid server URL: {server} ({exc})") from None

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        what = f"{method} {url.split('?', 1)[0]}"
        try:
            with self._http.stream(method, url, **kwargs) as response:
                return _read_bounded(response, _MAX_REPLY_BYTES, what)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _http_error(exc) from None

    def _request(self, method: str, url: str, *, replayable: bool = True, **kwargs: Any) -> Any:
        response = self._send(method, url, **kwargs)
        # A 401 comes from authentication, before the route did anything, so sending the
        # same request again with a renewed token can't do anything twice.
        if response.status_code == 401 and replayable and self._renew():
            response = self._send(method, url, **kwargs)
        _raise_for(response)
        try:
            return response.json(object_hook=Reply)
        except (ValueError, RecursionError):
            # Not JSON (a proxy's HTML page), not UTF-8, or nested past the parser's depth.
            raise BadServerReply(
                f"the server's reply to {method} {url.split('?', 1)[0]} is not JSON"
            ) from None

    def _reply(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """A route's JSON object (see ``_request``); BadServerReply if it is not an object."""
        return obj(self._request(method, url, **kwargs), f"reply to {method} {url}")

    def _renew(self) -> bool:
        """Renew the access token with the session's refresh token; False without one.

        Raises AuthenticationFailed when the session itself has ended.
        """
        if self._session is None or not self._session.refresh_token:
            return False
        try:
            self._session = stored.rotate(self._session, self.refresh)
        except AuthenticationFailed as exc:
            raise AuthenticationFailed(
                "invalid or expired token, and the session can't be renewed (it has ended): "
                "run 'blovault login'",
                receipt=exc.receipt,
            ) from None
        self._http.headers["Authorization"] = f"Bearer {self._session.token}"
        return True

    def _renew_if_expiring(self) -> None:
        """Before a request that can't be replayed: renew a token that is about to expire."""
        session = self._session
        if session is not None and session.access_expires_at - time.time() < (
            _RENEW_BEFORE_STREAM_SECONDS
        ):
            self._renew()

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        """POST /auth/refresh: new tokens for the session; the refresh token sent is spent."""
        return self._reply(
            "POST", "/auth/refresh", replayable=False, json={"refresh_token": refresh_token}
        )

    def logout(self) -> dict[str, Any]:
        """POST /auth/logout: end this session on the server."""
        return self._reply("POST", "/auth/logout")

    def change_password(self, current: str, new: str) -> dict[str, Any]:
        """POST /auth/password; answers with the caller's new session."""
        return self._reply(
            "POST", "/auth/password", json={"current_password": current, "new_password": new}
        )

    def login(self, username: str, password: str) -> dict[str, Any]:
        """POST /auth/login."""
        return self._reply(
            "POST",
            "/auth/login",
            replayable=False,
            json={"username": username, "password": password},
        )

    def list_packages(self, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """GET /packages."""
        return self._reply("GET", "/packages", params={"limit": limit, "offset": offset})

    def show(self, package_id: str) -> dict[str, Any]:
        """GET /packages/{id}; IntegrityError if the server answers about another package.

        A signed package proves who wrote it, not which package was asked for: without this
        check a host could serve another genuinely signed package released to the caller
        (an older report, say) in place of the one requested, and it would verify.
        """
        detail: dict[str, Any] = self._reply("GET", f"/packages/{_segment(package_id)}")
        if detail.get("id") != package_id:
            raise IntegrityError("the server answered with another package than the one asked for")
        return detail

    def release(
        self,
        package_id: str,
        *,
        country: str,
        agency: str | None = None,
        not_before: datetime | None = None,
        expires_at: datetime | None = None,
    ) -> dict[str, Any]:
        """POST /packages/{id}/releases: release to a country, or one agency, perhaps timed."""
        body = {
            "country": country,
            "agency": agency,
            "not_before": not_before.isoformat() if not_before else None,
            "expires_at": expires_at.isoformat() if expires_at else None,
        }
        return self._reply("POST", f"/packages/{_segment(package_id)}/releases", json=body)

    def request_release(
        self, package_id: str, *, country: str, agency: str | None = None
    ) -> dict[str, Any]:
        """POST /packages/{id}/release-requests: ask the originator to release onward."""
        return self._reply(
            "POST",
            f"/packages/{_segment(package_id)}/release-requests",
            json={"country": country, "agency": agency},
        )

    def approve_release(self, release_id: str) -> dict[str, Any]:
        """POST /releases/{id}/approve."""
        return self._reply("POST", f"/releases/{_segment(release_id)}/approve")

    def reject_release(self, release_id: str) -> dict[str, Any]:
        """POST /releases/{id}/reject."""
        return self._reply("POST", f"/releases/{_segment(release_id)}/reject")

    def revoke_release(self, package_id: str, release_id: str) -> dict[str, Any]:
        """POST /packages/{id}/releases/{release_id}/revoke."""
        url = f"/packages/{_segment(package_id)}/releases/{_segment(release_id)}/revoke"
        return self._reply("POST", url)

    def acknowledge(self, package_id: str) -> dict[str, Any]:
        """POST /packages/{id}/acknowledge: accept an H3 package's restrictions."""
        return self._reply("POST", f"/packages/{_segment(package_id)}/acknowledge")

    def audit(self, package_id: str) -> dict[str, Any]:
        """GET /packages/{id}/audit: the auditor's view of a package, without content."""
        return self._reply("GET", f"/packages/{_segment(package_id)}/audit")

    def explain(self, *, user: str, package: str, action: str) -> dict[str, Any]:
        """GET /authz/explain: whether ``user`` may do ``action`` to ``package``, and why."""
        return self._reply(
            "GET", "/authz/explain", params={"user": user, "package": package, "action": action}
        )

    def upload(
        self,
        paths: list[Path],
        *,
        title: str,
        description: str = "",
        classification: str = "UNCLASSIFIED",
        handling: str = "H0",
        handling_note: str = "",
        progress: Progress | None = None,
        records: list[dict[str, Any]] | None = None,
        signer: UploadSigner | None = None,
    ) -> dict[str, Any]:
        """POST /packages: one package of ``paths``, each file streamed from disk, and the
        seizure ``records`` (JSON objects of SeizureRecord) when given; with ``signer``, hashed
        as it goes and followed by the signed manifest (issue 13)."""
        metadata = {
            "title": title,
            "description": description,
            "classification": classification,
            "handling": handling,
            "handling_note": handling_note,
        }
        if signer is not None:
            metadata["package_id"] = signer.package_id
            signer.cover_records(records or [])
        self._renew_if_expiring()
        with contextlib.ExitStack() as stack:
            parts: list[tuple[str, Any]] = [
                ("metadata", (None, json.dumps(metadata).encode(), "application/json"))
            ]
            if records:
                body = json.dumps(records, ensure_ascii=False).encode()
                parts.append(("records", (None, body, "application/json")))
            for path in paths:
                handle: Any = _CountingReader(stack.enter_context(open(path, "rb")), progress)
                if signer is not None:
                    handle = signer.wrap(path.name, handle)
                parts.append(("file", (path.name, handle, "application/octet-stream")))
            if signer is not None:
                parts.append(("signature", (None, signer.trailer(metadata), "application/json")))
            return self._reply(
                "POST",
                "/packages",
                replayable=False,
                files=parts,
                timeout=httpx.Timeout(None, connect=10.0),
            )

    def add_crossing_point(
        self, code: str, *, country: str, name: str, blo_opened: str
    ) -> dict[str, Any]:
        """POST /crossing-points (admins)."""
        body = {"code": code, "country": country, "name": name, "blo_opened": blo_opened}
        return self._reply("POST", "/crossing-points", json=body)

    def crossing_points(self) -> list[dict[str, Any]]:
        """GET /crossing-points."""
        result = self._request("GET", "/crossing-points")
        if not isinstance(result, list):
            raise BadServerReply("the server's list of crossing points is not a list")
        return [obj(item, "crossing point") for item in result]

    def seizure_stats(
        self, *, by: str, date_from: str | None = None, date_to: str | None = None
    ) -> dict[str, Any]:
        """GET /stats/seizures: totals of the records the caller may read, grouped."""
        # ``by`` is sent even empty: no grouping at all is a grouping the server takes.
        params = {"by": by, "from": date_from, "to": date_to}
        return self._reply(
            "GET", "/stats/seizures", params={k: v for k, v in params.items() if v is not None}
        )

    def seizure_before_after(
        self, *, crossing_point: str | None = None, window_days: int | None = None
    ) -> dict[str, Any]:
        """GET /stats/before-after: equal windows around each BLO opening date."""
        params = {"crossing_point": crossing_point, "window_days": window_days}
        return self._reply(
            "GET", "/stats/before-after", params={k: v for k, v in params.items() if v}
        )

    def download(
        self,
        package_id: str,
        dest: Path,
        *,
        force: bool = False,
        progress: Progress | None = None,
        detail: dict[str, Any] | None = None,
        before_keeping: Callable[[], None] | None = None,
    ) -> list[Path]:
        """Download every file of a package into ``dest``, all or nothing.

        ``detail`` is the package as ``show`` answered it, when the caller has it already:
        every read is a ledger entry, so one download reads the package once.

        Each file streams into a private temp file beside its destination and is checked
        against its size and SHA-256; only when every file checked out are they renamed into
        place. On any failure every temp file is removed, so nothing partial is left.
        ``before_keeping`` runs once every file checked out, before any is renamed: its error
        too leaves nothing (the signature check, issue 13).
        """
        if detail is None:
            detail = self.show(package_id)
        files = file_list(detail)
        dest.mkdir(parents=True, exist_ok=True)
        targets = []
        # Names come from the server: made safe and distinct, each a plain name in ``dest``.
        names = local_names([f["name"] for f in files])
        for item, name in zip(files, names, strict=True):
            target = dest / name
            # lexists: a dangling symlink is something there too. And whatever --force says,
            # only a regular file is replaced: a folder (or anything else) in the way would
            # fail its rename after earlier files were already replaced, all-or-nothing lost.
            if os.path.lexists(target):
                if not force:
                    raise Conflict(f"{target} exists (use --force to replace it)")
                if not stat.S_ISREG(target.lstat().st_mode):
                    raise Conflict(f"{target} exists and is not a regular file: not replaced")
            targets.append((item, target))
        staged: list[tuple[Path, Path]] = []
        try:
            for item, target in targets:
                tmp = self._fetch(package_id, item, dest, progress)
                staged.append((tmp, target))
            if before_keeping is not None:
                before_keeping()
            for tmp, target in staged:
                os.replace(tmp, target)
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
        return [t for _, t in targets]

    def _fetch(
        self, package_id: str, item: dict[str, Any], dest: Path, progress: Progress | None
    ) -> Path:
        # Checked before a byte is written: the size bounds what this file may take on disk.
        announced = count(item, "size", "file entry")
        fd, name = tempfile.mkstemp(dir=dest, prefix=".blovault-", suffix=".part")
        tmp = Path(name)
        # SHA-256 on a second thread (hashlib releases the GIL): this one receives and writes.
        digest = BackgroundDigest()
        try:
            with (
                os.fdopen(fd, "wb") as out,
                contextlib.closing(self.file_chunks(package_id, item["id"])) as chunks,
            ):
                size = unreported = written_back = 0
                for chunk in chunks:
                    # A server that keeps sending past the size it announced would fill the
                    # disk: stop at the first byte too many (closing the stream), keep nothing.
                    if size + len(chunk) > announced:
                        raise IntegrityError(
                            f"the server sent more than the file's announced {announced} "
                            "bytes; nothing kept"
                        )
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    unreported += len(chunk)
                    if progress and unreported >= _CHUNK:
                        progress(unreported)
                        unreported = 0
                    if size - written_back >= _WRITEBACK_BYTES:
                        out.flush()
                        _start_writeback(out.fileno(), written_back, size)
                        written_back = size
                if progress and unreported:
                    progress(unreported)
                out.flush()
                os.fsync(out.fileno())
            if size != announced or not constant_time_equal(digest.hexdigest(), item["sha256"]):
                raise IntegrityError("downloaded file does not match its recorded digest")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            digest.close()
        return tmp

    def register_key(self, public_key: str) -> dict[str, Any]:
        """POST /keys: register the caller's signing key."""
        return self._reply("POST", "/keys", json={"public_key": public_key})

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        """POST /keys/{id}/revoke."""
        return self._reply("POST", f"/keys/{_segment(key_id)}/revoke")

    def show_key(self, key_id: str) -> dict[str, Any]:
        """GET /keys/{id}: a key, with the inclusion proof of its registration."""
        return self._reply("GET", f"/keys/{_segment(key_id)}")

    def key_history(self, user: str | None = None) -> dict[str, Any]:
        """GET /keys/history: a user's key entries in the ledger, with inclusion proofs."""
        params = {"user": user} if user is not None else None
        return self._reply("GET", "/keys/history", params=params)

    def file_chunks(self, package_id: str, file_id: str) -> Generator[bytes]:
        """GET /packages/{id}/files/{file_id}: the file's plaintext, in chunks as they arrive."""
        return self._stream(f"/packages/{_segment(package_id)}/files/{_segment(file_id)}")

    def ledger_export_chunks(self, *, scoped: bool = False) -> Generator[bytes]:
        """GET /ledger/export: the export document (``scoped``: with the caller's openings)."""
        return self._stream("/ledger/export?scoped=true" if scoped else "/ledger/export")

    def _stream(self, url: str) -> Generator[bytes]:
        try:
            for attempt in (1, 2):
                with self._http.stream(
                    "GET", url, timeout=httpx.Timeout(60.0, connect=10.0)
                ) as response:
                    if response.status_code == 401 and attempt == 1 and self._renew():
                        continue  # nothing was received yet: ask again with the new token
                    if not response.is_success:
                        _raise_for(_read_bounded(response, _MAX_ERROR_BYTES, f"GET {url}"))
                    _check_encoding(response, f"GET {url}")
                    # As received (64 KiB reads): re-chunking to a fixed size only copies.
                    yield from response.iter_bytes()
                    return
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            # The server aborts the stream when a stored segment fails authentication.
            raise IntegrityError(
                f"download was cut off ({type(exc).__name__}); nothing kept"
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _http_error(exc) from None


def _http_error(exc: httpx.HTTPError | httpx.InvalidURL) -> VaultError:
    """The CLI's error for an httpx failure: a body that can't be decoded (a bad gzip
    Content-Encoding) is a bad reply, anything else means the server can't be used."""
    if isinstance(exc, httpx.DecodingError):
        return BadServerReply(f"the server's reply could not be decoded: {exc}")
    return StorageUnavailable(f"cannot reach the vault server: {type(exc).__name__}")


def file_list(detail: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``files`` of a package's details, each checked to carry an id, a name, a
    non-negative integer size and a SHA-256 string; BadServerReply otherwise."""
    files = objects(detail, "files", "package details")
    for item in files:
        field(item, "id", str, "file entry")
        field(item, "name", object, "file entry")
        count(item, "size", "file entry")
        field(item, "sha256", str, "file entry")
    return files


def _start_writeback(fd: int, start: int, end: int) -> None:
    """Have the kernel start writing ``[start, end)`` of ``fd`` to disk, without waiting.

    ``POSIX_FADV_DONTNEED`` starts writeback of dirty pages and drops the clean ones; it
    guarantees nothing, which is fine: the fsync before the rename does.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)


def _segment(value: str) -> str:
    """Refuse anything that is not a plain id before it goes into a URL path."""
    if not value.isalnum() or len(value) > 64:
        raise InvalidInput(f"not a valid id: {value!r}")
    return value


def local_names(names: Sequence[object]) -> list[str]:
    """A safe, distinct local filename for each name a server gave, in order.

    Packages stored before the vault refused them may hold names that clash once case and
    Unicode normalisation are ignored, or that Windows can't hold; a hostile server may send
    anything. Each valid name keeps its name the first time it occurs; any other gets
    unsafe characters replaced by ``_``, a ``_`` before a device name, and `` (2)``,
    `` (3)``... before its extension until it clashes with no other. Every result passes
    :func:`check_filename`, so it is a plain name that stays inside the target folder.
    """
    texts = [n if isinstance(n, str) else str(n) for n in names]
    result: list[str | None] = [None] * len(texts)
    taken: set[str] = set()
    for i, name in enumerate(texts):  # first: names that are fine as they are
        with contextlib.suppress(InvalidInput):
            if check_filename(name) == name and filename_key(name) not in taken:
                result[i] = name
                taken.add(filename_key(name))
    for i, name in enumerate(texts):
        if result[i] is None:
            result[i] = _distinct(_usable(name, i), taken)
            taken.add(filename_key(result[i] or ""))
    return [r or "" for r in result]


def _usable(name: str, position: int) -> str:
    """``name`` made into one :func:`check_filename` accepts (``file-N`` if nothing is left)."""
    name = "".join(
        "_" if ch in _WINDOWS_ILLEGAL or unsafe_char(ch) or unicodedata.category(ch) == "Cf" else ch
        for ch in unicodedata.normalize("NFC", name)
    )
    stem, ext = _split_extension(name)
    name = _fit(stem, ext)
    for candidate in (name, "_" + name):  # "_" before a device name such as CON
        with contextlib.suppress(InvalidInput):
            if candidate.strip("._"):
                return check_filename(candidate)
    return f"file-{position + 1}"


def _split_extension(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    if dot > 0 and len(name) - dot <= 16:
        return name[:dot], name[dot:]
    return name, ""


def _fit(stem: str, suffix: str) -> str:
    """``stem + suffix`` within the byte limit, without outer spaces, leading dots or '-',
    or a trailing dot."""
    room = MAX_FILENAME_BYTES - len(suffix.encode())
    stem = stem.encode()[:room].decode("utf-8", "ignore")
    while stem != (trimmed := stem.strip().lstrip(".-").rstrip(".")):
        stem = trimmed
    return (stem + suffix).strip().rstrip(".")


def _distinct(name: str, taken: set[str]) -> str:
    if filename_key(name) not in taken:
        return name
    stem, ext = _split_extension(name)
    n = 2
    while True:
        candidate = _fit(stem, f" ({n}){ext}")
        if filename_key(candidate) not in taken:
            with contextlib.suppress(InvalidInput):
                return check_filename(candidate)
        n += 1
