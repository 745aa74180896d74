"""``blovault witness serve`` under half-sent requests: a real witness process on 127.0.0.1.

The process runs with a low open file limit (256; the reviewer's reproducer used 64), and short
deadlines (set through the environment, as an operator would), so that without the server's
limits the idle connections below take every descriptor and the log's request fails.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.servers import BLOVAULT, Served, wait_healthy
from tests.witness_log import LogOperator, add_body, tree_of
from vault.ledger.note import parse_note
from vault.witness.core import init_witness

FD_LIMIT = 256
DEADLINE_S = 2
# Three other loopback addresses, each opening more connections than the witness allows one
# address: together more than the whole file limit.
ATTACKERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PER_ATTACKER = 100
HALF_HEADERS = b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\n"
HALF_BODY = b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nContent-Length: 1000\r\n\r\nold"


def _lower_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[tuple[Served, LogOperator]]:
    """A witness served with FD_LIMIT descriptors and DEADLINE_S header and body deadlines."""
    log = LogOperator()
    directory = tmp_path / "kz-witness"
    init_witness(directory, name="witness.kz.example/blo", log_vkeys=[log.vkey])
    port = free_port()
    env = {
        **os.environ,
        "VAULT_WITNESS_HEADER_TIMEOUT_SECONDS": str(DEADLINE_S),
        "VAULT_WITNESS_BODY_TIMEOUT_SECONDS": str(DEADLINE_S),
    }
    log_file = tmp_path / "witness.log"
    with log_file.open("wb") as out:
        process = subprocess.Popen(
            [str(BLOVAULT), "witness", "serve", "--dir", str(directory),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=tmp_path, preexec_fn=_lower_fd_limit,
        )  # fmt: skip
    served = Served(f"http://127.0.0.1:{port}", process, log_file)
    try:
        wait_healthy(served, "witness")
        yield served, log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _half_sent(port: int, source: str, data: bytes) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    conn.sendall(data)
    return conn


def _until_closed(conn: socket.socket) -> bytes:
    """Everything the witness sends before it closes ``conn``; fails if it keeps it open."""
    conn.settimeout(30)  # far past the deadline: only a witness that never closes reaches it
    received = b""
    try:
        while chunk := conn.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass  # refused at once, before its request was read: the reset may beat the 503
    except TimeoutError:
        pytest.fail(f"a half-sent request is still open long after the deadline: {received!r}")
    finally:
        conn.close()
    return received


def _status(reply: bytes) -> int | None:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None


def test_half_sent_requests_neither_starve_the_log_nor_linger(
    witness: tuple[Served, LogOperator],
) -> None:
    served, log = witness
    port = int(served.url.rsplit(":", 1)[1])
    held = [
        (kind, _half_sent(port, source, data))
        for source in ATTACKERS
        for i in range(PER_ATTACKER)
        for kind, data in [("headers", HALF_HEADERS) if i % 2 else ("body", HALF_BODY)]
    ]

    # The log's request, from its own address, while those are open (or being refused).
    tree = tree_of(20)
    body = log.body(0, tree, 10)
    reply = httpx.post(served.url + "/add-checkpoint", content=body, timeout=30)
    assert reply.status_code == 200, reply.text
    text = parse_note(body.decode().split("\n\n", 1)[1]).text
    assert len(parse_note(text + "\n" + reply.text).signatures) == 1

    # Every half-sent request is closed: past the per-address cap at once (503 or a reset),
    # the others answered 408 when their headers or body missed the deadline.
    statuses: dict[str, list[int | None]] = {"headers": [], "body": []}
    for kind, conn in held:
        statuses[kind].append(_status(_until_closed(conn)))
    for kind, seen in statuses.items():
        assert set(seen) <= {408, 503, None}, (kind, seen)
        assert 408 in seen, (kind, seen)  # some were held, and dropped at the deadline

    after = add_body(10, tree.proof(10, 20), log.signed(tree))
    reply = httpx.post(served.url + "/add-checkpoint", content=after, timeout=30)
    assert reply.status_code == 200, reply.text
    assert "Too many open files" not in served.log.read_text(errors="replace")
