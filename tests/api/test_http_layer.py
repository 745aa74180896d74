"""The HTTP layer on a real server on 127.0.0.1: forwarded headers, slow headers and bodies,
what metrics and logs count for refused requests, the /metrics token, and the JSON shape of
refusals the server sends itself.

Servers here run with small configured limits (a one-second header deadline, a one-second
rate window); every wait is bounded, every connection a test opens it closes, and every
server it starts it stops.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from blo_vault.api.observability import JsonFormatter
from tests.api.test_hostile_input import (
    FULL,
    Reply,
    Served,
    assert_error,
    assert_nothing_stored,
    file_part,
    http_request,
    metadata_part,
    multipart,
    read_reply,
    serve,
    stored,
    upload_request,
)
from tests.conftest import FAST_ARGON2, METRICS_AUTH, METRICS_TOKEN, ON_POSTGRES, PASSWORD, seed
from tests.servers import spawn, wait_healthy
from vault.config import load_settings
from vault.service import Vault

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
HEADER_TIMEOUT = 1.0
MIN_RATE = 200  # bytes/s
RATE_WINDOW = 1.0  # seconds


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A vault with a one-second header deadline and a 200 B/s minimum body rate."""
    with serve(
        tmp_path_factory.mktemp("http"),
        header_timeout_seconds=HEADER_TIMEOUT,
        body_min_rate=MIN_RATE,
        body_rate_window_seconds=RATE_WINDOW,
        body_timeout_seconds=10,
        login_failures_per_user=10_000,
        login_failures_per_address=10_000,
    ) as s:
        yield s


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The vault's log records, formatted by JsonFormatter into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("vault")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield buffer
    logger.removeHandler(handler)
    logger.setLevel(level)


def connect(served: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=15)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def trickle(sock: socket.socket, data: bytes, *, every: float, bound: float) -> Reply:
    """Send ``data`` a byte every ``every`` seconds until the server answers or closes; give up
    (fail) after ``bound`` seconds. Returns what the server sent."""
    deadline = time.monotonic() + bound
    sock.settimeout(every)
    for byte in data:
        if time.monotonic() > deadline:
            pytest.fail(f"still reading the trickle after {bound} s")
        try:
            sock.sendall(bytes([byte]))
            sock.recv(1, socket.MSG_PEEK)  # returns once the server answered or closed
            break
        except TimeoutError:
            continue  # nothing from the server yet: the next byte
        except (ConnectionResetError, BrokenPipeError):
            break
    else:
        pytest.fail("the whole trickle was accepted")
    sock.settimeout(15)
    return read_reply(sock)


def assert_closed(sock: socket.socket) -> None:
    """The server closed the connection. A reset counts: closing a socket whose receive buffer
    still holds unread trickled bytes makes the kernel answer with RST instead of FIN."""
    sock.settimeout(5)
    try:
        rest = sock.recv(1)
    except ConnectionResetError:
        return
    assert rest == b"", "the connection stays open"


