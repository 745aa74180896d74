"""No plaintext at rest and none in the logs.

A canary, random per run, goes into a file's content, its filename, and the package's title,
description, handling note and structured fields. After upload, release, list, show and
download over the real HTTP server, no file under the data directory (objects, database and
its WAL/SHM, keys) holds it in any common encoding, and neither does anything the server
logged.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from tests.conftest import ON_POSTGRES, PASSWORD, MultipartFiles, World
from vault.crypto import SEGMENT_SIZE
from vault.models import PackageFile
from vault.storage.local import LocalDiskStore

LOGGERS = ("vault", "uvicorn", "uvicorn.error", "uvicorn.access")
HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def canary() -> str:
    return "CANARY-" + secrets.token_hex(12)


@pytest.fixture
def server_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture the vault's and uvicorn's records at DEBUG, including non-propagating loggers."""
    attached = []
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
        logger = logging.getLogger(name)
        if not logger.propagate and caplog.handler not in logger.handlers:
            logger.addHandler(caplog.handler)
            attached.append(logger)
    yield caplog
    for logger in attached:
        logger.removeHandler(caplog.handler)


def encodings(canary: str) -> dict[str, bytes]:
    return {
        "utf-8": canary.encode(),
        "utf-16-le": canary.encode("utf-16-le"),
        "utf-16-be": canary.encode("utf-16-be"),
        "lower": canary.lower().encode(),
        "hex": canary.encode().hex().encode(),
    }


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def token(client: httpx.Client, user: str) -> dict[str, str]:
    reply = client.post("/auth/login", json={"username": user, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def exercise(client: httpx.Client, canary: str) -> dict[str, Any]:
    """Upload, release, list, show and download a package full of the canary."""
    uz = token(client, "uz.officer")
    metadata = {
        "title": f"Title {canary}",
        "description": f"Description mentions {canary} twice: {canary}",
        "handling_note": f"note {canary}",
        "fields": {f"k-{canary}": f"v-{canary}", "vehicle": canary},
    }
    line = f"line one {canary}\n"
    body = (line * (2 * SEGMENT_SIZE // len(line) + 100)).encode()  # spans three segments
    assert len(body) > 2 * SEGMENT_SIZE
    files: MultipartFiles = [
        ("metadata", (None, json.dumps(metadata).encode(), "application/json")),
        ("file", (f"{canary}.txt", body, "text/plain")),
        ("file", ("short.txt", canary.encode(), "text/plain")),
    ]
    up = client.post("/packages", files=files, headers=uz)
    assert up.status_code == 201, up.text
    package = up.json()["package"]
    assert package["title"] == metadata["title"]
    assert package["files"][0]["name"] == f"{canary}.txt"

    rel = client.post(f"/packages/{package['id']}/releases", json={"country": "KZ"}, headers=uz)
    assert rel.status_code == 201, rel.text

    kz = token(client, "kz.officer")
    listed = client.get("/packages", headers=kz)
    assert listed.status_code == 200
    assert [p["title"] for p in listed.json()["items"]] == [metadata["title"]]
    shown = client.get(f"/packages/{package['id']}", headers=kz)
    assert shown.status_code == 200
    detail = shown.json()
    assert detail["description"] == metadata["description"]
    assert detail["fields"] == metadata["fields"]
    assert detail["handling_note"] == metadata["handling_note"]
    for f, expected in zip(detail["files"], (body, canary.encode()), strict=True):
        got = client.get(f"/packages/{package['id']}/files/{f['id']}", headers=kz)
        assert got.status_code == 200
        assert got.content == expected
    # A refusal and a not-found, so error paths log too.
    tj = token(client, "tj.officer")
    assert client.get(f"/packages/{package['id']}", headers=tj).status_code == 404
    result: dict[str, Any] = detail
    return result


def test_canary_is_nowhere_at_rest_or_in_logs(
    world: World, live_server: str, canary: str, server_logs: pytest.LogCaptureFixture
) -> None:
    with httpx.Client(base_url=live_server, timeout=60) as client:
        detail = exercise(client, canary)

    data_dir = world.settings.data_dir
    files = all_files(data_dir)
    names = {p.name for p in files}
    if not ON_POSTGRES:  # on PostgreSQL the database lives in the server, checked below
        assert "vault.db" in names
    assert any(p.parent.name == "dev-keys" for p in files)
    store_root = world.settings.resolved_store_dir
    assert len([p for p in files if p.is_relative_to(store_root)]) == 2

    forms = encodings(canary)
    for path in files:
        raw = path.read_bytes()
        for form, needle in forms.items():
            assert needle not in raw, f"canary ({form}) found in {path.relative_to(data_dir)}"
        assert canary.lower() not in str(path.relative_to(data_dir)).lower()
    # Nor in any folder name.
    for path in data_dir.rglob("*"):
        assert canary.lower() not in path.name.lower()
    if ON_POSTGRES:
        # Every row of every table, as PostgreSQL renders it (bytea as hex).
        with world.vault.engine.connect() as conn:
            tables = [
                row[0]
                for row in conn.exec_driver_sql(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                )
            ]
            assert "package" in tables
            for table in tables:
                for (text,) in conn.exec_driver_sql(f'SELECT t::text FROM "{table}" t'):
                    assert canary not in text, f"canary in table {table}"
                    assert canary.encode().hex() not in text, f"canary (bytea) in {table}"

    # The server's logs: something was captured (so the check means something), no canary.
    records = server_logs.records
    assert any(r.name == "uvicorn.access" for r in records), "uvicorn access log not captured"
    for record in records:
        text = record.getMessage() + (record.exc_text or "") + repr(record.args)
        assert canary.lower() not in text.lower(), f"canary logged by {record.name}: {text}"
    assert canary.lower() not in server_logs.text.lower()

    # Object keys are opaque ids only: 32 hex, one per file, under root/ab/cd/<id>.
    store = LocalDiskStore(root=store_root)
    keys = list(store.keys())
    assert sorted(keys) == sorted(f["id"] for f in detail["files"])
    for key in keys:
        assert HEX_ID.fullmatch(key), key
    for path in all_files(store_root):
        rel = path.relative_to(store_root).parts
        assert len(rel) == 3, rel
        assert HEX_ID.fullmatch(rel[2]), rel
        assert (rel[0], rel[1]) == (rel[2][:2], rel[2][2:4]), rel
    assert store.stray_temp_files() == []
    with Session(world.vault.engine) as session:
        assert sorted(r.id for r in session.exec(select(PackageFile)).all()) == sorted(keys)


def test_no_canary_after_refused_upload(
    world: World, live_server: str, canary: str, server_logs: pytest.LogCaptureFixture
) -> None:
    """An upload refused half-way (second filename invalid) leaves no trace of the first file."""
    with httpx.Client(base_url=live_server, timeout=60) as client:
        uz = token(client, "uz.officer")
        files: MultipartFiles = [
            ("metadata", (None, json.dumps({"title": canary}).encode(), "application/json")),
            ("file", (f"{canary}.txt", canary.encode() * 10_000, "text/plain")),
            ("file", (f"../{canary}", b"x", "text/plain")),
        ]
        reply = client.post("/packages", files=files, headers=uz)
        assert reply.status_code == 422, reply.text
        assert canary not in reply.text
    data_dir = world.settings.data_dir
    for path in all_files(data_dir):
        raw = path.read_bytes()
        for form, needle in encodings(canary).items():
            assert needle not in raw, f"canary ({form}) found in {path.relative_to(data_dir)}"
    assert list(LocalDiskStore(root=world.settings.resolved_store_dir).keys()) == []
    for record in server_logs.records:
        assert canary not in record.getMessage() + (record.exc_text or "")
