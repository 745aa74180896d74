"""Two real ``blovault serve`` processes sharing one PostgreSQL schema and one S3 bucket.

README, "Growing past one machine": the API is stateless; ledger appends are serialised by a
PostgreSQL advisory lock, rule changes propagate within 0.5 s, releases and revocations take
effect on the next request everywhere. Here: concurrent uploads, releases and downloads through
both processes; one contiguous, verifiable ledger; a revocation through A refuses the recipient
on B within a second; an admin rule added in a third process is enforced by both within a
second.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import (
    FAST_ARGON2,
    PASSWORD,
    MultipartFiles,
    postgres_schema_url,
    requires_postgres,
    seed,
)
from tests.s3server import moto_s3
from tests.servers import Served, spawn, wait_healthy
from vault.config import Settings, load_settings
from vault.crypto import SEGMENT_SIZE
from vault.models import Classification, Role
from vault.service import Vault, local_operator

pytestmark = requires_postgres

TIMEOUT = httpx.Timeout(60.0, connect=5.0)
PROPAGATION_BOUND = 1.0  # seconds: the correctness bound, not a benchmark
RULE = "p, officer, released-country, *, *, *, download, deny"
Headers = dict[str, str]


@dataclass
class Server(Served):
    """A served process with the name the test calls it by."""

    name: str = ""


def server_env(settings: Settings) -> dict[str, str]:
    """The environment a server process reads its settings from (nothing else VAULT_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    assert settings.database_url
    assert settings.s3_endpoint
    assert settings.s3_access_key
    assert settings.s3_secret_key
    env.update(
        {
            "VAULT_DATA_DIR": str(settings.data_dir),
            "VAULT_DATABASE_URL": settings.database_url,
            "VAULT_STORE": "minio",
            "VAULT_S3_ENDPOINT": settings.s3_endpoint,
            "VAULT_S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
            "VAULT_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
            "VAULT_S3_SECURE": "true" if settings.s3_secure else "false",
            "VAULT_S3_REGION": settings.s3_region or "",
            "VAULT_S3_BUCKET": settings.s3_bucket,
            **{f"VAULT_{k.upper()}": str(v) for k, v in FAST_ARGON2.items()},
        }
    )
    return env


@contextmanager
def two_servers(settings: Settings, log_dir: Path) -> Iterator[tuple[Server, Server]]:
    """Start two ``blovault serve`` processes; always terminate (then kill) both."""
    env = server_env(settings)
    servers: list[Server] = []
    try:
        for name in ("a", "b"):
            served = spawn(env, log_dir / f"server-{name}.log")
            servers.append(Server(served.url, served.process, served.log, name))
        deadline = time.monotonic() + 30
        for server in servers:
            wait_healthy(server, f"server {server.name}", deadline)
        yield servers[0], servers[1]
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.process.terminate()
        for server in servers:
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(timeout=10)


def login(url: str, user: str) -> Headers:
    reply = httpx.post(
        url + "/auth/login", json={"username": user, "password": PASSWORD}, timeout=TIMEOUT
    )
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def upload(url: str, headers: Headers, title: str, files: dict[str, bytes]) -> dict[str, Any]:
    parts: MultipartFiles = [
        ("metadata", (None, json.dumps({"title": title}).encode(), "application/json"))
    ]
    parts += [("file", (n, d, "application/octet-stream")) for n, d in files.items()]
    reply = httpx.post(url + "/packages", files=parts, headers=headers, timeout=TIMEOUT)
    assert reply.status_code == 201, reply.text
    package: dict[str, Any] = reply.json()["package"]
    return package


def poll(until: Callable[[], bool], bound: float) -> float:
    """Seconds until ``until()`` first holds, polling as fast as requests allow (or inf)."""
    start = time.monotonic()
    while time.monotonic() - start < bound * 3:
        if until():
            return time.monotonic() - start
        time.sleep(0.01)
    return float("inf")


@dataclass
class Cluster:
    settings: Settings
    a: Server
    b: Server

    @property
    def urls(self) -> tuple[str, str]:
        return (self.a.url, self.b.url)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One PostgreSQL schema, one moto S3 bucket, one data dir (dev keys), two servers."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    with ExitStack() as stack:
        db_url = stack.enter_context(postgres_schema_url())
        s3 = stack.enter_context(moto_s3())
        settings = load_settings(
            data_dir=tmp / "data",
            database_url=db_url,
            **FAST_ARGON2,
            **s3.target.settings_overrides(bucket=s3.target.new_bucket()),
        )
        # The world, seeded in-process on the same settings (this also makes the dev keys
        # both servers share, and the bucket).
        vault = Vault.open(settings)
        try:
            seed(vault)
        finally:
            vault.close()
        a, b = stack.enter_context(two_servers(settings, tmp))
        yield Cluster(settings, a, b)
    assert a.process.poll() is not None
    assert b.process.poll() is not None


def released_package(cluster: Cluster, uz: Headers, title: str) -> tuple[dict[str, Any], str]:
    package = upload(cluster.a.url, uz, title, {f"{title}.txt": b"content of " + title.encode()})
    reply = httpx.post(
        f"{cluster.b.url}/packages/{package['id']}/releases",
        json={"country": "KZ"},
        headers=uz,
        timeout=TIMEOUT,
    )
    assert reply.status_code == 201, reply.text
    release_id: str = reply.json()["release"]["id"]
    return package, release_id


def test_two_processes_share_one_vault(cluster: Cluster) -> None:
    a, b, urls, settings = cluster.a, cluster.b, cluster.urls, cluster.settings
    # Tokens from either process work on the other (one signing key, one user table).
    uz = login(a.url, "uz.officer")
    kz = login(b.url, "kz.officer")
    assert httpx.get(a.url + "/packages", headers=kz, timeout=TIMEOUT).status_code == 200
    assert "server" not in httpx.get(b.url + "/healthz").headers  # serve hides uvicorn

    # Concurrent uploads through both.
    rng = random.Random(20240607)
    wanted = {
        f"pkg-{i}": {
            f"big-{i}.bin": rng.randbytes(rng.randrange(SEGMENT_SIZE + 1, 3 * SEGMENT_SIZE)),
            f"small-{i}.txt": f"report {i}".encode(),
        }
        for i in range(8)
    }
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {
            title: pool.submit(upload, urls[i % 2], uz, title, files)
            for i, (title, files) in enumerate(wanted.items())
        }
        packages = {title: f.result() for title, f in futures.items()}
    assert len({p["id"] for p in packages.values()}) == len(wanted)

    # Concurrent releases through both (each through the other process than its upload).
    def release(i: int, package: dict[str, Any]) -> str:
        reply = httpx.post(
            f"{urls[(i + 1) % 2]}/packages/{package['id']}/releases",
            json={"country": "KZ"},
            headers=uz,
            timeout=TIMEOUT,
        )
        assert reply.status_code == 201, reply.text
        assert reply.json()["release"]["status"] == "active"
        release_id: str = reply.json()["release"]["id"]
        return release_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        release_ids = dict(
            zip(packages, pool.map(release, range(len(packages)), packages.values()), strict=True)
        )

    # Concurrent downloads of every file through both processes, byte-identical.
    jobs = [
        (url, p["id"], f, wanted[title][f["name"]])
        for title, p in packages.items()
        for f in p["files"]
        for url in urls
    ]

    def download(job: tuple[str, str, dict[str, Any], bytes]) -> None:
        url, package_id, info, content = job
        reply = httpx.get(
            f"{url}/packages/{package_id}/files/{info['id']}", headers=kz, timeout=TIMEOUT
        )
        assert reply.status_code == 200, reply.text
        assert reply.content == content, f"{info['name']} through {url} differs"
        assert reply.headers["X-Content-SHA256"] == hashlib.sha256(content).hexdigest()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(download, jobs))
    for url in urls:
        listed = httpx.get(
            url + "/packages", headers=kz, params={"limit": 50}, timeout=TIMEOUT
        ).json()["items"]
        assert {p["id"] for p in packages.values()} <= {p["id"] for p in listed}

    # One ledger, contiguous and intact, with every action of both processes in it.
    vault = Vault.open(settings)
    try:
        report = vault.verify_ledger(local_operator())
        assert report.ok, report
        with vault.engine.connect() as conn:
            rows = conn.execute(text("SELECT seq, entry FROM ledgerentry ORDER BY seq")).all()
        seqs = [seq for seq, _ in rows]
        assert seqs == list(range(len(seqs)))
        # Opened, as the operator's tooling reads them: package ids are committed in v2 entries.
        entries = list(vault.unscoped_entries())
        assert [e.seq for e in entries] == seqs
        ours = {p["id"] for p in packages.values()}
        actions = [(e.action, e.decision) for e in entries if e.package in ours]
        assert actions.count(("upload", "allow")) == len(wanted)
        assert actions.count(("release", "allow")) == len(wanted)
        assert actions.count(("download", "allow")) == len(jobs)
    finally:
        vault.close()

    # Revocation through A: the recipient is refused on B within the bound.
    title = "pkg-0"
    package, file_id = packages[title], packages[title]["files"][0]["id"]
    revoked = httpx.post(
        f"{a.url}/packages/{package['id']}/releases/{release_ids[title]}/revoke",
        headers=uz,
        timeout=TIMEOUT,
    )
    revoked_at = time.monotonic()
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["release"]["status"] == "revoked"

    def refused_on_b() -> bool:
        reply = httpx.get(
            f"{b.url}/packages/{package['id']}/files/{file_id}", headers=kz, timeout=TIMEOUT
        )
        return reply.status_code == 404

    poll(refused_on_b, PROPAGATION_BOUND)
    elapsed = time.monotonic() - revoked_at
    print(f"revocation through A refused on B after {elapsed * 1000:.0f} ms")
    assert elapsed < PROPAGATION_BOUND, f"B still served a revoked release {elapsed:.3f} s on"
    for url in urls:
        shown = httpx.get(f"{url}/packages/{package['id']}", headers=kz, timeout=TIMEOUT)
        assert shown.status_code == 404
        assert shown.json()["error"]["code"] == "not_found"
        listed = httpx.get(
            url + "/packages", headers=kz, params={"limit": 50}, timeout=TIMEOUT
        ).json()["items"]
        assert package["id"] not in {p["id"] for p in listed}
    # Still there for its originator, on both.
    for url in urls:
        assert (
            httpx.get(f"{url}/packages/{package['id']}", headers=uz, timeout=TIMEOUT).status_code
            == 200
        )


