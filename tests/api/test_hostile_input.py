"""Hostile input against a real server on 127.0.0.1, byte for byte where httpx can't send it.

Every hostile request must be answered with a clear 4xx in the one JSON error shape
(``{"error": {"code", "message", "receipt"}}``, see ``api/errors.py``), or -- where the
request never becomes one (a body cut short, an oversized header) -- with the connection
closed or a bare 4xx from the HTTP layer; and it must store NOTHING: no package or file row,
no object or temp file in ``settings.resolved_store_dir``, no ``upload``/``allow`` ledger entry
and no change of policy. Error bodies never carry a traceback or a server file path.

Raw requests are built by hand (``http_request``, ``multipart``) and sent over a socket
(``exchange``); the server is uvicorn on 127.0.0.1 (``running_server``) and every server
started here is stopped by its fixture.

Where the server does not meet the contract the test says so as ``xfail(strict=True,
reason="BUG ...")``: it turns into a failure as soon as the bug is fixed, so the marker gets
removed then.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import unicodedata
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlmodel import Session, func, select

from tests.conftest import (
    FAST_ARGON2,
    METRICS_AUTH,
    METRICS_TOKEN,
    ON_POSTGRES,
    PASSWORD,
    World,
    postgres_schema_url,
    running_server,
    seed,
)
from vault.config import load_settings
from vault.errors import AuthenticationFailed
from vault.models import Package, PackageFile, Release
from vault.service import Vault

KiB, MiB = 1024, 1024**2
FILE_LIMIT = 1 * MiB  # max_file_size of the served vault
PACKAGE_LIMIT = FILE_LIMIT + FILE_LIMIT // 2  # max_package_size
FILES_LIMIT = 3  # max_files_per_package
METADATA_LIMIT = 4 * KiB  # max_metadata_bytes
JSON_LIMIT = 64 * KiB  # max_json_bytes (the default)
REPO = str(Path(__file__).resolve().parents[2])
LEAK_MARKERS = ("Traceback", "/work/", REPO, "site-packages", '.py"', ".py'", 'File "')
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


# --- a served vault -----------------------------------------------------------------------------


@dataclass
class Served:
    """A seeded vault served on 127.0.0.1, with a token per user and a few real ids."""

    world: World
    url: str
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def auth(self, user: str = "uz.officer") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


@contextlib.contextmanager
def serve(base: Path, **overrides: Any) -> Iterator[Served]:
    """A seeded vault with ``overrides`` on ``base`` (PostgreSQL when the suite runs on it)."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_schema_url()) if ON_POSTGRES else None
        settings = load_settings(
            data_dir=base / "vault-data",
            database_url=url,
            **{**FAST_ARGON2, "metrics_token": METRICS_TOKEN, **overrides},
        )
        vault = Vault.open(settings)
        stack.callback(vault.close)
        world = World(vault=vault, settings=settings, users=seed(vault))
        served = Served(world=world, url=stack.enter_context(running_server(vault)))
        served.tokens = {u: vault.login(u, PASSWORD).access_token for u in world.users}
        yield served


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Small limits; login throttling out of the way (tests/api/test_brute_force.py has it)."""
    with serve(
        tmp_path_factory.mktemp("hostile"),
        max_file_size=FILE_LIMIT,
        max_package_size=PACKAGE_LIMIT,
        max_files_per_package=FILES_LIMIT,
        max_metadata_bytes=METADATA_LIMIT,
        body_timeout_seconds=10,
        login_failures_per_user=10_000,
        login_failures_per_address=10_000,
    ) as s:
        # One real package, file and release, for the tests that need ids that exist.
        reply = httpx.post(
            s.url + "/packages",
            files=[
                ("metadata", (None, json.dumps({"title": "real"}), "application/json")),
                ("file", ("real.txt", b"real content", "text/plain")),
            ],
            headers=s.auth(),
            timeout=TIMEOUT,
        )
        assert reply.status_code == 201, reply.text
        package = reply.json()["package"]
        released = httpx.post(
            f"{s.url}/packages/{package['id']}/releases",
            json={"country": "KG"},  # a country without users: changes nobody's access
            headers=s.auth(),
            timeout=TIMEOUT,
        )
        assert released.status_code == 201, released.text
        s.ids = {
            "package": package["id"],
            "file": package["files"][0]["id"],
            "release": released.json()["release"]["id"],
        }
        yield s


@pytest.fixture(scope="module")
def slow_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A vault that cuts off a request body after one second of silence."""
    with serve(
        tmp_path_factory.mktemp("slow"),
        body_timeout_seconds=1,
        login_failures_per_user=10_000,
        login_failures_per_address=10_000,
    ) as s:
        yield s


# --- what is stored -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """Everything a request could have stored."""

    packages: int
    files: int
    releases: int
    uploads_allowed: int
    objects: tuple[str, ...]
    policy: str
    rules: tuple[tuple[str, ...], ...]


def stored(world: World) -> Stored:
    with Session(world.vault.engine) as session:
        packages = session.exec(select(func.count()).select_from(Package)).one()
        files = session.exec(select(func.count()).select_from(PackageFile)).one()
        releases = session.exec(select(func.count()).select_from(Release)).one()
    entries = world.vault.unscoped_entries()
    root = world.settings.resolved_store_dir
    objects = tuple(
        sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        if root.exists()
        else ()
    )
    return Stored(
        packages=int(packages),
        files=int(files),
        releases=int(releases),
        uploads_allowed=sum(1 for e in entries if (e.action, e.decision) == ("upload", "allow")),
        objects=objects,
        policy=world.vault.authz.policy_hash,
        rules=tuple(sorted(world.vault.authz.extra_rules)),
    )


def assert_nothing_stored(world: World, before: Stored, *, settle: float = 10.0) -> None:
    """Nothing new is stored, once the server is done with the request (polls up to
    ``settle`` seconds: a request cut off may still be cleaning up), and it stays so."""
    deadline = time.monotonic() + settle
    now = stored(world)
    while now != before and time.monotonic() < deadline:
        time.sleep(0.1)
        now = stored(world)
    assert now == before, f"something was stored:\nbefore={before}\nafter ={now}"
    time.sleep(0.2)
    assert stored(world) == before


