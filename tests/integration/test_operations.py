"""Operations surface over a real socket: health, readiness, metrics, headers, logs, CORS.

README, "Operations": ``/healthz`` (process), ``/readyz`` (database and store), ``/metrics``
(Prometheus, behind ``VAULT_METRICS_TOKEN``: requests, latencies, decisions, ledger size,
bytes stored); JSON log lines with
request ids that never carry tokens, bodies, titles or filenames.
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from blo_vault.api.observability import JsonFormatter
from tests.conftest import METRICS_AUTH, PASSWORD, MultipartFiles, World, running_server
from tests.s3server import moto_s3
from vault.config import Settings
from vault.crypto import SEGMENT_SIZE
from vault.service import Vault
from vault.storage.minio import DEFAULT_MIN_PART_SIZE, MinioStore

Headers = dict[str, str]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
REQUEST_ID = re.compile(r"[0-9a-f]{16}")


def login(client: httpx.Client, user: str) -> Headers:
    reply = client.post("/auth/login", json={"username": user, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def upload(
    client: httpx.Client, headers: Headers, title: str, files: list[tuple[str, bytes]]
) -> httpx.Response:
    parts: MultipartFiles = [
        ("metadata", (None, json.dumps({"title": title}).encode(), "application/json"))
    ]
    parts += [("file", (name, data, "application/octet-stream")) for name, data in files]
    return client.post("/packages", files=parts, headers=headers)


def scrape(client: httpx.Client) -> Samples:
    reply = client.get("/metrics", headers=METRICS_AUTH)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape_until(
    client: httpx.Client, ok: Callable[[Samples], bool], timeout: float = 3.0
) -> Samples:
    """Request counters are updated after the response is sent: poll briefly for them."""
    deadline = time.monotonic() + timeout
    while True:
        got = scrape(client)
        if ok(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def logged_lines(
    json_log: io.StringIO, *request_ids: str, timeout: float = 3.0
) -> list[dict[str, Any]]:
    """The JSON log lines so far, once every request id has its access line: those lines are
    written after the response is sent, so a client can read the reply before they exist."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(x) for x in json_log.getvalue().splitlines() if x.strip()]
        done = {x.get("request_id") for x in lines if x.get("logger") == "vault.access"}
        if set(request_ids) <= done or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


@pytest.fixture
def client(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=30) as c:
        yield c


# --- health and readiness -----------------------------------------------------------------------


def test_healthz_and_readyz(client: httpx.Client) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def assert_unavailable(reply: httpx.Response, *, leaks: tuple[str, ...] = ()) -> None:
    assert reply.status_code == 503, reply.text
    body = reply.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "receipt"}
    assert body["error"]["code"] == "storage_unavailable"
    assert body["error"]["message"]
    for secret in leaks:
        assert secret not in reply.text


def test_readyz_503_when_local_store_folder_is_gone(world: World, client: httpx.Client) -> None:
    root = world.settings.resolved_store_dir
    assert client.get("/readyz").status_code == 200
    shutil.rmtree(root)
    try:
        assert_unavailable(client.get("/readyz"), leaks=(str(root),))
        assert client.get("/healthz").status_code == 200  # liveness is not readiness
    finally:
        root.mkdir(mode=0o700)
    assert client.get("/readyz").status_code == 200


def test_readyz_503_when_minio_is_stopped(settings: Settings) -> None:
    with moto_s3() as s3:
        target = s3.target
        store = MinioStore(
            client=target.client(timeout=2, retries=0),
            bucket=target.new_bucket(),
            part_size=DEFAULT_MIN_PART_SIZE,
        )
        store.ensure_bucket()
        vault = Vault.open(settings, store=store)
        try:
            with running_server(vault) as url, httpx.Client(base_url=url, timeout=30) as c:
                assert c.get("/readyz").status_code == 200
                s3.stop()
                assert_unavailable(c.get("/readyz"), leaks=(target.endpoint, store.bucket))
                assert c.get("/healthz").status_code == 200
        finally:
            vault.close()


# --- metrics ------------------------------------------------------------------------------------