def test_server_logs_are_json_without_secrets(cluster: Cluster) -> None:
    uz = login(cluster.a.url, "uz.officer")
    title = "LOGCANARY-title"
    package = upload(cluster.a.url, uz, title, {"LOGCANARY-name.txt": b"LOGCANARY-content"})
    reply = httpx.get(f"{cluster.a.url}/packages/{package['id']}", headers=uz, timeout=TIMEOUT)
    assert reply.status_code == 200
    request_id = reply.headers["x-request-id"]
    deadline = time.monotonic() + 3
    while request_id not in cluster.a.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "request not logged"
        time.sleep(0.05)
    log = cluster.a.log.read_text(errors="replace")
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    line = next(x for x in lines if x.get("request_id") == request_id)
    assert line["logger"] == "vault.access"
    assert line["status"] == 200
    assert line["method"] == "GET"
    assert package["id"] not in json.dumps(line)  # route template, never the path
    for secret in (uz["Authorization"].split()[1], "LOGCANARY", PASSWORD):
        assert secret not in log


def test_admin_rule_is_enforced_by_both_processes_within_a_second(cluster: Cluster) -> None:
    uz, kz = login(cluster.a.url, "uz.officer"), login(cluster.b.url, "kz.officer")
    package, _ = released_package(cluster, uz, "rule-target")
    file_id = package["files"][0]["id"]

    def download_status(url: str) -> int:
        return httpx.get(
            f"{url}/packages/{package['id']}/files/{file_id}", headers=kz, timeout=TIMEOUT
        ).status_code

    assert [download_status(u) for u in cluster.urls] == [200, 200]

    vault = Vault.open(cluster.settings)
    try:
        vault.change_rule(local_operator(), RULE, add=True)
    finally:
        vault.close()
    added_at = time.monotonic()
    first_refusal: dict[str, float] = {}
    seen: dict[str, set[int]] = {"a": set(), "b": set()}
    while len(first_refusal) < 2 and time.monotonic() - added_at < 3 * PROPAGATION_BOUND:
        for server in (cluster.a, cluster.b):
            if server.name in first_refusal:
                continue
            status = download_status(server.url)
            seen[server.name].add(status)
            if status == 403:
                first_refusal[server.name] = time.monotonic() - added_at
        time.sleep(0.01)
    assert set(first_refusal) == {"a", "b"}, f"not enforced everywhere: {first_refusal} {seen}"
    print(f"rule enforced after (s): {first_refusal}")
    assert max(first_refusal.values()) < PROPAGATION_BOUND, first_refusal
    assert all(statuses <= {200, 403} for statuses in seen.values()), seen  # no errors meanwhile
    for url in cluster.urls:  # the rule denies download only; reading is still allowed
        assert (
            httpx.get(f"{url}/packages/{package['id']}", headers=kz, timeout=TIMEOUT).status_code
            == 200
        )
    # And a process started afterwards loads the rule too.
    vault = Vault.open(cluster.settings)
    try:
        assert RULE in vault.rules(local_operator())
    finally:
        vault.close()