def assert_serves(served: Served) -> None:
    """The server still answers normal requests, anonymous and authenticated."""
    with httpx.Client(base_url=served.url, timeout=TIMEOUT) as client:
        assert client.get("/healthz").status_code == 200
        reply = client.get("/packages", headers=served.auth())
        assert reply.status_code == 200, reply.text


# --- raw HTTP -----------------------------------------------------------------------------------


@dataclass
class Reply:
    """A response read off a socket; ``status`` is None if the server closed without one."""

    status: int | None
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"{self.status} {self.headers.get('content-type')} {self.body[:300]!r}"


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except (ConnectionResetError, BrokenPipeError):
        return b""


# Bytes read past the end of one response (the start of the next), by socket: one recv() can
# hold the tail of a reply and the head of the one after it.
_UNREAD: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_reply(sock: socket.socket) -> Reply:
    """Read one response (status line, headers, Content-Length body) or what there is."""
    buffer = _UNREAD.pop(sock, b"")
    while b"\r\n\r\n" not in buffer:
        chunk = _recv(sock)
        if not chunk:
            return Reply(None, {}, buffer)
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(rest) < length:
        chunk = _recv(sock)
        if not chunk:
            break
        rest += chunk
    if length < 0:
        return Reply(status, headers, rest)
    if len(rest) > length:
        _UNREAD[sock] = rest[length:]
    return Reply(status, headers, rest[:length])


