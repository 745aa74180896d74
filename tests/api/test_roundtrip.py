"""Round trips and refusals through the real HTTP server (uvicorn on 127.0.0.1, httpx).

Content is generated deterministically into temp files and streamed up; downloads are
streamed and compared by SHA-256, so no test holds a large file in memory twice.

To stay fast, most tests share one seeded vault and server per module (each test makes its
own packages and only asserts about them); the refusal tests that must see an untouched store
share a second one in which nothing is ever stored; the listing test gets its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import secrets
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from sqlmodel import Session, func, select

from tests.conftest import (
    FAST_ARGON2,
    ON_POSTGRES,
    PASSWORD,
    MultipartFiles,
    World,
    postgres_schema_url,
    running_server,
    seed,
)
from vault.config import load_settings
from vault.crypto import SEGMENT_SIZE, sealed_size
from vault.ledger.entry import Entry
from vault.models import Package, PackageFile
from vault.service import Vault
from vault.storage.local import LocalDiskStore

MiB = 1024**2
S = SEGMENT_SIZE
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
Headers = dict[str, str]


# --- helpers ------------------------------------------------------------------------------------


def make_file(path: Path, size: int, seed: int) -> str:
    """Write ``size`` deterministic pseudo-random bytes to ``path``; return their SHA-256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            block = rng.randbytes(min(left, MiB))
            out.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


@contextlib.contextmanager
def served_world(base: Path) -> Iterator[tuple[World, str]]:
    """A seeded vault on ``base`` (PostgreSQL when the suite runs on it) and its live server."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_schema_url()) if ON_POSTGRES else None
        settings = load_settings(data_dir=base / "vault-data", database_url=url, **FAST_ARGON2)
        vault = Vault.open(settings)
        stack.callback(vault.close)
        world = World(vault=vault, settings=settings, users=seed(vault))
        yield world, stack.enter_context(running_server(vault))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, str]]:
    with served_world(tmp_path_factory.mktemp("shared")) as served:
        yield served


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, str]]:
    """A vault in which nothing is ever stored (only refused requests are sent to it)."""
    with served_world(tmp_path_factory.mktemp("pristine")) as served:
        yield served


@pytest.fixture
def world(shared: tuple[World, str]) -> World:
    """The module's shared world (overrides the per-test one of conftest)."""
    return shared[0]


