"""Fault injection: the object store, the server process and the database failing mid-operation.

For every fault the same four things must hold:

* no package is ever visible half-written (not listed, not shown, no package row);
* the ledger holds no success (``allow``) upload entry for what failed;
* no client keeps a file that fails its digest;
* the service recovers without manual steps: a normal upload and download work afterwards.

Faults: the S3 store (moto on loopback) stopped mid-upload and mid-download (service level
and through the CLI's HTTP client), a ``blovault serve`` process SIGKILLed mid-upload (then
``blovault admin gc`` cleans up), SQLite write-locked by another connection, and PostgreSQL
unreachable.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from blo_vault.cli.client import ApiClient
from tests.conftest import (
    FAST_ARGON2,
    PASSWORD,
    World,
    free_port,
    open_files_under,
    postgres_schema_url,
    requires_postgres,
    running_server,
    seed,
)
from tests.s3server import MotoS3, moto_s3
from tests.servers import BLOVAULT, Served, spawn, wait_healthy
from vault.config import Settings, load_settings
from vault.db import READ_ONLY, make_engine
from vault.errors import IntegrityError, StorageUnavailable, VaultError
from vault.ledger.entry import Entry
from vault.schemas import NewPackage, PackageDetail
from vault.service import IncomingFile, Principal, Vault
from vault.storage.local import LocalDiskStore

MiB = 1024 * 1024
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


# --- helpers ---------------------------------------------------------------------------------


def _data(size: int, seed_value: int = 7) -> bytes:
    return random.Random(seed_value).randbytes(size)


def _ledger(vault: Vault) -> list[Entry]:
    return vault.unscoped_entries()


def _uploads(entries: list[Entry], decision: str) -> list[Entry]:
    return [e for e in entries if e.action == "upload" and e.decision == decision]


def _reader(vault: Vault) -> Connection:
    """A connection that takes no write lock (SQLite: plain BEGIN), usable while locked."""
    return vault.engine.execution_options(**{READ_ONLY: True}).connect()


def _count(vault: Vault, table: str) -> int:
    with _reader(vault) as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def _live_file_ids(vault: Vault) -> set[str]:
    with _reader(vault) as conn:
        rows = conn.execute(
            text(
                "SELECT f.id FROM packagefile f JOIN package p ON p.id = f.package_id "
                "WHERE p.purged_at IS NULL"
            )
        ).all()
    return {r[0] for r in rows}


def _roundtrip(vault: Vault, officer: Principal, title: str = "after the fault") -> str:
    """A normal upload then download through the service; returns the package id."""
    content = _data(300_000, seed_value=len(title))
    result = vault.upload(
        officer, NewPackage(title=title), [IncomingFile("ok.bin", io.BytesIO(content))]
    )
    package = result.package
    assert [p.id for p in vault.list_packages(officer).items].count(package.id) == 1
    download = vault.download(officer, package.id, package.files[0].id)
    assert b"".join(download.chunks) == content
    assert download.file.sha256 == hashlib.sha256(content).hexdigest()
    return package.id


class _StoppingReader:
    """A plaintext source of ``total`` bytes that calls ``stop`` once ``stop_after`` were read."""

    def __init__(self, total: int, stop_after: int, stop: Callable[[], None]) -> None:
        self.total = total
        self.stop_after = stop_after
        self._stop = stop
        self.pos = 0
        self.stopped = False
        self._double = _data(MiB) * 2

    def read(self, size: int = -1, /) -> bytes:
        if not self.stopped and self.pos >= self.stop_after:
            self.stopped = True
            self._stop()
        size = MiB if size < 0 else min(size, MiB)
        size = min(size, self.total - self.pos)
        if size <= 0:
            return b""
        start = self.pos % MiB
        chunk = self._double[start : start + size]
        self.pos += len(chunk)
        return chunk


def _assert_nothing_half_written(vault: Vault, officer: Principal, packages_before: int) -> None:
    assert _count(vault, "package") == packages_before
    assert _count(vault, "packagefile") == packages_before  # one file per package in this module
    assert len(vault.list_packages(officer).items) == packages_before


# --- 1. object store unreachable mid-upload -------------------------------------------------


def test_object_store_unreachable_mid_upload(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with moto_s3() as s3:
        bucket = s3.target.new_bucket()
        settings = load_settings(
            data_dir=data_dir, **FAST_ARGON2, **s3.target.settings_overrides(bucket=bucket)
        )
        vault = Vault.open(settings)
        try:
            officer = seed(vault)["uz.officer"]
            # 20 MiB in: the first 16 MiB part of the multipart upload is already stored.
            reader = _StoppingReader(total=48 * MiB, stop_after=20 * MiB, stop=s3.stop)
            with pytest.raises(StorageUnavailable) as caught:
                vault.upload(officer, NewPackage(title="cut off"), [IncomingFile("big", reader)])
            assert reader.stopped
            assert reader.pos < reader.total
            _assert_nothing_half_written(vault, officer, 0)
            entries = _ledger(vault)
            assert _uploads(entries, "allow") == []
            # The database stayed up, so the failure itself is on the ledger (as the receipt).
            errors = _uploads(entries, "error")
            assert [e.reason for e in errors] == ["storage_unavailable"]
            assert caught.value.receipt == errors[0].seq
            with pytest.raises(StorageUnavailable):
                vault.check_ready()
        finally:
            vault.close()
        endpoint = s3.target.endpoint

    # moto keeps its buckets process-wide: a new server (new port) serves the same bucket, as
    # a restarted MinIO would. A new Vault on it works with no manual step.
    with moto_s3() as s3b:
        assert s3b.target.endpoint != endpoint
        settings = load_settings(
            data_dir=data_dir, **FAST_ARGON2, **s3b.target.settings_overrides(bucket=bucket)
        )
        vault = Vault.open(settings)
        try:
            officer = vault.authenticate(vault.login("uz.officer", PASSWORD).access_token)
            vault.check_ready()
            # The interrupted multipart upload never became an object.
            assert list(vault.store.keys()) == []
            package_id = _roundtrip(vault, officer)
            assert [p.id for p in vault.list_packages(officer).items] == [package_id]
            assert set(vault.store.keys()) == _live_file_ids(vault)
            assert [e.package for e in _uploads(_ledger(vault), "allow")] == [package_id]
        finally:
            vault.close()


# --- 2. object store unreachable mid-download -----------------------------------------------

BIG = 40 * MiB  # well beyond what loopback socket buffers hold, so stopping really cuts it


@contextlib.contextmanager
def _minio_vault(tmp_path: Path, s3: MotoS3, database_url: str | None) -> Iterator[Vault]:
    settings = load_settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        **FAST_ARGON2,
        **s3.target.settings_overrides(bucket=s3.target.new_bucket()),
    )
    vault = Vault.open(settings)
    try:
        yield vault
    finally:
        vault.close()


def _reopen_on(vault: Vault, s3: MotoS3) -> Vault:
    """The same vault (data dir, database, bucket) through another S3 endpoint."""
    old = vault.settings
    settings = load_settings(
        data_dir=old.data_dir,
        database_url=old.database_url,
        **FAST_ARGON2,
        **s3.target.settings_overrides(bucket=old.s3_bucket),
    )
    return Vault.open(settings)


def _download_errors(vault: Vault, package_id: str, file_id: str) -> list[Entry]:
    return [
        e
        for e in _ledger(vault)
        if e.action == "download"
        and e.decision == "error"
        and e.package == package_id
        and e.file == file_id
    ]


def _uploaded(vault: Vault, content: bytes) -> tuple[Principal, PackageDetail, str]:
    """The seeded officer, and a package of one file holding ``content`` that they uploaded."""
    officer = seed(vault)["uz.officer"]
    package = vault.upload(
        officer, NewPackage(title="big"), [IncomingFile("big.bin", io.BytesIO(content))]
    ).package
    return officer, package, package.files[0].id


def test_object_store_unreachable_mid_download(tmp_path: Path, database_url: str | None) -> None:
    content = _data(BIG)
    with moto_s3() as s3, _minio_vault(tmp_path, s3, database_url) as vault:
        officer, package, file_id = _uploaded(vault, content)
        download = vault.download(officer, package.id, file_id)
        received = bytearray()

        def consume() -> None:
            for chunk in download.chunks:
                if not received:
                    s3.stop()
                received.extend(chunk)

        with pytest.raises((StorageUnavailable, IntegrityError)):
            consume()
        assert 0 < len(received) < BIG  # the consumer never got a whole (unchecked) file
        errors = _download_errors(vault, package.id, file_id)
        assert len(errors) == 1
        assert errors[0].reason in {"storage_unavailable", "integrity_error"}

        # Recovery: the store comes back (new endpoint, same bucket); nothing else to do.
        with moto_s3() as s3b:
            again = _reopen_on(vault, s3b)
            try:
                download = again.download(officer, package.id, file_id)
                assert hashlib.sha256(b"".join(download.chunks)).hexdigest() == (
                    hashlib.sha256(content).hexdigest()
                )
                _roundtrip(again, officer)
            finally:
                again.close()


def test_object_store_unreachable_mid_download_cli_keeps_nothing(
    tmp_path: Path, database_url: str | None
) -> None:
    content = _data(BIG, seed_value=11)
    dest = tmp_path / "downloads"
    with moto_s3() as s3, _minio_vault(tmp_path, s3, database_url) as vault:
        officer, package, file_id = _uploaded(vault, content)
        stopped: list[int] = []

        def progress(n: int) -> None:
            if not stopped:
                stopped.append(n)
                s3.stop()

        with running_server(vault) as url:
            with ApiClient(url) as anonymous:
                token = anonymous.login("uz.officer", PASSWORD)["access_token"]
            with ApiClient(url, token) as client, pytest.raises(VaultError) as caught:
                client.download(package.id, dest, progress=progress)
            assert stopped
            assert isinstance(caught.value, IntegrityError | StorageUnavailable)
            # Nothing kept: no file, no temp file.
            assert sorted(p.name for p in dest.iterdir()) == []
            errors = _download_errors(vault, package.id, file_id)
            assert len(errors) == 1

        with moto_s3() as s3b:
            again = _reopen_on(vault, s3b)
            try:
                with running_server(again) as url, ApiClient(url, token) as client:
                    written = client.download(package.id, dest)
                assert [p.name for p in written] == ["big.bin"]
                assert hashlib.sha256(written[0].read_bytes()).hexdigest() == (
                    hashlib.sha256(content).hexdigest()
                )
                _roundtrip(again, officer)
            finally:
                again.close()


def test_abandoned_download_stops_reading_and_closes_the_object(world: World) -> None:
    """A client that goes away mid-download: the API closes ``chunks``. By the time that
    returns, the object file is closed."""
    officer = world["uz.officer"]
    store = world.vault.store
    assert isinstance(store, LocalDiskStore)
    content = _data(8 * MiB, seed_value=12)
    package = world.vault.upload(
        officer, NewPackage(title="abandoned"), [IncomingFile("a.bin", io.BytesIO(content))]
    ).package
    download = world.vault.download(officer, package.id, package.files[0].id)
    first = next(download.chunks)
    assert first == content[: len(first)]
    assert len(open_files_under(store.root)) == 1
    download.chunks.close()
    assert open_files_under(store.root) == []
    again = world.vault.download(officer, package.id, package.files[0].id)
    assert b"".join(again.chunks) == content


# --- 3. server process SIGKILLed mid-upload --------------------------------------------------


def _server_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env["VAULT_DATA_DIR"] = str(settings.data_dir)
    env.update({f"VAULT_{k.upper()}": str(v) for k, v in FAST_ARGON2.items()})
    return env


def _start_server(
    env: dict[str, str], log: Path, processes: list[subprocess.Popen[bytes]]
) -> Served:
    served = spawn(env, log)
    processes.append(served.process)
    wait_healthy(served)
    return served


def _login(url: str, user: str = "uz.officer") -> dict[str, str]:
    reply = httpx.post(
        url + "/auth/login", json={"username": user, "password": PASSWORD}, timeout=HTTP_TIMEOUT
    )
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def _run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BLOVAULT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_server_killed_mid_upload_then_gc(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", **FAST_ARGON2)
    vault = Vault.open(settings)
    try:
        seed(vault)
    finally:
        vault.close()
    env = _server_env(settings)
    store = LocalDiskStore(root=settings.resolved_store_dir)
    processes: list[subprocess.Popen[bytes]] = []
    stop_sending = threading.Event()
    sender: threading.Thread | None = None
    try:
        first = _start_server(env, tmp_path / "server-1.log", processes)
        headers = _login(first.url)

        boundary = "fault" + secrets.token_hex(12)
        outcome: list[httpx.Response | Exception] = []

        def body() -> Iterator[bytes]:
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n'
                "Content-Type: application/json\r\n\r\n"
                + json.dumps({"title": "killed in flight"})
                + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                'filename="big.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            chunk = _data(256 * 1024)
            for _ in range(256):  # 64 MiB at most; the server dies long before
                if stop_sending.is_set():
                    return
                yield chunk
                time.sleep(0.02)
            yield f"\r\n--{boundary}--\r\n".encode()

        def send() -> None:
            try:
                outcome.append(
                    httpx.post(
                        first.url + "/packages",
                        content=body(),
                        timeout=HTTP_TIMEOUT,
                        headers={
                            **headers,
                            "Content-Type": f"multipart/form-data; boundary={boundary}",
                        },
                    )
                )
            except Exception as exc:  # the outcome is asserted below
                outcome.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        # Kill once the server is visibly writing the object (a temp file of >= 1 MiB).
        deadline = time.monotonic() + 20
        while not any(p.stat().st_size >= MiB for p in _existing(store.stray_temp_files())):
            assert time.monotonic() < deadline, "the upload never reached the store"
            assert sender.is_alive(), f"upload finished before the kill: {outcome}"
            time.sleep(0.02)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        stop_sending.set()
        sender.join(timeout=15)
        assert not sender.is_alive()
        assert not (isinstance(outcome[0], httpx.Response) and outcome[0].status_code < 300)

        # The leftovers of the killed write: temp files and/or objects without rows.
        engine = create_engine(settings.resolved_database_url)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM package")).scalar_one() == 0
                live = {r[0] for r in conn.execute(text("SELECT id FROM packagefile")).all()}
        finally:
            engine.dispose()
        temps = store.stray_temp_files()
        orphans = set(store.keys()) - live
        assert len(temps) + len(orphans) >= 1

        # Restart: the package is not visible.
        second = _start_server(env, tmp_path / "server-2.log", processes)
        headers = _login(second.url)
        reply = httpx.get(second.url + "/packages", headers=headers, timeout=HTTP_TIMEOUT)
        assert reply.status_code == 200, reply.text
        assert reply.json()["items"] == []

        # One admin command cleans up (alongside the running server).
        gc = _run_cli(env, "admin", "gc", "--grace-minutes", "0", "--json")
        assert gc.returncode == 0, gc.stderr
        report = json.loads(gc.stdout)
        assert report["objects_removed"] == len(orphans)
        assert report["temp_files_removed"] == len(temps)
        assert report["objects_removed"] + report["temp_files_removed"] >= 1
        assert store.stray_temp_files() == []
        assert list(store.keys()) == []

        # Recovery: a normal upload and download through the restarted server.
        content = _data(700_000, seed_value=3)
        reply = httpx.post(
            second.url + "/packages",
            headers=headers,
            timeout=HTTP_TIMEOUT,
            files=[
                (
                    "metadata",
                    (None, json.dumps({"title": "after restart"}).encode(), "application/json"),
                ),
                ("file", ("ok.bin", content, "application/octet-stream")),
            ],
        )
        assert reply.status_code == 201, reply.text
        package = reply.json()["package"]
        file_url = f"{second.url}/packages/{package['id']}/files/{package['files'][0]['id']}"
        reply = httpx.get(file_url, headers=headers, timeout=HTTP_TIMEOUT)
        assert reply.status_code == 200
        assert reply.content == content
        assert reply.headers["X-Content-SHA256"] == hashlib.sha256(content).hexdigest()
        listed = httpx.get(second.url + "/packages", headers=headers, timeout=HTTP_TIMEOUT).json()
        assert [p["id"] for p in listed["items"]] == [package["id"]]

        verify = _run_cli(env, "ledger", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr

        vault = Vault.open(settings)
        try:
            assert set(vault.store.keys()) == _live_file_ids(vault) == {package["files"][0]["id"]}
            entries = _ledger(vault)
            assert [e.package for e in _uploads(entries, "allow")] == [package["id"]]
            gcs = [e for e in entries if e.action == "gc"]
            assert [(e.decision, e.subject) for e in gcs] == [
                ("allow", f"objects:{len(orphans)} temp:{len(temps)}")
            ]
            assert gcs[0].seq == report["receipt"]
        finally:
            vault.close()
    finally:
        stop_sending.set()
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        if sender is not None:
            sender.join(timeout=10)


def _existing(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.stat()
            yield path


# --- 4. database unavailable -------------------------------------------------------------------


def test_sqlite_write_locked(tmp_path: Path) -> None:
    """Another connection holds SQLite's write lock: 503, nothing written, fine once released.

    The service waits up to 30 s for the lock (``PRAGMA busy_timeout=30000``, not a setting),
    so the test shortens it on the vault's own engine to keep the run fast.
    """
    settings = load_settings(data_dir=tmp_path / "data", **FAST_ARGON2)
    vault = Vault.open(settings)
    try:
        users = seed(vault)
        officer = users["uz.officer"]

        @event.listens_for(vault.engine, "connect")
        def _short_busy_timeout(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA busy_timeout=200")
            cursor.close()

        vault.engine.dispose()  # pooled connections pick up the short timeout
        token = vault.login("uz.officer", PASSWORD).access_token
        ledger_before = vault.ledger_size()
        path = make_url(settings.resolved_database_url).database
        assert path
        holder = sqlite3.connect(path, isolation_level=None, timeout=5)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(StorageUnavailable):
                vault.upload(
                    officer,
                    NewPackage(title="locked out"),
                    [IncomingFile("a.bin", io.BytesIO(_data(200_000)))],
                )
            with running_server(vault) as url:
                reply = httpx.post(
                    url + "/packages",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=HTTP_TIMEOUT,
                    files=[
                        ("metadata", (None, b'{"title": "locked out"}', "application/json")),
                        ("file", ("a.bin", _data(200_000), "application/octet-stream")),
                    ],
                )
            assert reply.status_code == 503, reply.text
            assert reply.headers["content-type"].startswith("application/json")
            assert "storage_unavailable" in reply.text
            # Nothing written anywhere while locked.
            assert vault.ledger_size() == ledger_before
            assert _count(vault, "package") == 0
            assert list(vault.store.keys()) == []
            assert LocalDiskStore(root=settings.resolved_store_dir).stray_temp_files() == []
        finally:
            holder.rollback()
            holder.close()
        _assert_nothing_half_written(vault, officer, 0)
        assert _uploads(_ledger(vault), "allow") == []
        package_id = _roundtrip(vault, officer)
        assert [e.package for e in _uploads(_ledger(vault), "allow")] == [package_id]
        assert set(vault.store.keys()) == _live_file_ids(vault)
    finally:
        vault.close()


@requires_postgres
def test_postgres_unreachable(tmp_path: Path) -> None:
    with postgres_schema_url() as db_url:
        settings = load_settings(data_dir=tmp_path / "data", database_url=db_url, **FAST_ARGON2)
        vault = Vault.open(settings)
        try:
            officer = seed(vault)["uz.officer"]
            token = vault.login("uz.officer", PASSWORD).access_token
            ledger_before = vault.ledger_size()
            # The same vault, but its database is a closed port on loopback.
            dead = Vault(
                settings=settings,
                engine=make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/test"),
                store=vault.store,
                keys=vault.keys,
                authz=vault.authz,
                passwords=vault.passwords,
                tokens=vault.tokens,
            )
            try:
                with pytest.raises(StorageUnavailable):
                    dead.upload(
                        officer,
                        NewPackage(title="no database"),
                        [IncomingFile("a.bin", io.BytesIO(_data(200_000)))],
                    )
                with pytest.raises(StorageUnavailable):
                    dead.list_packages(officer)
                with running_server(dead) as url:
                    ready = httpx.get(url + "/readyz", timeout=HTTP_TIMEOUT)
                    assert ready.status_code == 503, ready.text
                    assert ready.headers["content-type"].startswith("application/json")
                    assert "storage_unavailable" in ready.text
                    reply = httpx.post(
                        url + "/packages",
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=HTTP_TIMEOUT,
                        files=[
                            ("metadata", (None, b'{"title": "x"}', "application/json")),
                            ("file", ("a.bin", b"abc", "application/octet-stream")),
                        ],
                    )
                    assert reply.status_code == 503, reply.text
            finally:
                dead.close()
            assert vault.ledger_size() == ledger_before
            assert list(vault.store.keys()) == []
            assert LocalDiskStore(root=settings.resolved_store_dir).stray_temp_files() == []
            _assert_nothing_half_written(vault, officer, 0)
            assert _uploads(_ledger(vault), "allow") == []
            package_id = _roundtrip(vault, officer)
            assert [e.package for e in _uploads(_ledger(vault), "allow")] == [package_id]
        finally:
            vault.close()