def exchange(
    port: int,
    data: bytes,
    *,
    half_close: bool = False,
    piece: int | None = None,
    timeout: float = 30.0,
) -> Reply:
    """Send ``data`` on a fresh connection (in pieces of ``piece`` bytes, if given); read the
    reply. The server may answer and close before reading everything: send errors are ignored.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            if piece:
                for i in range(0, len(data), piece):
                    sock.sendall(data[i : i + piece])
                    time.sleep(0.001)
            else:
                sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        return read_reply(sock)


def http_request(
    method: str,
    target: bytes | str,
    *,
    token: str | None = None,
    body: bytes = b"",
    content_type: bytes | None = None,
    content_length: int | None = None,
    extra: bytes = b"",
) -> bytes:
    """The bytes of one HTTP/1.1 request, exactly as given (no normalisation, no encoding)."""
    if isinstance(target, str):
        target = target.encode()
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    if token:
        lines.append(b"Authorization: Bearer " + token.encode())
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type)
    if content_length is None:
        content_length = len(body)
    if method in ("POST", "PUT", "PATCH") or content_length:
        lines.append(b"Content-Length: " + str(content_length).encode())
    head = b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"
    return head + body


BOUNDARY = b"vault-hostile-7d1f0b"
MULTIPART = b"multipart/form-data; boundary=" + BOUNDARY


def part(disposition: bytes, data: bytes, content_type: bytes | None = None) -> bytes:
    head = b"Content-Disposition: " + disposition + b"\r\n"
    if content_type is not None:
        head += b"Content-Type: " + content_type + b"\r\n"
    return head + b"\r\n" + data


def metadata_part(meta: Any = None, raw: bytes | None = None) -> bytes:
    data = raw if raw is not None else json.dumps(meta or {"title": "hostile"}).encode()
    return part(b'form-data; name="metadata"', data, b"application/json")


def file_part(data: bytes = b"payload", filename: bytes = b"report.txt") -> bytes:
    disposition = b'form-data; name="file"; filename="' + filename + b'"'
    return part(disposition, data, b"application/octet-stream")


def multipart(*parts: bytes, boundary: bytes = BOUNDARY, close: bool = True) -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return body + (b"--" + boundary + b"--\r\n" if close else b"")


def upload_request(served: Served, body: bytes, **kwargs: Any) -> bytes:
    kwargs.setdefault("content_type", MULTIPART)
    return http_request("POST", "/packages", token=served.tokens["uz.officer"], body=body, **kwargs)


# --- error replies ------------------------------------------------------------------------------


def assert_no_leak(text: bytes | str) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for marker in LEAK_MARKERS:
        assert marker not in text, f"error body leaks {marker!r}: {text[:500]}"


def assert_error(reply: Reply | httpx.Response, *statuses: int, code: str | None = None) -> Any:
    """A 4xx in the one JSON error shape, with one of ``statuses``; returns the body."""
    status = reply.status if isinstance(reply, Reply) else reply.status_code
    body_bytes = reply.body if isinstance(reply, Reply) else reply.content
    assert status in statuses, f"expected {statuses}, got {reply}"
    assert reply.headers.get("content-type", "").startswith("application/json"), str(reply)
    assert_no_leak(body_bytes)
    body = json.loads(body_bytes)
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "receipt"}, body
    assert isinstance(error["code"], str), body
    assert error["code"], body
    assert isinstance(error["message"], str), body
    assert error["message"], body
    assert error["receipt"] is None or isinstance(error["receipt"], int), body
    if code is not None:
        assert error["code"] == code, body
    return body


# --- malformed multipart ------------------------------------------------------------------------

GOOD = multipart(metadata_part(), file_part())

MALFORMED: dict[str, tuple[bytes | None, bytes]] = {
    # name: (Content-Type, body)
    "no-content-type": (None, GOOD),
    "not-multipart": (b"application/json", b'{"title": "x"}'),
    "urlencoded": (b"application/x-www-form-urlencoded", b"metadata=%7B%7D&file=x"),
    "no-boundary": (b"multipart/form-data", GOOD),
    "empty-boundary": (b"multipart/form-data; boundary=", GOOD),
    "boundary-over-200": (b"multipart/form-data; boundary=" + b"b" * 201, GOOD),
    "multipart-mixed": (b"multipart/mixed; boundary=" + BOUNDARY, GOOD),
    "wrong-boundary": (b"multipart/form-data; boundary=another-boundary", GOOD),
    "garbage": (MULTIPART, bytes(range(256)) * 16),
    "empty-body": (MULTIPART, b""),
    "only-closing-boundary": (MULTIPART, b"--" + BOUNDARY + b"--\r\n"),
    "no-parts-crlf": (MULTIPART, b"\r\n\r\n\r\n"),
    "file-before-metadata": (MULTIPART, multipart(file_part(), metadata_part())),
    "metadata-only": (MULTIPART, multipart(metadata_part())),
    "two-metadata-parts": (MULTIPART, multipart(metadata_part(), metadata_part(), file_part())),
    "metadata-invalid-json": (MULTIPART, multipart(metadata_part(raw=b"{not json"), file_part())),
    "metadata-not-object": (MULTIPART, multipart(metadata_part(raw=b"[1, 2]"), file_part())),
    "metadata-string": (MULTIPART, multipart(metadata_part(raw=b'"title"'), file_part())),
    "metadata-null": (MULTIPART, multipart(metadata_part(raw=b"null"), file_part())),
    "metadata-not-utf8": (
        MULTIPART,
        multipart(metadata_part(raw=b'{"title": "\xff"}'), file_part()),
    ),
    "metadata-wrong-types": (
        MULTIPART,
        multipart(metadata_part({"title": 5, "fields": [1], "handling": 3}), file_part()),
    ),
    "metadata-extra-field": (
        MULTIPART,
        multipart(metadata_part({"title": "t", "agency": "KZ-BORDER"}), file_part()),
    ),
    "metadata-bad-enum": (
        MULTIPART,
        multipart(metadata_part({"title": "t", "classification": "TOP SECRET"}), file_part()),
    ),
    "metadata-empty-title": (MULTIPART, multipart(metadata_part({"title": ""}), file_part())),
    "metadata-huge-int": (
        MULTIPART,
        multipart(metadata_part(raw=b'{"title": "t", "x": ' + b"9" * 3000 + b"}"), file_part()),
    ),
    "part-without-disposition": (
        MULTIPART,
        multipart(metadata_part(), b"Content-Type: text/plain\r\n\r\nhello"),
    ),
    "disposition-not-form-data": (
        MULTIPART,
        multipart(metadata_part(), part(b'attachment; name="file"; filename="a.txt"', b"x")),
    ),
    "file-without-filename": (
        MULTIPART,
        multipart(metadata_part(), part(b'form-data; name="file"', b"x")),
    ),
    "wrong-part-name": (
        MULTIPART,
        multipart(metadata_part(), part(b'form-data; name="other"; filename="a.txt"', b"x")),
    ),
    "part-header-without-colon": (
        MULTIPART,
        multipart(metadata_part(), b"this is not a header\r\n\r\nx"),
    ),
    "too-many-part-headers": (
        MULTIPART,
        multipart(
            metadata_part(),
            b"".join(b"X-H%d: v\r\n" % i for i in range(20)) + file_part(),
        ),
    ),
    "part-header-over-4k": (
        MULTIPART,
        multipart(metadata_part(), b"X-Long: " + b"v" * 8192 + b"\r\n" + file_part()),
    ),
}


@pytest.mark.parametrize(("content_type", "body"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_multipart_is_refused(
    content_type: bytes | None, body: bytes, served: Served
) -> None:
    before = stored(served.world)
    reply = exchange(served.port, upload_request(served, body, content_type=content_type))
    assert_error(reply, 422, code="invalid_input")
    assert_nothing_stored(served.world, before)


@pytest.mark.parametrize("depth", [2000])
def test_deeply_nested_metadata_is_422(depth: int, served: Served) -> None:
    raw = b"[" * depth + b"]" * depth
    body = multipart(metadata_part(raw=raw), file_part())
    before = stored(served.world)
    done = requests_done(served, "/packages")
    reply = exchange(served.port, upload_request(served, body))
    settle(served, "/packages", done)
    assert_error(reply, 413, 422)
    assert_nothing_stored(served.world, before)


# --- bodies cut short, or longer than they say ------------------------------------------------

BIG = bytes(range(256)) * (3 * 64 * KiB // 256)  # three segments: objects get written
FULL = multipart(metadata_part(), file_part(b"first"), file_part(BIG, b"big.bin"))


def _cut(body: bytes, where: str) -> bytes:
    marks = {
        "in-preamble": 5,
        "in-metadata": body.index(b'"title"') + 3,
        "after-metadata": body.index(b"first") - 40,
        "in-first-file": body.index(b"first") + 2,
        "in-big-file": body.index(BIG) + len(BIG) // 2,
        "before-closing-boundary": len(body) - len(BOUNDARY) - 6,
        "in-closing-boundary": len(body) - 3,  # "--" of the close is there, the last "--" isn't
    }
    return body[: marks[where]]


CUTS = [
    "in-preamble",
    "in-metadata",
    "after-metadata",
    "in-first-file",
    "in-big-file",
    "before-closing-boundary",
    "in-closing-boundary",
]


@pytest.mark.parametrize("where", CUTS)
def test_truncated_multipart_is_refused(where: str, served: Served) -> None:
    """The body ends (with a correct, shorter Content-Length) before the closing boundary."""
    body = _cut(FULL, where)
    before = stored(served.world)
    reply = exchange(served.port, upload_request(served, body))
    assert_error(reply, 422, code="invalid_input")
    assert_nothing_stored(served.world, before)


@pytest.mark.parametrize("where", ["in-metadata", "in-first-file", "in-big-file"])
@pytest.mark.parametrize("how", ["half-close", "close"])
def test_body_shorter_than_content_length(where: str, how: str, served: Served) -> None:
    """The client promises the full length, sends less, then goes away: nothing is stored, and
    the server goes on serving (the connection may just close without an answer)."""
    body = _cut(FULL, where)
    data = upload_request(served, body, content_length=len(FULL))
    before = stored(served.world)
    done = requests_done(served, "/packages")
    reply = None
    if how == "half-close":
        reply = exchange(served.port, data, half_close=True)
    else:
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            sock.sendall(data)
            time.sleep(0.2)  # let the server start on the body
    settle(served, "/packages", done)
    if reply is not None:
        assert reply.status is None or 400 <= reply.status < 500, str(reply)
        if reply.status is not None:
            assert_error(reply, reply.status)
    assert_nothing_stored(served.world, before)
    assert_serves(served)


def requests_done(served: Served, route: str, status_prefix: str = "") -> float:
    """How many requests to ``route`` the server has finished (with a status starting with
    ``status_prefix``), from its Prometheus counter."""
    text = httpx.get(served.url + "/metrics", headers=METRICS_AUTH, timeout=TIMEOUT).text
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("vault_http_requests_total{")
            and f'route="{route}"' in line
            and f'status="{status_prefix}' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def settle(served: Served, route: str, before: float, timeout: float = 10.0) -> None:
    """Wait until the server has finished a request to ``route`` begun after ``before`` was
    read (the counter moves when the request ends, however it ends), then make one more
    request, so whatever the server logs about it (a traceback, on a bug) is written.

    Python 3.11's ``traceback`` parses source with ``ast``, whose recursion counter is shared
    between threads (CPython gh-106905): pytest formatting a failure while the server thread
    formats a traceback can end the session with INTERNALERROR "AST constructor recursion
    depth mismatch". Tests that may make the server log a traceback settle first.
    """
    deadline = time.monotonic() + timeout
    while requests_done(served, route) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(served.url + "/healthz", timeout=TIMEOUT).status_code == 200


def test_client_disconnect_mid_upload_is_not_a_server_error(served: Served) -> None:
    done, errors = requests_done(served, "/packages"), requests_done(served, "/packages", "5")
    body = _cut(FULL, "in-big-file")
    data = upload_request(served, body, content_length=len(FULL))
    stored_before = stored(served.world)
    reply = exchange(served.port, data, half_close=True)
    settle(served, "/packages", done)
    assert reply.status is None or reply.status < 500
    assert_nothing_stored(served.world, stored_before)
    assert requests_done(served, "/packages", "5") == errors


@pytest.mark.parametrize("where", ["in-first-file", "in-big-file"])
def test_body_longer_than_content_length(where: str, served: Served) -> None:
    """Content-Length covers only part of the body: the server reads that much (a truncated
    multipart body: 422), and what follows is not a request (a bare 400, or closed)."""
    cut = len(_cut(FULL, where))
    data = upload_request(served, FULL, content_length=cut)
    before = stored(served.world)
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(data)
        first = read_reply(sock)
        assert_error(first, 422, code="invalid_input")
        second = read_reply(sock)
        assert second.status is None or 400 <= second.status < 500, str(second)
    assert_nothing_stored(served.world, before)
    assert_serves(served)


def test_json_body_longer_than_content_length(served: Served) -> None:
    body = json.dumps({"username": "uz.officer", "password": PASSWORD}).encode()
    data = http_request(
        "POST",
        "/auth/login",
        body=body + b"GET /healthz HTTP/1.1\r\n\r\n",
        content_type=b"application/json",
        content_length=len(body) - 5,
    )
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(data)
        first = read_reply(sock)
        assert_error(first, 400, 422)
    assert_serves(served)


# --- sizes --------------------------------------------------------------------------------------


def test_file_over_the_limit_is_413(served: Served) -> None:
    body = multipart(metadata_part(), file_part(b"x" * (FILE_LIMIT + 1), b"big.bin"))
    before = stored(served.world)
    reply = exchange(served.port, upload_request(served, body))
    assert_error(reply, 413, code="too_large")
    assert_nothing_stored(served.world, before)
    assert_serves(served)


def test_package_over_the_limit_is_413(served: Served) -> None:
    """Each file is under the file limit, together they are over the package limit: the
    first file's object, already written, is deleted again."""
    each = PACKAGE_LIMIT // 2 + 1
    body = multipart(
        metadata_part(), file_part(b"a" * each, b"a.bin"), file_part(b"b" * each, b"b.bin")
    )
    assert each <= FILE_LIMIT
    before = stored(served.world)
    reply = exchange(served.port, upload_request(served, body))
    assert_error(reply, 413, code="too_large")
    assert_nothing_stored(served.world, before)


