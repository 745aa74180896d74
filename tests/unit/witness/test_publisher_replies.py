"""The publisher's client against witnesses that answer too much or too slowly (127.0.0.1).

Each fake witness is a raw socket server, so it can do what no well-behaved HTTP server does
(trickle the status line's headers, stream without end) and count what it managed to send.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.witness_log import LogOperator, Tree
from vault.ledger.note import parse_note
from vault.witness.cosignature import Cosigner
from vault.witness.policy import parse_policy
from vault.witness.publisher import MAX_REPLY_BYTES, BadReply, Publisher, http_post

Handler = Callable[[socket.socket], None]
MIB = 1 << 20
TOTAL = 64 * MIB  # what the endless witness offers; without the cap the client reads it all
TRICKLE_FOR_S = 20.0  # a trickling witness gives up after this: the deadlines tested are 0.5 s


@contextlib.contextmanager
def raw_witness(handler: Handler) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 (one thread per connection, after the request is read);
    its URL. Every thread is finished on exit."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            _read_request(conn)
            with contextlib.suppress(OSError):  # the client hung up: that is the point
                handler(conn)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=serve, args=(conn,))
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        acceptor.join()
        for thread in threads:
            thread.join(timeout=TRICKLE_FOR_S + 10)
        listener.close()


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += conn.recv(65536)


def _trickle(conn: socket.socket, data: bytes) -> None:
    """``data`` one byte every 0.05 s, for at most TRICKLE_FOR_S."""
    end = time.monotonic() + TRICKLE_FOR_S
    for byte in data:
        if time.monotonic() > end:
            return
        conn.sendall(bytes([byte]))
        time.sleep(0.05)


def test_an_endless_reply_is_cut_off_at_the_cap() -> None:
    sent = 0

    def endless(conn: socket.socket) -> None:
        nonlocal sent
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")  # until close
        chunk = b"x" * MIB
        while sent < TOTAL:
            conn.sendall(chunk)
            sent += len(chunk)

    with (
        raw_witness(endless) as url,
        pytest.raises(BadReply, match=f"longer than {MAX_REPLY_BYTES} bytes"),
    ):
        http_post(10.0)(url + "/add-checkpoint", b"old 0\n\n")
    # The client stopped reading at the cap: the witness got out no more than its socket
    # buffers took, far from what it offered.
    assert sent < TOTAL // 4


@pytest.mark.parametrize(
    "head",
    [
        b"content-length: 1073741824\r\n",  # declared: refused before reading
        b"transfer-encoding: chunked\r\ncontent-encoding: gzip\r\n",  # would inflate
    ],
)
def test_a_reply_too_long_or_compressed_is_refused_unread(head: bytes) -> None:
    def reply(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n")
        conn.sendall(b"x" * 1024)

    with raw_witness(reply) as url, pytest.raises(BadReply):
        http_post(10.0)(url + "/add-checkpoint", b"old 0\n\n")


def _trickled_body(conn: socket.socket) -> None:
    # headers sent, then a body that never ends, a byte at a time
    conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    _trickle(conn, b"x" * 10_000)


def _trickled_headers(conn: socket.socket) -> None:
    # the headers themselves trickled: httpx's read timeout never fires
    _trickle(conn, b"HTTP/1.1 200 OK\r\nx-slow: " + b"a" * 10_000)


@pytest.mark.parametrize("send", [_trickled_body, _trickled_headers], ids=["body", "headers"])
def test_a_trickled_reply_ends_at_the_deadline(send: Handler) -> None:
    with raw_witness(send) as url, pytest.raises(BadReply, match=r"no whole reply within 0\.5 s"):
        http_post(0.5)(url + "/add-checkpoint", b"old 0\n\n")


def test_the_deadline_comes_from_the_client_given() -> None:
    with (
        raw_witness(_trickled_headers) as url,
        httpx.Client(timeout=0.5) as client,
        pytest.raises(BadReply, match=r"within 0\.5 s"),
    ):
        http_post(client=client)(url + "/add-checkpoint", b"old 0\n\n")


class _Source:
    def __init__(self, log: LogOperator, tree: Tree) -> None:
        self.log, self.tree = log, tree

    def latest_checkpoint(self) -> str:
        return self.log.signed(self.tree)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return self.tree.proof(old_size, new_size)


def test_a_witness_with_an_endless_reply_fails_its_round() -> None:
    def endless(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
        for _ in range(TOTAL // MIB):
            conn.sendall(b"x" * MIB)

    log = LogOperator()
    witness = Cosigner.generate("witness.kz.example/blo")
    with raw_witness(endless) as url:
        policy = parse_policy(
            f"log {log.vkey}\nwitness KZ {witness.vkey()} {url}\n"
            "group countries 1 KZ\nquorum countries\n"
        )
        tree = Tree([b"a", b"b", b"c"])
        publisher = Publisher(policy=policy, source=_Source(log, tree), post=http_post(10.0))
        assert publisher.publish_once() is None
    (lag,) = publisher.lag()
    assert lag.error == f"bad reply: reply longer than {MAX_REPLY_BYTES} bytes"
    assert lag.size == 0


def test_a_witness_claiming_a_larger_tree_is_flagged_and_asked_again() -> None:
    """A 409 naming a size above the log's (a rollback, a split view, or a lie) fails that
    witness's round, and is not taken as its size: the next round asks it again, from the
    size it really cosigned, and once it answers for the log's tree it counts again."""
    log = LogOperator()
    witness = Cosigner.generate("witness.kz.example/blo")
    tree = Tree([b"a", b"b", b"c"])
    asked: list[bytes] = []
    claims = ["1000", "1000"]

    def post(url: str, body: bytes) -> tuple[int, str, str]:
        asked.append(body)
        if claims:
            return 409, "text/x.tlog.size", claims.pop(0) + "\n"
        text = parse_note(body.decode().split("\n\n", 1)[1]).text
        return 200, "text/plain", witness.cosign(text, int(time.time())).line()

    policy = parse_policy(
        f"log {log.vkey}\nwitness KZ {witness.vkey()} http://witness.kz.invalid\n"
        "group countries 1 KZ\nquorum countries\n"
    )
    publisher = Publisher(policy=policy, source=_Source(log, tree), post=post)
    for round_ in (1, 2):
        assert publisher.publish_once() is None
        assert len(asked) == round_
        (lag,) = publisher.lag()
        assert lag.error == "witness is ahead, at size 1000 (log size 3)"
        assert (lag.size, lag.cosigned_at) == (0, None)
    assert all(body.startswith(b"old 0\n") for body in asked)
    assert publisher.publish_once() is not None
    (lag,) = publisher.lag()
    assert (lag.size, lag.error) == (3, None)