def matching(samples: Samples, name: str, **labels: str) -> list[float]:
    """Values of every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return [v for (n, got), v in samples.items() if n == name and want <= got]


def test_metrics_requests_latency_decisions_ledger_bytes(
    world: World, client: httpx.Client
) -> None:
    uz = login(client, "uz.officer")
    tj = login(client, "tj.officer")
    sizes = (1000, 2 * SEGMENT_SIZE + 5)
    up = upload(
        client, uz, "Metrics", [(f"f{i}.bin", secrets.token_bytes(n)) for i, n in enumerate(sizes)]
    )
    assert up.status_code == 201, up.text
    package_id = up.json()["package"]["id"]

    before = scrape(client)
    assert client.get(f"/packages/{package_id}", headers=tj).status_code == 404  # deny
    assert client.get(f"/packages/{package_id}", headers=uz).status_code == 200  # allow

    def settled(s: Samples) -> bool:  # the first scrape, the 404 and the 200 are all counted
        return (
            sum(matching(s, "vault_http_requests_total", method="GET", status="404")) >= 1
            and sum(matching(s, "vault_http_requests_total", method="GET")) >= 3
        )

    after = scrape_until(client, settled)

    # Decisions this process wrote: exactly one more deny and one more allow.
    assert (
        sample(after, "vault_decisions", decision="deny")
        - sample(before, "vault_decisions", decision="deny")
        == 1
    )
    assert (
        sample(after, "vault_decisions", decision="allow")
        - sample(before, "vault_decisions", decision="allow")
        == 1
    )
    assert sample(after, "vault_decisions", decision="allow") >= 4  # seed, logins, upload, read
    denies = sample(after, "vault_decisions", decision="deny")
    assert world.vault.decision_counts()["deny"] == denies

    # Requests by method and status (route labels: see the route-template test below).
    total = "vault_http_requests_total"
    assert sum(matching(after, total, method="POST", status="201")) == 1
    assert sum(matching(after, total, method="GET", status="404")) == 1
    assert sum(matching(after, total, method="POST", status="200")) == 2  # the two logins
    assert sum(matching(after, total, method="GET", status="200")) >= 2  # read, first scrape
    assert not any(package_id in str(labels) for _, labels in after)

    # Latency histogram: for every label set, +Inf bucket == count, and a plausible sum.
    counts = {
        labels: v for (n, labels), v in after.items() if n == "vault_http_request_seconds_count"
    }
    assert sum(v for labels, v in counts.items() if ("method", "GET") in labels) >= 3
    for labels, count in counts.items():
        inf = after[("vault_http_request_seconds_bucket", labels | {("le", "+Inf")})]
        assert inf == count
        assert 0 < after[("vault_http_request_seconds_sum", labels)] < 60 * count

    # Ledger size and bytes, read from the database at scrape time.
    assert sample(after, "vault_ledger_entries") == world.vault.ledger_size()
    assert sample(after, "vault_bytes_stored") == sum(sizes)
    assert sample(after, "vault_packages") == 1


def test_metrics_and_logs_label_requests_by_route_template(
    client: httpx.Client, json_log: io.StringIO
) -> None:
    uz = login(client, "uz.officer")
    missing = client.get(f"/packages/{'0' * 32}", headers=uz)
    assert missing.status_code == 404
    want = {("POST", "/auth/login", "200"), ("GET", "/packages/{package_id}", "404")}

    def settled(s: Samples) -> bool:
        return all(
            sample(s, "vault_http_requests_total", method=m, route=r, status=st) >= 1
            for m, r, st in want
        )

    after = scrape_until(client, settled, timeout=1.0)
    for method, route, status in want:
        assert (
            sample(after, "vault_http_requests_total", method=method, route=route, status=status)
            == 1
        ), (method, route, status)
    assert (
        sample(
            after, "vault_http_request_seconds_count", method="GET", route="/packages/{package_id}"
        )
        == 1
    )
    lines = logged_lines(json_log, missing.headers["x-request-id"])
    line = next(x for x in lines if x.get("request_id") == missing.headers["x-request-id"])
    assert line["route"] == "/packages/{package_id}"


# --- headers ------------------------------------------------------------------------------------


def test_every_response_carries_request_id_and_security_headers(client: httpx.Client) -> None:
    uz = login(client, "uz.officer")
    up = upload(client, uz, "Headers", [("a.txt", b"hello")])
    assert up.status_code == 201
    package = up.json()["package"]
    replies = [
        client.get("/healthz"),
        client.get("/readyz"),
        client.get("/metrics", headers=METRICS_AUTH),
        client.get("/metrics"),  # 401: no metrics token
        client.post("/auth/login", json={"username": "uz.officer", "password": "wrong"}),  # 401
        client.post("/auth/login", json={"username": ""}),  # 422
        client.get("/packages"),  # 401: no token
        client.get("/packages", headers=uz),
        up,
        client.get(f"/packages/{package['id']}", headers=uz),
        client.get(f"/packages/{'0' * 32}", headers=uz),  # 404
        client.get(f"/packages/{package['id']}/files/{package['files'][0]['id']}", headers=uz),
        client.get("/no/such/route"),
        client.delete("/healthz"),  # 405
        client.options("/packages", headers={"Origin": "https://evil.example"}),
    ]
    statuses = {r.status_code for r in replies}
    assert {200, 201, 401, 404, 405, 422} <= statuses
    ids = []
    for reply in replies:
        where = f"{reply.request.method} {reply.request.url.path} -> {reply.status_code}"
        assert REQUEST_ID.fullmatch(reply.headers.get("x-request-id", "")), where
        assert reply.headers.get("x-content-type-options") == "nosniff", where
        assert reply.headers.get("x-frame-options") == "DENY", where
        assert reply.headers.get("cache-control") == "no-store", where
        ids.append(reply.headers["x-request-id"])
    assert len(set(ids)) == len(ids), "request ids must be unique"


def test_unexpected_error_is_a_bare_500_with_headers_and_no_detail(
    world: World,
    client: httpx.Client,
    json_log: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A bug no handler knows: the one error shape, the usual headers, nothing of the cause
    in the reply or the logs but its type, and no traceback on the server's output."""
    uz = login(client, "uz.officer")
    secret = "/srv/vault-data/secret-" + secrets.token_hex(6)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(f"bug while reading {secret}")

    monkeypatch.setattr(world.vault.reads, "listing", broken)
    reply = client.get("/packages", headers=uz)
    assert reply.status_code == 500
    assert reply.json() == {
        "error": {"code": "internal_error", "message": "internal error", "receipt": None}
    }
    assert REQUEST_ID.fullmatch(reply.headers.get("x-request-id", ""))
    assert reply.headers.get("x-content-type-options") == "nosniff"
    assert reply.headers.get("x-frame-options") == "DENY"
    assert "default-src 'none'" in reply.headers.get("content-security-policy", "")
    assert reply.headers.get("cache-control") == "no-store"
    assert secret not in reply.text
    logged = logged_lines(json_log, reply.headers["x-request-id"])
    mine = [x for x in logged if x.get("request_id") == reply.headers["x-request-id"]]
    assert {"unexpected error", "request"} <= {x["message"] for x in mine}
    assert any(x.get("exception") == "RuntimeError" for x in mine)
    assert secret not in json_log.getvalue()
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out
    assert secret not in printed.err + printed.out
    # The server is fine afterwards.
    monkeypatch.undo()
    assert client.get("/packages", headers=uz).status_code == 200