def metric(served: Served, route: str, status: str) -> float:
    """vault_http_requests_total for ``route`` and ``status``, read with the metrics token."""
    reply = httpx.get(served.url + "/metrics", headers=METRICS_AUTH, timeout=TIMEOUT)
    assert reply.status_code == 200, reply.text
    total = 0.0
    for line in reply.text.splitlines():
        if (
            line.startswith("vault_http_requests_total{")
            and f'route="{route}"' in line
            and f'status="{status}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for_metric(served: Served, route: str, status: str, at_least: float) -> float:
    """The counter, polled until it reaches ``at_least`` (counted after the reply) or 10 s."""
    deadline = time.monotonic() + 10
    while (value := metric(served, route, status)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def access_lines(json_log: io.StringIO, route: str) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in json_log.getvalue().splitlines() if x.strip()]
    return [x for x in lines if x.get("logger") == "vault.access" and x.get("route") == route]


def login_body() -> bytes:
    return json.dumps({"username": "uz.officer", "password": PASSWORD}).encode()


# --- 1. forwarded headers -------------------------------------------------------------------------


@contextlib.contextmanager
def blovault_serve(tmp_path: Path, **env: str) -> Iterator[str]:
    """``blovault serve`` on 127.0.0.1 over a seeded vault, lockout after 3 failures from an
    address; terminated (then killed) on exit."""
    if ON_POSTGRES:
        pytest.skip("spawns a server on its own SQLite vault")
    data = tmp_path / "vault-data"
    overrides = {
        **FAST_ARGON2,
        "login_failures_per_user": 1000,
        "login_failures_per_address": 3,
        "lockout_base_seconds": 60,
    }
    vault = Vault.open(load_settings(data_dir=data, **overrides))
    try:
        seed(vault)
    finally:
        vault.close()
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    server_env |= {f"VAULT_{k.upper()}": str(v) for k, v in overrides.items()}
    server_env |= {"VAULT_DATA_DIR": str(data), **env}
    served = spawn(server_env, tmp_path / "server.log")
    try:
        wait_healthy(served)
        yield served.url
    finally:
        served.process.terminate()
        try:
            served.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait(timeout=10)


def failed_login(client: httpx.Client, forwarded_for: str) -> int:
    reply = client.post(
        "/auth/login",
        json={"username": "uz.officer", "password": "wrong password"},
        headers={"X-Forwarded-For": forwarded_for},
    )
    return reply.status_code


def test_rotating_forwarded_for_does_not_escape_the_address_lockout(tmp_path: Path) -> None:
    """By default X-Forwarded-For is ignored, even from 127.0.0.1: the lockout follows the
    socket's address however the header changes."""
    with blovault_serve(tmp_path) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        statuses = [failed_login(client, f"203.0.113.{i}") for i in range(1, 6)]
    assert statuses[:3] == [401, 401, 401]
    assert statuses[3:] == [429, 429], statuses


def test_forwarded_for_is_used_from_a_trusted_proxy(tmp_path: Path) -> None:
    """With 127.0.0.1 as a trusted proxy, the forwarded address is the one locked out."""
    with (
        blovault_serve(tmp_path, VAULT_TRUSTED_PROXIES="127.0.0.1") as url,
        httpx.Client(base_url=url, timeout=TIMEOUT) as client,
    ):
        first = [failed_login(client, "203.0.113.7") for _ in range(4)]
        other = failed_login(client, "198.51.100.9")
    assert first == [401, 401, 401, 429]
    assert other == 401  # another client behind the proxy is not locked out


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    from vault.errors import ConfigError

    assert load_settings(trusted_proxies="10.0.0.1, 192.168.0.0/16").trusted_proxies == [
        "10.0.0.1/32",
        "192.168.0.0/16",
    ]
    with pytest.raises(ConfigError):
        load_settings(trusted_proxies="proxy.example")


# --- 2. slow headers and bodies -------------------------------------------------------------------


def test_trickled_headers_are_cut_off_with_408(limited: Served) -> None:
    head = http_request("GET", "/healthz", extra=b"X-Slow: " + b"s" * 200 + b"\r\n")
    with connect(limited) as sock:
        reply = trickle(sock, head, every=0.1, bound=10 * HEADER_TIMEOUT)
    assert_error(reply, 408, code="request_timeout")
    assert reply.headers.get("connection") == "close"


def test_idle_keep_alive_connection_gets_the_header_deadline_again(limited: Served) -> None:
    """The deadline is re-armed for the next request on a kept-alive connection."""
    with connect(limited) as sock:
        sock.sendall(http_request("GET", "/healthz"))
        assert read_reply(sock).status == 200
        head = http_request("GET", "/healthz", extra=b"X-Slow: " + b"s" * 200 + b"\r\n")
        reply = trickle(sock, head, every=0.1, bound=10 * HEADER_TIMEOUT)
    assert_error(reply, 408, code="request_timeout")


def test_trickled_json_body_is_cut_off_with_408(limited: Served) -> None:
    """A byte every 0.1 s never leaves the body idle for body_timeout_seconds, but averages
    under the minimum rate."""
    body = login_body()
    head = http_request(
        "POST", "/auth/login", content_type=b"application/json", content_length=len(body) * 20
    )
    with connect(limited) as sock:
        sock.sendall(head)
        reply = trickle(sock, body * 20, every=0.1, bound=10 * RATE_WINDOW)
        assert_error(reply, 408, code="request_timeout")
        assert reply.headers.get("connection") == "close"
        assert_closed(sock)


def test_trickled_upload_is_cut_off_with_408_and_stores_nothing(limited: Served) -> None:
    body = multipart(metadata_part(), file_part(b"x" * 4096))
    data = upload_request(limited, body)
    before = stored(limited.world)
    with connect(limited) as sock:
        sock.sendall(data[: len(data) - 4000])  # headers, metadata and a little of the file
        reply = trickle(sock, data[len(data) - 4000 :], every=0.1, bound=10 * RATE_WINDOW)
        assert_error(reply, 408, code="request_timeout")
        assert_closed(sock)
    assert_nothing_stored(limited.world, before)


def test_steady_slow_upload_above_the_minimum_rate_succeeds(limited: Served) -> None:
    """Slower than the network, longer than several rate windows, but above the minimum."""
    content = b"s" * 3000
    data = upload_request(limited, multipart(metadata_part(), file_part(content, b"slow.txt")))
    piece = 160  # every 0.1 s: 1600 B/s, eight times the minimum
    with connect(limited) as sock:
        for i in range(0, len(data), piece):
            sock.sendall(data[i : i + piece])
            time.sleep(0.1)
        reply = read_reply(sock)
    assert reply.status == 201, str(reply)
    assert reply.json()["package"]["size"] == len(content)


def test_many_slow_connections_do_not_keep_a_normal_request_waiting(limited: Served) -> None:
    """Twenty trickling clients (ten on headers, ten on a body) at once: a normal login and
    upload are answered meanwhile, and every trickler is cut off."""
    body = login_body()
    slow_body = http_request(
        "POST", "/auth/login", content_type=b"application/json", content_length=len(body) * 50
    )
    socks = [connect(limited) for _ in range(20)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" if i % 2 else slow_body + b"{")
        with httpx.Client(base_url=limited.url, timeout=TIMEOUT) as client:
            ok = client.post("/auth/login", json={"username": "uz.officer", "password": PASSWORD})
            assert ok.status_code == 200, ok.text
            up = client.post(
                "/packages",
                files=[
                    ("metadata", (None, json.dumps({"title": "normal"}), "application/json")),
                    ("file", ("normal.txt", b"normal", "text/plain")),
                ],
                headers=limited.auth(),
            )
            assert up.status_code == 201, up.text
        # Keep trickling until each is cut off (bounded), then read what each got.
        deadline = time.monotonic() + 10 * max(HEADER_TIMEOUT, RATE_WINDOW)
        open_socks = set(range(len(socks)))
        while open_socks and time.monotonic() < deadline:
            for i in list(open_socks):
                try:
                    socks[i].sendall(b"x" if i % 2 else b" ")
                except (ConnectionResetError, BrokenPipeError):
                    open_socks.discard(i)
                    continue
                socks[i].settimeout(0.001)
                with contextlib.suppress(TimeoutError, BlockingIOError):
                    socks[i].recv(1, socket.MSG_PEEK)  # returns once answered or closed
                    open_socks.discard(i)
            time.sleep(0.1)
        assert not open_socks, f"{len(open_socks)} trickling connections never cut off"
        for sock in socks:
            sock.settimeout(5)
            reply = read_reply(sock)
            assert reply.status in (408, None), str(reply)
    finally:
        for sock in socks:
            sock.close()


# --- 3. what metrics and logs count ---------------------------------------------------------------


def test_malformed_chunked_body_is_counted_and_logged_as_the_400_sent(
    limited: Served, json_log: io.StringIO
) -> None:
    head = (
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    before_400 = metric(limited, "/auth/login", "400")
    before_500 = metric(limited, "/auth/login", "500")
    with connect(limited) as sock:
        sock.sendall(head + b'5\r\n{"use\r\nnot-hex\r\n')
        reply = read_reply(sock)
    assert_error(reply, 400, code="invalid_input")
    assert wait_for_metric(limited, "/auth/login", "400", before_400 + 1) == before_400 + 1
    assert metric(limited, "/auth/login", "500") == before_500
    assert [x["status"] for x in access_lines(json_log, "/auth/login")] == [400]


@pytest.mark.parametrize("route", ["/auth/login", "/packages"])
def test_client_gone_mid_body_is_counted_and_logged_as_499(
    route: str, limited: Served, json_log: io.StringIO
) -> None:
    if route == "/packages":
        data = upload_request(limited, FULL)
        cut = len(data) // 2
    else:
        body = login_body()
        data = http_request("POST", route, content_type=b"application/json", body=body)
        cut = len(data) - len(body) // 2
    before = {status: metric(limited, route, status) for status in ("499", "500", "422")}
    with connect(limited) as sock:
        sock.sendall(data[:cut])
        time.sleep(0.2)  # the server has begun on the body
    assert wait_for_metric(limited, route, "499", before["499"] + 1) == before["499"] + 1
    statuses = [x["status"] for x in access_lines(json_log, route)]
    assert statuses == [499], statuses
    for status in ("500", "422"):
        assert metric(limited, route, status) == before[status], status


# --- 4. /metrics needs its token ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer wrong-token-0123456789abcdef", 401),
        (f"Bearer {METRICS_TOKEN}x", 401),
        (f"Basic {METRICS_TOKEN}", 401),
        (f"Bearer {METRICS_TOKEN}", 200),
    ],
    ids=["none", "wrong", "longer", "basic", "right"],
)
def test_metrics_need_the_metrics_token(
    authorization: str | None, status: int, limited: Served
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    reply = httpx.get(limited.url + "/metrics", headers=headers, timeout=TIMEOUT)
    assert reply.status_code == status, reply.text
    if status == 200:
        assert "vault_http_requests_total" in reply.text
    else:
        assert_error(reply, 401, code="authentication_failed")
        assert "vault_" not in reply.text


def test_made_up_methods_add_no_series_to_the_metrics(limited: Served) -> None:
    """The method is a label of every series: made up by anonymous clients, each one used to
    add series that stayed for the life of the process."""
    made_up = [f"X{i}{'Y' * 200}" for i in range(40)]
    for method in made_up:
        sock = connect(limited)
        with contextlib.closing(sock):
            sock.sendall(f"{method} /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.recv(4096)
    text = httpx.get(limited.url + "/metrics", headers=METRICS_AUTH, timeout=TIMEOUT).text
    assert not any(method in text for method in made_up)
    assert 'method="OTHER"' in text


def test_a_users_token_is_not_a_metrics_token(limited: Served) -> None:
    reply = httpx.get(limited.url + "/metrics", headers=limited.auth("uz.admin"), timeout=TIMEOUT)
    assert_error(reply, 401, code="authentication_failed")


def test_metrics_are_404_without_a_configured_token(tmp_path: Path) -> None:
    with serve(tmp_path, metrics_token=None) as s:
        for headers in ({}, {"Authorization": f"Bearer {METRICS_TOKEN}"}):
            reply = httpx.get(s.url + "/metrics", headers=headers, timeout=TIMEOUT)
            assert_error(reply, 404, code="not_found")


# --- 5. refusals by the HTTP server itself --------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["request-line", "header-line", "content-length", "nul-in-target"],
)
def test_unparsable_requests_get_the_json_error_shape(data: bytes, limited: Served) -> None:
    with connect(limited) as sock:
        sock.sendall(data)
        reply = read_reply(sock)
    assert_error(reply, 400, code="invalid_input")


def test_oversized_headers_in_pieces_get_431_in_the_json_shape(limited: Served) -> None:
    data = http_request("GET", "/healthz", extra=b"X-Big: " + b"b" * 64 * 1024 + b"\r\n")
    with connect(limited) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for i in range(0, len(data), 4096):
                sock.sendall(data[i : i + 4096])
                time.sleep(0.01)  # separate reads for the server, not one header block
        reply = read_reply(sock)
    assert_error(reply, 431, code="too_large")


def test_405_carries_allow(limited: Served) -> None:
    reply = httpx.delete(limited.url + "/healthz", timeout=TIMEOUT)
    assert_error(reply, 405)
    assert reply.headers.get("allow") == "GET"
    reply = httpx.put(limited.url + "/packages", timeout=TIMEOUT)
    assert_error(reply, 405)
    # Two routes on one path: Allow names both methods, not only the first route's.
    assert reply.headers.get("allow") == "GET, POST"


# --- 6. the schema is the contract ----------------------------------------------------------------


@pytest.mark.parametrize(
    "target", ["/packages?limit=5&q=x", "/healthz?verbose=1", "/ledger/verify?start=0"]
)
def test_query_parameters_the_schema_does_not_list_are_422(target: str, limited: Served) -> None:
    reply = httpx.get(limited.url + target, headers=limited.auth("uz.auditor"), timeout=TIMEOUT)
    body = assert_error(reply, 422, code="invalid_input")
    assert "x" not in body["error"]["message"].split()  # names are not echoed


def test_ledger_range_and_ids_are_in_the_schema(limited: Served) -> None:
    spec = httpx.get(limited.url + "/openapi.json", timeout=TIMEOUT).json()
    package = spec["paths"]["/packages/{package_id}"]["get"]["parameters"][0]["schema"]
    assert package["pattern"] == "^[0-9a-f]{32}$"
    explain = {p["name"]: p["schema"] for p in spec["paths"]["/authz/explain"]["get"]["parameters"]}
    assert explain["user"]["pattern"] == "^[a-z0-9][a-z0-9._-]{1,63}$"
    assert "download" in explain["action"]["pattern"]
    for status in ("400", "401", "404", "422"):
        assert status in spec["paths"]["/packages/{package_id}"]["get"]["responses"]