def _reads(cluster: Cluster, headers: Headers, package_id: str) -> list[tuple[int, bool]]:
    """On each server: the status of showing the package, and whether the listing has it."""
    out = []
    for url in cluster.urls:
        shown = httpx.get(f"{url}/packages/{package_id}", headers=headers, timeout=TIMEOUT)
        listing = httpx.get(f"{url}/packages?limit=200", headers=headers, timeout=TIMEOUT)
        listed = listing.status_code == 200 and any(
            item["id"] == package_id for item in listing.json()["items"]
        )
        out.append((shown.status_code, listed))
    return out


@pytest.mark.parametrize(
    ("change", "after"),
    [
        ({"disabled": True}, None),
        ({"clearance": Classification.UNCLASSIFIED}, [(404, False), (404, False)]),
        ({"role": Role.AUDITOR}, None),
    ],
)
def test_user_changes_take_effect_on_the_next_request_in_both_processes(
    cluster: Cluster, change: dict[str, Any], after: list[tuple[int, bool]] | None
) -> None:
    """Disabling a user, lowering their clearance or changing their role (in a third process)
    refuses their very next read on either server -- no process keeps a stale view of the
    caller (the listing's plans are cached by role and clearance, read afresh each request) --
    and a new session reads under the new attributes."""
    uz = login(cluster.a.url, "uz.officer")
    parts: MultipartFiles = [
        (
            "metadata",
            (None, b'{"title": "restricted", "classification": "RESTRICTED"}', "application/json"),
        ),
        ("file", ("s.txt", b"secret content", "application/octet-stream")),
    ]
    reply = httpx.post(cluster.a.url + "/packages", files=parts, headers=uz, timeout=TIMEOUT)
    assert reply.status_code == 201, reply.text
    package_id = reply.json()["package"]["id"]
    released = httpx.post(
        f"{cluster.a.url}/packages/{package_id}/releases",
        json={"country": "KZ"},
        headers=uz,
        timeout=TIMEOUT,
    )
    assert released.status_code == 201, released.text
    kz = login(cluster.b.url, "kz.interior")
    assert _reads(cluster, kz, package_id) == [(200, True), (200, True)]
    vault = Vault.open(cluster.settings)
    try:
        vault.set_user(local_operator(), "kz.interior", **change)
        assert {status for status, _ in _reads(cluster, kz, package_id)} == {401}
        if after is not None:
            assert _reads(cluster, login(cluster.b.url, "kz.interior"), package_id) == after
    finally:
        restore: dict[str, Any] = {
            "disabled": False,
            "clearance": Classification.SECRET,
            "role": Role.OFFICER,
        }
        vault.set_user(local_operator(), "kz.interior", **{k: restore[k] for k in change})
        vault.close()
    assert _reads(cluster, login(cluster.a.url, "kz.interior"), package_id) == [(200, True)] * 2