def test_cors_preflight_from_foreign_origin_gets_no_allow_origin(client: httpx.Client) -> None:
    evil = "https://evil.example"
    preflight = client.options(
        "/packages",
        headers={
            "Origin": evil,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-credentials" not in preflight.headers
    assert "access-control-allow-headers" not in preflight.headers
    assert preflight.status_code >= 400
    simple = client.get("/healthz", headers={"Origin": evil})
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers


# --- logs ---------------------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The vault's (and uvicorn's) records formatted by JsonFormatter into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    saved = []
    for name in ("vault", "uvicorn.error"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    yield buffer
    for logger, level in saved:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_json_logs_carry_request_ids_but_no_secrets(
    client: httpx.Client, json_log: io.StringIO
) -> None:
    canary = "CANARY" + secrets.token_hex(8)
    title = f"Title {canary}-T"
    filename = f"{canary}-F.txt"
    uz = login(client, "uz.officer")
    token = uz["Authorization"].removeprefix("Bearer ")
    up = upload(client, uz, title, [(filename, b"content " + canary.encode())])
    assert up.status_code == 201
    package = up.json()["package"]
    file_id = package["files"][0]["id"]
    replies = [
        up,
        client.get("/packages", headers=uz, params={"q": canary + "-Q"}),
        client.get(f"/packages/{package['id']}", headers=uz),
        client.get(f"/packages/{package['id']}/files/{file_id}", headers=uz),
        client.get("/packages", headers={"Authorization": f"Bearer {canary}-BADTOKEN"}),
        client.post("/auth/login", json={"username": "uz.officer", "password": canary + "-PW"}),
        client.post("/auth/login", json={"username": "uz.officer", "password": PASSWORD}),
    ]
    assert replies[3].content == b"content " + canary.encode()
    lines = logged_lines(json_log, *(r.headers["x-request-id"] for r in replies))
    text = json_log.getvalue()
    access = [line for line in lines if line.get("logger") == "vault.access"]
    by_id = {line["request_id"]: line for line in access}
    for reply in replies:
        line = by_id.get(reply.headers["x-request-id"])
        assert line is not None, f"no log line for {reply.request.url.path}"
        assert line["status"] == reply.status_code
        assert line["method"] == reply.request.method
        assert package["id"] not in line["route"]  # a template, never the path
        assert isinstance(line["duration_ms"], int | float)
        for key in ("time", "level", "logger", "message"):
            assert key in line

    for secret in (token, canary, PASSWORD, title, filename, "Bearer"):
        assert secret not in text, f"log output contains {secret[:20]!r}"


def test_json_formatter_keeps_exception_type_only() -> None:
    secret = "CANARY" + secrets.token_hex(8)
    try:
        raise ValueError(f"boom {secret}")
    except ValueError:
        record = logging.getLogger("vault.test").makeRecord(
            "vault.test",
            logging.ERROR,
            __file__,
            1,
            "failed: %s",
            ("x",),
            exc_info=__import__("sys").exc_info(),
            extra={"request_id": "abc", "status": 500},
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "failed: x"
    assert data["level"] == "error"
    assert data["exception"] == "ValueError"
    assert data["request_id"] == "abc"
    assert data["status"] == 500
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["time"])
    assert secret not in line
    assert "Traceback" not in line