@pytest.fixture
def client(shared: tuple[World, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared[1], timeout=TIMEOUT) as c:
        yield c


@pytest.fixture
def pristine_client(pristine: tuple[World, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pristine[1], timeout=TIMEOUT) as c:
        yield c


def token(client: httpx.Client, user: str) -> Headers:
    reply = client.post("/auth/login", json={"username": user, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    assert int(reply.headers["X-Vault-Receipt"]) == reply.json()["receipt"]
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def upload(
    client: httpx.Client, headers: Headers, files: list[tuple[str, Path]], **meta: Any
) -> httpx.Response:
    """POST /packages with the files streamed from disk."""
    metadata = {"title": "Seizure report", **meta}
    with contextlib.ExitStack() as stack:
        parts: MultipartFiles = [
            ("metadata", (None, json.dumps(metadata).encode(), "application/json"))
        ]
        for name, path in files:
            handle = stack.enter_context(path.open("rb"))
            parts.append(("file", (name, handle, "application/octet-stream")))
        return client.post("/packages", files=parts, headers=headers)


def upload_ok(
    client: httpx.Client, headers: Headers, files: list[tuple[str, Path]]
) -> dict[str, Any]:
    reply = upload(client, headers, files)
    assert reply.status_code == 201, reply.text
    assert int(reply.headers["X-Vault-Receipt"]) == reply.json()["receipt"]
    package: dict[str, Any] = reply.json()["package"]
    return package


def small_package(
    client: httpx.Client, headers: Headers, tmp_path: Path, name: str
) -> dict[str, Any]:
    path = tmp_path / f"{name}.bin"
    make_file(path, 100, seed=sum(name.encode()))
    return upload_ok(client, headers, [(name + ".txt", path)])


def release(client: httpx.Client, headers: Headers, package_id: str, country: str) -> None:
    reply = client.post(
        f"/packages/{package_id}/releases", json={"country": country}, headers=headers
    )
    assert reply.status_code == 201, reply.text
    assert int(reply.headers["X-Vault-Receipt"]) == reply.json()["receipt"]


def stream_digest(
    client: httpx.Client, headers: Headers, url: str
) -> tuple[httpx.Headers, int, str]:
    """Download ``url`` chunk by chunk; return its headers, size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    with client.stream("GET", url, headers=headers) as reply:
        if reply.status_code != 200:
            reply.read()
            raise AssertionError(f"HTTP {reply.status_code}: {reply.text}")
        for chunk in reply.iter_bytes():
            digest.update(chunk)
            size += len(chunk)
        return reply.headers, size, digest.hexdigest()


def ledger_entries(world: World) -> list[Entry]:
    entries = world.vault.unscoped_entries()
    assert [e.seq for e in entries] == list(range(len(entries)))
    return entries


def stored_files(world: World) -> list[Path]:
    """Every regular file under the object store folder (objects and stray temp files)."""
    root = world.settings.resolved_store_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def table_count(world: World, table: type[Package] | type[PackageFile]) -> int:
    with Session(world.vault.engine) as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def assert_error(reply: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = reply.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "receipt"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert "Traceback" not in reply.text
    return body


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, S, S + 1], ids=["empty", "one", "segment", "segment+1"])
def test_upload_download_byte_identical(
    size: int, world: World, client: httpx.Client, tmp_path: Path
) -> None:
    path = tmp_path / "content.bin"
    sha = make_file(path, size, seed=size)
    uz = token(client, "uz.officer")
    package = upload_ok(client, uz, [("content.bin", path)])
    assert package["size"] == size
    assert package["file_count"] == 1
    [info] = package["files"]
    assert (info["name"], info["size"], info["sha256"]) == ("content.bin", size, sha)

    headers, got_size, got_sha = stream_digest(
        client, uz, f"/packages/{package['id']}/files/{info['id']}"
    )
    assert (got_size, got_sha) == (size, sha)
    assert headers["X-Content-SHA256"] == sha
    assert int(headers["Content-Length"]) == size
    assert headers["content-type"] == "application/octet-stream"


@pytest.mark.slow
def test_upload_download_50_mib(world: World, client: httpx.Client, tmp_path: Path) -> None:
    size = 50 * MiB
    path = tmp_path / "big.bin"
    sha = make_file(path, size, seed=50)
    uz = token(client, "uz.officer")
    package = upload_ok(client, uz, [("big.bin", path)])
    [info] = package["files"]
    assert (info["size"], info["sha256"]) == (size, sha)
    release(client, uz, package["id"], "KZ")

    kz = token(client, "kz.officer")
    headers, got_size, got_sha = stream_digest(
        client, kz, f"/packages/{package['id']}/files/{info['id']}"
    )
    assert (got_size, got_sha) == (size, sha)
    assert headers["X-Content-SHA256"] == sha
    # Stored sealed, one object per file, of exactly the sealed size.
    store = LocalDiskStore(root=world.settings.resolved_store_dir)
    assert store.size(info["id"]) == sealed_size(size)


def test_multi_file_package(world: World, client: httpx.Client, tmp_path: Path) -> None:
    sizes = {"a.txt": 10, "b.bin": S + 1, "empty": 0, "c.dat": 3 * S}
    expected = {}
    files = []
    for i, (name, size) in enumerate(sizes.items()):
        path = tmp_path / f"f{i}"
        expected[name] = (size, make_file(path, size, seed=100 + i))
        files.append((name, path))
    uz = token(client, "uz.officer")
    package = upload_ok(client, uz, files)
    assert package["file_count"] == 4
    assert package["size"] == sum(sizes.values())
    assert [f["name"] for f in package["files"]] == list(sizes)
    assert len({f["id"] for f in package["files"]}) == 4

    shown = client.get(f"/packages/{package['id']}", headers=uz)
    assert shown.status_code == 200, shown.text
    assert shown.json()["files"] == package["files"]
    assert shown.json()["digest"] == package["digest"]
    for f in shown.json()["files"]:
        url = f"/packages/{package['id']}/files/{f['id']}"
        _, got_size, got_sha = stream_digest(client, uz, url)
        assert (got_size, got_sha) == expected[f["name"]]
        assert (f["size"], f["sha256"]) == expected[f["name"]]

    # A file id of another package is not a file of this one.
    other = small_package(client, uz, tmp_path, "other")
    reply = client.get(f"/packages/{package['id']}/files/{other['files'][0]['id']}", headers=uz)
    assert_error(reply, 404, "not_found")


UNICODE_NAMES = [
    "доклад о задержании.txt",
    "報告 2024.pdf",
    "ñandú – résumé.bin",
    "📦 груз.dat",
    "O'Brien (copy) name.txt",
    "سند.txt",
]


def test_unicode_filenames(world: World, client: httpx.Client, tmp_path: Path) -> None:
    files = []
    for i, name in enumerate(UNICODE_NAMES):
        path = tmp_path / f"u{i}"
        make_file(path, 10 + i, seed=200 + i)
        files.append((name, path))
    uz = token(client, "uz.officer")
    package = upload_ok(client, uz, files)
    assert [f["name"] for f in package["files"]] == UNICODE_NAMES
    shown = client.get(f"/packages/{package['id']}", headers=uz).json()
    assert [f["name"] for f in shown["files"]] == UNICODE_NAMES
    for f in shown["files"]:
        headers, size, _ = stream_digest(client, uz, f"/packages/{package['id']}/files/{f['id']}")
        assert size == f["size"]
        disposition = headers["Content-Disposition"]
        assert disposition.startswith("attachment;")
        encoded = disposition.split("filename*=UTF-8''", 1)[1]
        assert unquote(encoded) == f["name"]


def test_filenames_are_stored_in_nfc(world: World, client: httpx.Client, tmp_path: Path) -> None:
    path = tmp_path / "x"
    make_file(path, 3, seed=1)
    decomposed = unicodedata.normalize("NFD", "résumé.txt")
    assert decomposed != "résumé.txt"
    uz = token(client, "uz.officer")
    package = upload_ok(client, uz, [(decomposed, path)])
    assert package["files"][0]["name"] == unicodedata.normalize("NFC", "résumé.txt")


# --- who sees what ------------------------------------------------------------------------------


def test_listing_shows_only_readable_packages(tmp_path: Path) -> None:
    with served_world(tmp_path) as (_, url), httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        check_listing(client, tmp_path)


def check_listing(client: httpx.Client, tmp_path: Path) -> None:
    uz, kz = token(client, "uz.officer"), token(client, "kz.officer")
    private = small_package(client, uz, tmp_path, "private")
    shared = small_package(client, uz, tmp_path, "shared")
    release(client, uz, shared["id"], "KZ")
    kz_own = small_package(client, kz, tmp_path, "kz-own")
    all_ids = {private["id"], shared["id"], kz_own["id"]}

    expected = {
        "uz.officer": {private["id"], shared["id"]},
        "uz.supervisor": {private["id"], shared["id"]},  # same agency
        "uz.border": set(),  # same country, other agency: no relation grants read
        "kz.officer": {shared["id"], kz_own["id"]},
        "kz.interior": {shared["id"]},  # released to the whole country
        "tj.officer": set(),
    }
    for user, ids in expected.items():
        headers = token(client, user)
        listed = client.get("/packages", headers=headers)
        assert listed.status_code == 200, listed.text
        body = listed.json()
        assert int(listed.headers["X-Vault-Receipt"]) == body["receipt"]
        assert {p["id"] for p in body["items"]} == ids, user
        # The listing agrees with what each user may open.
        for package_id in all_ids:
            shown = client.get(f"/packages/{package_id}", headers=headers)
            assert shown.status_code == (200 if package_id in ids else 404), (user, package_id)

    kz_list = client.get("/packages", headers=kz).json()["items"]
    titles = {p["id"]: p["title"] for p in kz_list}
    assert titles[shared["id"]] == "Seizure report"


def test_unreleased_country_gets_404_like_a_missing_id(
    world: World, client: httpx.Client, tmp_path: Path
) -> None:
    uz, tj = token(client, "uz.officer"), token(client, "tj.officer")
    package = small_package(client, uz, tmp_path, "secret")
    release(client, uz, package["id"], "KZ")
    file_id = package["files"][0]["id"]
    missing_pkg, missing_file = secrets.token_hex(16), secrets.token_hex(16)

    denied_show = client.get(f"/packages/{package['id']}", headers=tj)
    missing_show = client.get(f"/packages/{missing_pkg}", headers=tj)
    denied_dl = client.get(f"/packages/{package['id']}/files/{file_id}", headers=tj)
    missing_dl = client.get(f"/packages/{missing_pkg}/files/{missing_file}", headers=tj)

    for denied, missing in ((denied_show, missing_show), (denied_dl, missing_dl)):
        a, b = assert_error(denied, 404, "not_found"), assert_error(missing, 404, "not_found")
        assert a["error"]["message"] == b["error"]["message"]
        assert isinstance(a["error"]["receipt"], int)
        assert isinstance(b["error"]["receipt"], int)
        assert int(denied.headers["X-Vault-Receipt"]) == a["error"]["receipt"]
        assert int(missing.headers["X-Vault-Receipt"]) == b["error"]["receipt"]
        assert set(denied.headers) - {"date", "content-length", "x-vault-receipt"} == set(
            missing.headers
        ) - {"date", "content-length", "x-vault-receipt"}
        assert denied.content.replace(
            str(a["error"]["receipt"]).encode(), b"R"
        ) == missing.content.replace(str(b["error"]["receipt"]).encode(), b"R")
        assert package["id"] not in denied.text

    # Both denied attempts are in the ledger, under the receipts the caller was given.
    entries = ledger_entries(world)
    by_seq = {e.seq: e for e in entries}
    for reply, action in ((denied_show, "read"), (denied_dl, "download")):
        entry = by_seq[reply.json()["error"]["receipt"]]
        assert entry.action == action
        assert entry.decision == "deny"
        assert entry.actor_user == "tj.officer"
        assert entry.actor_agency == "TJ-CUSTOMS"
        assert entry.actor_country == "TJ"
        assert entry.package == package["id"]
    denials = [
        e
        for e in entries
        if e.decision == "deny" and e.actor_country == "TJ" and e.package == package["id"]
    ]
    assert {e.action for e in denials} == {"read", "download"}
    for reply in (missing_show, missing_dl):
        entry = by_seq[reply.json()["error"]["receipt"]]
        assert (entry.decision, entry.package) == ("deny", missing_pkg)
        assert entry.actor_user == "tj.officer"

    # The released country still gets in, and the allow is recorded too.
    kz = token(client, "kz.officer")
    headers, size, _ = stream_digest(client, kz, f"/packages/{package['id']}/files/{file_id}")
    assert size == 100
    entry = ledger_entries(world)[int(headers["X-Vault-Receipt"])]
    assert (entry.action, entry.decision, entry.actor_country, entry.package, entry.file) == (
        "download",
        "allow",
        "KZ",
        package["id"],
        file_id,
    )


def test_receipt_header_on_every_response(
    world: World, client: httpx.Client, tmp_path: Path
) -> None:
    uz = token(client, "uz.officer")
    package = small_package(client, uz, tmp_path, "receipts")
    replies = {
        "list": client.get("/packages", headers=uz),
        "show": client.get(f"/packages/{package['id']}", headers=uz),
        "release": client.post(
            f"/packages/{package['id']}/releases", json={"country": "KZ"}, headers=uz
        ),
        "download": client.get(
            f"/packages/{package['id']}/files/{package['files'][0]['id']}", headers=uz
        ),
        "refusal": client.get(f"/packages/{secrets.token_hex(16)}", headers=uz),
    }
    entries = ledger_entries(world)
    seen = set()
    for what, reply in replies.items():
        assert "X-Vault-Receipt" in reply.headers, what
        seq = int(reply.headers["X-Vault-Receipt"])
        assert 0 <= seq < len(entries), what
        seen.add(seq)
        action = {
            "list": "list",
            "show": "read",
            "release": "release",
            "download": "download",
            "refusal": "read",
        }[what]
        assert entries[seq].action == action, what
        assert entries[seq].actor_user == "uz.officer", what
    assert len(seen) == len(replies)


# --- malformed requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("GET", "/packages/{bad}"),
        ("GET", "/packages/{bad}/files/{good}"),
        ("GET", "/packages/{good}/files/{bad}"),
        ("POST", "/packages/{bad}/releases"),
    ],
)
@pytest.mark.parametrize(
    "bad",
    ["xyz", "A" * 32, "0" * 31, "0" * 33, "g" * 32, "0" * 31 + "-", "0" * 31 + "%00"],
    ids=["short", "upper", "31", "33", "nonhex", "dash", "nul"],
)
def test_invalid_ids_are_422(
    method: str, template: str, bad: str, world: World, client: httpx.Client
) -> None:
    uz = token(client, "uz.officer")
    url = template.format(bad=bad, good=secrets.token_hex(16))
    kwargs: dict[str, Any] = {"json": {"country": "KZ"}} if method == "POST" else {}
    reply = client.request(method, url, headers=uz, **kwargs)
    assert_error(reply, 422, "invalid_input")
    assert bad not in reply.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/packages"),
        ("GET", "/packages/{id}"),
        ("GET", "/packages/{id}/files/{id}"),
        ("POST", "/packages/{id}/releases"),
        ("POST", "/packages"),
        ("GET", "/ledger/verify"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer not-a-token", "Basic dXo6eA=="])
def test_missing_or_bad_token_is_401(
    method: str,
    path: str,
    auth: str | None,
    pristine_client: httpx.Client,
    pristine: tuple[World, str],
) -> None:
    world, client = pristine[0], pristine_client
    url = path.replace("{id}", secrets.token_hex(16))
    headers = {"Authorization": auth} if auth else {}
    kwargs: dict[str, Any] = {}
    if path.endswith("/releases"):
        kwargs["json"] = {"country": "KZ"}
    elif method == "POST":
        kwargs["files"] = [
            ("metadata", (None, b'{"title": "t"}', "application/json")),
            ("file", ("a.txt", b"data", "text/plain")),
        ]
    reply = client.request(method, url, headers=headers, **kwargs)
    assert_error(reply, 401, "authentication_failed")
    assert reply.headers.get("WWW-Authenticate") == "Bearer"
    assert table_count(world, Package) == 0
    assert stored_files(world) == []


def raw_upload(
    client: httpx.Client, headers: Headers, file_parts: list[tuple[bytes, bytes]]
) -> httpx.Response:
    """POST /packages with a hand-built multipart body; file parts are (disposition params, data).

    Built by hand because httpx percent-escapes control characters in filenames.
    """
    boundary = b"blovault-" + secrets.token_hex(8).encode()
    body = bytearray()
    body += b"--" + boundary + b"\r\n"
    body += b'Content-Disposition: form-data; name="metadata"\r\n'
    body += b"Content-Type: application/json\r\n\r\n"
    body += json.dumps({"title": "bad names"}).encode() + b"\r\n"
    for params, data in file_parts:
        body += b"--" + boundary + b"\r\n"
        body += b'Content-Disposition: form-data; name="file"; ' + params + b"\r\n"
        body += b"Content-Type: application/octet-stream\r\n\r\n"
        body += data + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    return client.post(
        "/packages",
        content=bytes(body),
        headers={**headers, "Content-Type": "multipart/form-data; boundary=" + boundary.decode()},
    )


BAD_FILENAMES = {
    "dotdot-slash": b'filename="../x"',
    "slash": b'filename="a/b"',
    "abs": b'filename="/etc/passwd"',
    "dotdot": b'filename=".."',
    "dot": b'filename="."',
    "empty": b'filename=""',
    "backslash": b'filename="..\\x"',
    "nul": b'filename="a\x00b"',
    "bel": b'filename="a\x07b"',
    "tab": b'filename="a\tb"',
    "esc": b'filename="a\x1bb"',
    "del": b'filename="a\x7fb"',
    "c1-nel": b'filename="a' + "\u0085".encode() + b'b"',
    "rlo": b'filename="' + "\u202etxt.exe".encode() + b'"',
    "line-separator": b'filename="a' + "\u2028".encode() + b'b"',
    "too-long": b'filename="' + b"a" * 256 + b'"',
}


@pytest.mark.parametrize("params", BAD_FILENAMES.values(), ids=BAD_FILENAMES.keys())
@pytest.mark.parametrize("after_good_file", [False, True], ids=["alone", "after-good"])
def test_bad_filenames_are_422_and_nothing_stored(
    params: bytes,
    after_good_file: bool,
    pristine_client: httpx.Client,
    pristine: tuple[World, str],
) -> None:
    world, client = pristine[0], pristine_client
    uz = token(client, "uz.officer")
    parts = [(b'filename="good.txt"', b"x" * (S + 10))] if after_good_file else []
    parts.append((params, b"payload"))
    reply = raw_upload(client, uz, parts)
    assert_error(reply, 422, "invalid_input")
    assert stored_files(world) == []
    assert list(LocalDiskStore(root=world.settings.resolved_store_dir).keys()) == []
    assert table_count(world, Package) == 0
    assert table_count(world, PackageFile) == 0
    assert client.get("/packages", headers=uz).json()["items"] == []
    assert not (world.settings.data_dir / "x").exists()
    assert not (world.settings.data_dir.parent / "x").exists()


def test_raw_upload_helper_accepts_a_good_name(world: World, client: httpx.Client) -> None:
    """The hand-built body is itself well formed (so the 422s above are about the names)."""
    uz = token(client, "uz.officer")
    reply = raw_upload(
        client, uz, [(b'filename="ok.txt"', b"payload"), ('filename="ок.txt"'.encode(), b"2")]
    )
    assert reply.status_code == 201, reply.text
    assert [f["name"] for f in reply.json()["package"]["files"]] == ["ok.txt", "ок.txt"]