def _read_statuses(cluster: Cluster, headers: Headers, package_id: str, file_id: str) -> list[int]:
    """On each server, the status of each read route: list, show and download."""
    return [
        httpx.get(url + path, headers=headers, timeout=TIMEOUT).status_code
        for url in cluster.urls
        for path in (
            "/packages?limit=5",
            f"/packages/{package_id}",
            f"/packages/{package_id}/files/{file_id}",
        )
    ]


def test_a_session_ended_in_one_process_is_refused_by_both_on_the_next_read(
    cluster: Cluster,
) -> None:
    """The read routes look their caller up in the read's own transaction: a logout on one
    server refuses that token's very next list, show and download on either server, while
    another session of the same officer reads on."""
    uz = login(cluster.a.url, "uz.officer")
    package = upload(cluster.a.url, uz, "session-ended", {"s.txt": b"session content"})
    package_id, file_id = package["id"], package["files"][0]["id"]
    ending, other = login(cluster.b.url, "uz.officer"), login(cluster.a.url, "uz.officer")
    assert _read_statuses(cluster, ending, package_id, file_id) == [200] * 6
    out = httpx.post(cluster.b.url + "/auth/logout", headers=ending, timeout=TIMEOUT)
    assert out.status_code == 200, out.text
    assert _read_statuses(cluster, ending, package_id, file_id) == [401] * 6
    assert _read_statuses(cluster, other, package_id, file_id) == [200] * 6