def test_metadata_over_the_limit_is_413(served: Served) -> None:
    meta = {"title": "t", "description": "d" * (METADATA_LIMIT + 1)}
    body = multipart(metadata_part(meta), file_part())
    before = stored(served.world)
    reply = exchange(served.port, upload_request(served, body))
    assert_error(reply, 413, code="too_large")
    assert_nothing_stored(served.world, before)


def test_too_many_files_is_refused(served: Served) -> None:
    files = [file_part(b"x", b"f%d.txt" % i) for i in range(FILES_LIMIT + 1)]
    body = multipart(metadata_part(), *files)
    before = stored(served.world)
    reply = exchange(served.port, upload_request(served, body))
    assert_error(reply, 413, 422)
    assert_nothing_stored(served.world, before)


def test_file_at_the_limit_is_accepted(served: Served) -> None:
    """The limits are not off by one: exactly max_file_size is fine."""
    body = multipart(metadata_part(), file_part(b"x" * FILE_LIMIT, b"exact.bin"))
    reply = exchange(served.port, upload_request(served, body))
    assert reply.status == 201, str(reply)
    assert reply.json()["package"]["size"] == FILE_LIMIT


@pytest.mark.parametrize(
    "path", ["/auth/login", "/ledger/proof/consistency", "/packages/{package}/releases"]
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_oversized_json_is_413(path: str, framing: str, served: Served) -> None:
    target = path.format(package=served.ids["package"])
    body = b'{"username": "' + b"a" * MiB + b'"}'
    before = stored(served.world)
    with httpx.Client(base_url=served.url, timeout=TIMEOUT) as client:
        content: bytes | Iterator[bytes] = (
            body if framing == "content-length" else iter([body[:KiB], body[KiB:]])
        )
        reply = client.post(
            target,
            content=content,
            headers={**served.auth("uz.auditor"), "content-type": "application/json"},
        )
    assert_error(reply, 413, code="too_large")
    assert_nothing_stored(served.world, before)


# --- slow bodies --------------------------------------------------------------------------------


def _stalled_upload(served: Served) -> socket.socket:
    """An upload that sends its headers, the metadata and a little of a file, then stalls."""
    body = multipart(metadata_part(), file_part(BIG, b"slow.bin"))
    data = upload_request(served, body)
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    sock.sendall(data[: len(data) - len(BIG) // 2 - 100])
    return sock


def test_slow_body_times_out(slow_served: Served) -> None:
    before = stored(slow_served.world)
    started = time.monotonic()
    with _stalled_upload(slow_served) as sock:
        assert_serves(slow_served)  # meanwhile
        reply = read_reply(sock)
    elapsed = time.monotonic() - started
    assert reply.status is None or reply.status == 408, str(reply)
    if reply.status == 408:
        assert_error(reply, 408, code="request_timeout")
    assert elapsed < 20, f"cut off only after {elapsed:.1f} s"
    assert_nothing_stored(slow_served.world, before)
    assert_serves(slow_served)  # afterwards


def test_slow_json_body_times_out(slow_served: Served) -> None:
    data = http_request(
        "POST",
        "/auth/login",
        body=b'{"username": "uz',
        content_type=b"application/json",
        content_length=100,
    )
    with socket.create_connection(("127.0.0.1", slow_served.port), timeout=30) as sock:
        sock.sendall(data)
        reply = read_reply(sock)
    assert_error(reply, 408, code="request_timeout")
    assert_serves(slow_served)


def test_many_slow_uploads_do_not_starve_the_server(slow_served: Served) -> None:
    """More stalled uploads than worker threads (anyio's default limiter has 40): each is cut
    off and frees its worker, so a normal request gets through while they stall."""
    before = stored(slow_served.world)
    sockets = [_stalled_upload(slow_served) for _ in range(48)]
    try:
        started = time.monotonic()
        assert_serves(slow_served)
        assert time.monotonic() - started < 30
        replies = [read_reply(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    for reply in replies:
        assert reply.status is None or reply.status == 408, str(reply)
    assert_nothing_stored(slow_served.world, before)
    assert_serves(slow_served)


# --- filenames ----------------------------------------------------------------------------------

BAD_FILENAMES: dict[str, bytes] = {
    "dotdot-slash": b"../evil.txt",
    "deep-traversal": b"../../../../../../etc/passwd",
    "dotdot": b"..",
    "dot": b".",
    "absolute": b"/abs/path",
    "absolute-etc": b"/etc/passwd",
    "subdir": b"a/b.txt",
    "backslash": b"a\\b.txt",
    "windows-traversal": b"..\\..\\evil.txt",
    "nul": b"a\x00b.txt",
    "nul-suffix": b"report.txt\x00.exe",
    "control-soh": b"a\x01b.txt",
    "escape-sequence": b"\x1b[31mred.txt",
    "delete-char": b"a\x7fb.txt",
    "tab": b"a\tb.txt",
    "c1-control": "a\u0085b.txt".encode(),
    "rtl-override": "evil\u202etxt.exe".encode(),
    "zero-width": "a\u200bb.txt".encode(),
    "line-separator": "a\u2028b.txt".encode(),
    "300-bytes": b"n" * 296 + b".txt",
    "256-bytes": b"n" * 252 + b".txt",
    "300-bytes-multibyte": "я".encode() * 150,
    "invalid-utf8": b"\xff\xfe.txt",
    "overlong-slash": b"\xc0\xafetc",
    "surrogate": b"\xed\xa0\x80.txt",
    "truncated-utf8": b"abc\xe2\x82",
    "empty": b"",
    "spaces-only": b"   ",
    "leading-space": b" report.txt",
    "trailing-space": b"report.txt ",
    "leading-dash": b"-rf",
}


@pytest.mark.parametrize("name", BAD_FILENAMES.values(), ids=BAD_FILENAMES.keys())
def test_bad_filename_is_422(name: bytes, served: Served) -> None:
    body = multipart(metadata_part(), file_part(b"content", name))
    before = stored(served.world)
    reply = exchange(served.port, upload_request(served, body))
    assert_error(reply, 422, code="invalid_input")
    assert_nothing_stored(served.world, before)


def test_bad_filename_after_a_good_file_stores_nothing(served: Served) -> None:
    """The first file is sealed and stored before the second's name is seen; it is deleted."""
    body = multipart(
        metadata_part(), file_part(BIG, b"good.bin"), file_part(b"x", b"../../escape.txt")
    )
    before = stored(served.world)
    reply = exchange(served.port, upload_request(served, body))
    assert_error(reply, 422, code="invalid_input")
    assert_nothing_stored(served.world, before)


def test_extended_filename_parameter_alone_is_refused(served: Served) -> None:
    """``filename*`` (RFC 5987) is not used in multipart/form-data (RFC 7578 4.2): a part
    with only ``filename*=`` has no filename, so it is refused, traversal or not."""
    for value in (b"UTF-8''..%2F..%2Fetc%2Fpasswd", b"UTF-8''ok.txt"):
        disposition = b'form-data; name="file"; filename*=' + value
        body = multipart(metadata_part(), part(disposition, b"x"))
        before = stored(served.world)
        reply = exchange(served.port, upload_request(served, body))
        assert_error(reply, 422, code="invalid_input")
        assert_nothing_stored(served.world, before)


@pytest.mark.parametrize(
    "name",
    [
        "utf-8''..%2F..%2Fetc%2Fpasswd",
        "UTF-8''a%2Fb",
        "utf-8''a%00b.txt",
        "utf-8''%FF",
        "utf-8''%C0%AF",
        "a..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f",
    ],
)
def test_percent_encoded_filename_is_taken_literally(name: str, served: Served) -> None:
    """Filenames are never percent-decoded (RFC 7578): what looks like an encoded path or NUL
    is stored as the literal, harmless text, never decoded into a path; never a 500."""
    body = multipart(metadata_part(), file_part(b"content", name.encode()))
    reply = exchange(served.port, upload_request(served, body))
    assert reply.status == 201, str(reply)
    [info] = reply.json()["package"]["files"]
    assert info["name"] == name
    root = served.world.settings.resolved_store_dir
    assert (root / info["id"][:2] / info["id"][2:4] / info["id"]).is_file()


# --- oversized headers --------------------------------------------------------------------------
#
# uvicorn's h11 protocol refuses a header block over 16 KiB with a bare
# "400 Bad Request" / text/plain "Invalid HTTP request received." -- not the JSON shape: the
# request never reaches the app. These tests only require a 4xx and nothing stored.


def _big_header_upload(served: Served, size: int) -> bytes:
    body = multipart(metadata_part(), file_part())
    return upload_request(served, body, extra=b"X-Padding: " + b"p" * size + b"\r\n")


def _assert_bare_4xx(reply: Reply) -> None:
    assert reply.status is not None, "closed without an answer"
    assert 400 <= reply.status < 500, str(reply)
    assert_no_leak(reply.body)


@pytest.mark.parametrize(
    ("size", "piece"),
    [(64 * KiB, 4 * KiB), (1 * MiB, None), (1 * MiB, 16 * KiB)],
    ids=["64KiB-trickled", "1MiB", "1MiB-trickled"],
)
def test_oversized_header_is_refused(size: int, piece: int | None, served: Served) -> None:
    before = stored(served.world)
    reply = exchange(served.port, _big_header_upload(served, size), piece=piece)
    _assert_bare_4xx(reply)
    assert_nothing_stored(served.world, before)
    assert_serves(served)


def test_oversized_header_in_one_segment_is_refused(served: Served) -> None:
    before = stored(served.world)
    reply = exchange(served.port, _big_header_upload(served, 60 * KiB))
    _assert_bare_4xx(reply)
    assert_nothing_stored(served.world, before)


# --- JSON bodies --------------------------------------------------------------------------------

NOT_OBJECTS = [b"[]", b'["username", "password"]', b'"text"', b"42", b"null", b"true"]
MALFORMED_JSON = [b"{", b"{'username': 'a'}", b"", b"\xff\xfe", b"[" * 20000, b"9" * 5000]


JSON_ROUTES = ["login", "releases", "release-requests", "consistency"]


def _target(served: Served, which: str) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(path, caller, a valid body, the same with wrong types) of a JSON-taking route."""
    package = served.ids["package"]
    targets: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
        "login": (
            "/auth/login",
            "uz.officer",
            {"username": "uz.officer", "password": PASSWORD},
            {"username": 5, "password": ["x"]},
        ),
        "releases": (
            f"/packages/{package}/releases",
            "uz.officer",
            {"country": "KG"},
            {"country": 12, "agency": {"a": 1}},
        ),
        "release-requests": (
            f"/packages/{package}/release-requests",
            "kz.officer",
            {"country": "TJ"},
            {"country": None, "agency": 7},
        ),
        "consistency": (
            "/ledger/proof/consistency",
            "uz.auditor",
            {"checkpoint": "x"},
            {"checkpoint": 1.5},
        ),
    }
    return targets[which]


@pytest.mark.parametrize("which", JSON_ROUTES)
def test_json_that_is_not_an_object_or_well_typed_is_refused(which: str, served: Served) -> None:
    path, caller, valid, wrong = _target(served, which)
    bodies = [
        *NOT_OBJECTS,
        json.dumps(wrong).encode(),
        json.dumps({**valid, "unexpected": "field"}).encode(),
        json.dumps({}).encode(),
    ]
    before = stored(served.world)
    with httpx.Client(base_url=served.url, timeout=TIMEOUT) as client:
        for body in bodies:
            reply = client.post(
                path,
                content=body,
                headers={**served.auth(caller), "content-type": "application/json"},
            )
            assert_error(reply, 422, code="invalid_input")
        for body in MALFORMED_JSON:
            for content_type in ("application/json", "text/plain"):
                headers = {**served.auth(caller), "content-type": content_type}
                reply = client.post(path, content=body, headers=headers)
                assert_error(reply, 400, 422)
    assert_nothing_stored(served.world, before)


# --- injection strings are data ------------------------------------------------------------------

INJECTIONS = [
    "' OR 1=1 --",
    "' OR '1'='1",
    '"; DROP TABLE package; --',
    "'; DELETE FROM release; --",
    "1; UPDATE user SET role='admin' --",
    "admin'--",
    "p, *, *, *, *, *, read, allow",
    "g, officer, admin",
    "p, officer, none, *, *, *, manage, allow\ng, auditor, admin",
    "p, *, *, *, *, *, download, allow",
    "%s%s%s%n",
    "${jndi:ldap://127.0.0.1/x}",
    "{{7*7}}",
    "\\'; --",
    "🙂' OR ''='",
]


def _as_filename(text: str) -> str:
    """``text`` as a file name if the vault would take it, else a plain one."""
    name = unicodedata.normalize("NFC", text + ".txt")
    ok = (
        "/" not in name
        and "\\" not in name
        and '"' not in name  # HTML form encoding would send it as %22
        and not any(c in "<>:|?*" for c in name)  # Windows can't hold these
        and not any(unicodedata.category(c).startswith("C") for c in name)
        and not name.startswith("-")
        and name == name.strip()
    )
    return name if ok else "report.txt"


def _explain(client: httpx.Client, served: Served, user: str, package: str, action: str) -> Any:
    reply = client.get(
        "/authz/explain",
        params={"user": user, "package": package, "action": action},
        headers=served.auth("uz.auditor"),
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_injection_strings_are_stored_verbatim_and_change_no_decision(served: Served) -> None:
    world = served.world
    before = stored(world)
    with httpx.Client(base_url=served.url, timeout=TIMEOUT) as client:
        baseline = _explain(client, served, "kz.officer", served.ids["package"], "read")
        uploaded = []
        for text in INJECTIONS:
            line = text.replace("\n", " ")  # title and structured fields are one line
            meta = {
                "title": line,
                "description": text,
                "handling_note": text,
                "fields": {line[:64]: line, "k": line},
            }
            filename = _as_filename(text)
            reply = client.post(
                "/packages",
                files=[
                    ("metadata", (None, json.dumps(meta), "application/json")),
                    ("file", (filename, text.encode(), "text/plain")),
                ],
                headers=served.auth(),
            )
            assert reply.status_code == 201, reply.text
            package = reply.json()["package"]
            uploaded.append(package["id"])
            shown = client.get(f"/packages/{package['id']}", headers=served.auth())
            assert shown.status_code == 200, shown.text
            detail = shown.json()
            assert detail["title"] == line
            assert detail["description"] == text
            assert detail["handling_note"] == text
            assert detail["fields"] == {line[:64]: line, "k": line}
            assert [f["name"] for f in detail["files"]] == [filename]
            got = client.get(
                f"/packages/{package['id']}/files/{detail['files'][0]['id']}",
                headers=served.auth(),
            )
            assert got.content == text.encode()
            # Still nobody else's: a KZ officer gets 404 (no release), a TJ officer too.
            for outsider in ("kz.officer", "tj.officer"):
                refused = client.get(f"/packages/{package['id']}", headers=served.auth(outsider))
                assert_error(refused, 404, code="not_found")
                refused = client.get(
                    f"/packages/{package['id']}/files/{detail['files'][0]['id']}",
                    headers=served.auth(outsider),
                )
                assert_error(refused, 404, code="not_found")
            verdict = _explain(client, served, "kz.officer", package["id"], "read")
            assert verdict["allowed"] is False
            assert verdict["relation"] is None

        # Listing: the titles come back exactly; outsiders see none of them.
        listed = client.get("/packages", params={"limit": 200}, headers=served.auth()).json()
        titles = {item["id"]: item["title"] for item in listed["items"]}
        assert [titles[i] for i in uploaded] == [t.replace("\n", " ") for t in INJECTIONS]
        for outsider in ("kz.officer", "tj.officer"):
            theirs = client.get("/packages", params={"limit": 200}, headers=served.auth(outsider))
            assert not {item["id"] for item in theirs.json()["items"]} & set(uploaded)
        assert _explain(client, served, "kz.officer", served.ids["package"], "read") == baseline

    after = stored(world)
    assert after.policy == before.policy
    assert after.rules == before.rules == ()
    assert after.packages == before.packages + len(INJECTIONS)
    assert after.releases == before.releases


def test_injection_strings_elsewhere_are_refused_or_inert(served: Served) -> None:
    """Usernames, country and agency codes, query parameters, checkpoints: 401/404/422, never
    500, no new release, no policy change."""
    world = served.world
    before = stored(world)
    package = served.ids["package"]
    # A package released to KZ, so the KZ officer may ask for an onward release of it.
    with httpx.Client(base_url=served.url, timeout=TIMEOUT) as client:
        shared = client.post(
            "/packages",
            files=[
                ("metadata", (None, json.dumps({"title": "shared"}), "application/json")),
                ("file", ("s.txt", b"s", "text/plain")),
            ],
            headers=served.auth(),
        ).json()["package"]["id"]
        assert (
            client.post(
                f"/packages/{shared}/releases", json={"country": "KZ"}, headers=served.auth()
            ).status_code
            == 201
        )
        before = stored(world)
        wrong_password = client.post(
            "/auth/login", json={"username": "uz.officer", "password": "wrong password!"}
        )
        expected = assert_error(wrong_password, 401, code="authentication_failed")["error"]

        for text in INJECTIONS:
            # Logins: the same refusal as any wrong password (names over 64 chars or with a
            # control character such as a newline: 422).
            for username, password in ((text, PASSWORD), ("uz.officer", text)):
                reply = client.post(
                    "/auth/login", json={"username": username, "password": password}
                )
                if len(username) > 64 or "\n" in username:
                    assert_error(reply, 422)
                    continue
                error = assert_error(reply, 401, code="authentication_failed")["error"]
                assert error["message"] == expected["message"]
            # Release and onward-release targets.
            for body in (
                {"country": text},
                {"country": "KZ", "agency": text},
                {"country": "KZ", "not_before": text},
                {"country": "KZ", "expires_at": text},
            ):
                reply = client.post(
                    f"/packages/{package}/releases", json=body, headers=served.auth()
                )
                assert_error(reply, 422, code="invalid_input")
                if "country" in body and set(body) <= {"country", "agency"}:
                    reply = client.post(
                        f"/packages/{shared}/release-requests",
                        json=body,
                        headers=served.auth("kz.officer"),
                    )
                    assert_error(reply, 422, code="invalid_input")
            # Query parameters.
            queries = [
                ("/authz/explain", {"user": text, "package": package, "action": "read"}),
                ("/authz/explain", {"user": "kz.officer", "package": text, "action": "read"}),
                ("/authz/explain", {"user": "kz.officer", "package": package, "action": text}),
                ("/packages", {"limit": text}),
                ("/packages", {"offset": text}),
                ("/ledger/entries", {"start": text, "end": "1"}),
                ("/ledger/entries", {"start": "0", "end": text}),
            ]
            for path, params in queries:
                reply = client.get(path, params=params, headers=served.auth("uz.auditor"))
                assert_error(reply, 403, 404, 422)
            reply = client.post(
                "/ledger/proof/consistency",
                json={"checkpoint": text},
                headers=served.auth("uz.auditor"),
            )
            assert_error(reply, 422, code="invalid_input")
            # The (auditor's) explain of the real package is unchanged.
            verdict = _explain(client, served, "kz.officer", package, "read")
            assert verdict["allowed"] is False

        # The KZ officer still can't see the unreleased package.
        assert_error(client.get(f"/packages/{package}", headers=served.auth("kz.officer")), 404)
    assert stored(world) == before


# --- ids that are not ids -----------------------------------------------------------------------


def _pct(text: str) -> bytes:
    return quote(text, safe="").encode()


NOT_IDS: dict[str, bytes] = {
    "dotdot": b"..",
    "dotdot-slash": b"../..",
    "traversal": b"../../../../etc/passwd",
    "pct-dotdot": b"%2e%2e",
    "pct-traversal": b"%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "mixed-traversal": b"..%2f..%2fetc%2fpasswd",
    "backslash-traversal": b"..%5c..%5cwindows",
    "double-encoded": b"%252e%252e%252f",
    "nul": b"%00",
    "nul-after-id": b"0123456789abcdef0123456789abcdef%00",
    "invalid-pct": b"%ff%fe",
    "overlong-utf8": b"%c0%af",
    "bad-escape": b"%zz",
    "long": b"a" * 8000,
    "long-hex": b"0" * 4096,
    "unicode": _pct("пакет"),
    "emoji": _pct("📦"),
    "fullwidth-traversal": _pct("．．／"),
    "sql": b"'%20OR%201=1%20--",
    "sql-drop": b"%22;%20DROP%20TABLE%20package;%20--",
    "casbin": _pct("p, *, *, *, *, *, read, allow"),
    "upper-hex": b"0123456789ABCDEF0123456789ABCDEF",
    "short-hex": b"0123456789abcdef0123456789abcde",
    "long-hex-33": b"0123456789abcdef0123456789abcdef0",
    "negative": b"-1",
    "huge-number": b"9" * 40,
    "float": b"1e3",
    "hex-number": b"0x10",
    "star": b"*",
    "template": b"%7Bpackage_id%7D",
    "space": b"%20",
    "semicolon": b";x=1",
    "encoded-query": b"%3Fx=1",
}

# (method, path template, body) of every route with a path parameter; {p}, {f}, {r}, {s}.
ID_ROUTES = [
    ("GET", "/packages/{p}", None),
    ("GET", "/packages/{p}/files/{f}", None),
    ("GET", "/packages/{p}/audit", None),
    ("POST", "/packages/{p}/releases", {"country": "KG"}),
    ("POST", "/packages/{p}/release-requests", {"country": "KG"}),
    ("POST", "/packages/{p}/acknowledge", None),
    ("POST", "/releases/{r}/approve", None),
    ("POST", "/releases/{r}/reject", None),
    ("POST", "/packages/{p}/releases/{r}/revoke", None),
    ("GET", "/ledger/proof/inclusion/{s}", None),
]
PLACEMENTS = [
    (method, path, body, slot)
    for method, path, body in ID_ROUTES
    for slot in ("p", "f", "r", "s")
    if "{" + slot + "}" in path
]


@pytest.mark.parametrize(
    ("method", "path", "body", "slot"),
    PLACEMENTS,
    ids=[f"{m} {p} ({s})" for m, p, _, s in PLACEMENTS],
)
def test_ids_that_are_not_ids(
    method: str, path: str, body: dict[str, Any] | None, slot: str, served: Served
) -> None:
    real = {
        "p": served.ids["package"].encode(),
        "f": served.ids["file"].encode(),
        "r": served.ids["release"].encode(),
        "s": b"0",
    }
    payload = json.dumps(body).encode() if body is not None else b""
    before = stored(served.world)
    for user in ("uz.officer", "uz.auditor"):
        for name, bad in NOT_IDS.items():
            if slot == "s" and bad.isdigit() and int(bad) <= 2**62:
                continue  # a valid sequence number after all (0000...)
            target = path.encode()
            for key, value in real.items():
                target = target.replace(b"{" + key.encode() + b"}", bad if key == slot else value)
            data = http_request(
                method,
                target,
                token=served.tokens[user],
                body=payload,
                content_type=b"application/json" if body is not None else None,
            )
            reply = exchange(served.port, data)
            # An officer may not read the ledger at all: 403 before the number is looked up.
            allowed = (403, 404, 422) if slot == "s" and user == "uz.officer" else (404, 422)
            assert reply.status in allowed, f"{name} as {user}: {reply}"
            assert_error(reply, *allowed)
    assert stored(served.world) == before


# --- the rest of the surface ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        b"/packages?limit=0",
        b"/packages?limit=201",
        b"/packages?limit=-1",
        b"/packages?offset=-1",
        b"/packages?limit=1e2",
        b"/packages?limit=%00",
        b"/packages?limit=" + b"9" * 5000,
        b"/ledger/entries?start=-1&end=1",
        b"/ledger/entries?start=" + b"9" * 40 + b"&end=" + b"9" * 40,
        b"/authz/explain?user=kz.officer&package=x&action=read",
        b"/authz/explain?user=kz.officer&action=read",
        b"/authz/explain?user=" + b"a" * 100 + b"&package=p&action=read",
        b"/authz/explain?user=kz.officer&package=0123456789abcdef0123456789abcdef&action=fly",
    ],
)
def test_bad_query_parameters_are_422(target: bytes, served: Served) -> None:
    reply = exchange(served.port, http_request("GET", target, token=served.tokens["uz.auditor"]))
    assert_error(reply, 403, 404, 422)
    assert reply.status != 500


@pytest.mark.parametrize(
    ("query", "count"),
    [("start=5&end=2", 0), ("start=3&end=3", 0), ("start=0&end=100000", 1000)],
    ids=["end-before-start", "empty", "over-1000"],
)
def test_ledger_range_is_cut_to_what_the_schema_promises(
    query: str, count: int, served: Served
) -> None:
    """Two bounded integers are the whole contract (the schema can't relate them): a range
    ending before it starts is empty, and one over 1000 entries is cut to its first 1000."""
    vault = served.world.vault
    while vault.ledger_size() < count + 5:  # enough entries to cut: refusals are entries too
        with contextlib.suppress(AuthenticationFailed):
            vault.login("nobody", "wrong password")
    reply = httpx.get(
        f"{served.url}/ledger/entries?{query}", headers=served.auth("uz.auditor"), timeout=TIMEOUT
    )
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["entries"]) == count


def test_error_bodies_never_leak(served: Served) -> None:
    """A sample of every kind of refusal, anonymous and authenticated."""
    requests: list[Callable[[httpx.Client], httpx.Response]] = [
        lambda c: c.get("/packages"),
        lambda c: c.get("/packages", headers={"Authorization": "Bearer not.a.token"}),
        lambda c: c.get("/packages", headers={"Authorization": "Basic dXNlcjpwYXNz"}),
        lambda c: c.get("/nope"),
        lambda c: c.delete("/packages"),
        lambda c: c.get(f"/packages/{'0' * 32}", headers=served.auth()),
        lambda c: c.get("/ledger/verify", headers=served.auth()),
        lambda c: c.post("/packages", content=b"x", headers=served.auth()),
    ]
    with httpx.Client(base_url=served.url, timeout=TIMEOUT) as client:
        for send in requests:
            reply = send(client)
            assert 400 <= reply.status_code < 500, reply.text
            assert_error(reply, reply.status_code)
