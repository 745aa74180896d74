"""The upload body pump (blo_vault.api.multipart): receiving ahead of the thread that seals,
within its bound, in order, and with errors surfacing as the API's errors.

The body is an async iterator of chunks, as Starlette's ``request.stream()`` gives it; the
consumer is the worker thread that :meth:`MultipartUpload.run` starts, as in the routes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator

import anyio
import pytest
from starlette.requests import ClientDisconnect

from blo_vault.api import multipart
from blo_vault.api.multipart import MultipartUpload
from vault.errors import InvalidInput, RequestTimeout

BOUNDARY = b"pump-test-boundary"
CHUNK = 256 * 1024


def body_bytes(files: list[tuple[str, bytes]]) -> bytes:
    parts = [
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="metadata"\r\n'
        b"Content-Type: application/json\r\n\r\n" + json.dumps({"title": "t"}).encode() + b"\r\n"
    ]
    for name, data in files:
        parts.append(
            b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="' + name.encode() + b'"\r\n\r\n' + data + b"\r\n"
        )
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


class Body:
    """Yields ``data`` in chunks; records how far it ran ahead of what the reader consumed."""

    def __init__(self, data: bytes, *, fail_at: int | None = None, stall_at: int | None = None):
        self.data = data
        self.fail_at = fail_at
        self.stall_at = stall_at
        self.sent = 0
        self.consumed = 0
        self.max_ahead = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), CHUNK):
            if self.fail_at is not None and start >= self.fail_at:
                raise ClientDisconnect()
            if self.stall_at is not None and start >= self.stall_at:
                await anyio.sleep(30)
            self.sent = start + CHUNK
            self.max_ahead = max(self.max_ahead, self.sent - self.consumed)
            yield self.data[start : start + CHUNK]


def run_upload(body: Body, *, slow: bool = False, timeout: float = 30.0) -> list[tuple[str, str]]:
    """Read every file part in a worker thread, as the upload route does; (name, sha256)s."""
    upload = MultipartUpload(
        body.__aiter__(), BOUNDARY, max_metadata_bytes=4096, timeout_seconds=timeout
    )

    def work() -> list[tuple[str, str]]:
        upload.metadata()
        seen = []
        for incoming in upload.files():
            digest = hashlib.sha256()
            while data := incoming.reader.read(1 << 20):
                digest.update(data)
                body.consumed += len(data)
                if slow:
                    time.sleep(0.002)  # a slow disk: the pump must wait, not buffer it all
            seen.append((incoming.name, digest.hexdigest()))
        return seen

    async def main() -> list[tuple[str, str]]:
        return await upload.run(work)

    return anyio.run(main)


def test_large_body_arrives_whole_in_order_and_within_the_bound() -> None:
    first, second = bytes(range(256)) * 40_000, b"\x07" * (30 * 1024 * 1024)
    body = Body(body_bytes([("a.bin", first), ("b.bin", second)]))
    result = run_upload(body, slow=True)
    assert result == [
        ("a.bin", hashlib.sha256(first).hexdigest()),
        ("b.bin", hashlib.sha256(second).hexdigest()),
    ]
    # The pump stops at its bound (8 MiB); the parser holds at most what it took in one go
    # (one bound's worth) beside it; the multipart framing adds a little.
    assert multipart._PUMP_BYTES <= 8 * 1024 * 1024
    assert body.max_ahead <= 17 * 1024 * 1024


def test_client_gone_mid_file_is_invalid_input_not_a_group() -> None:
    body = Body(body_bytes([("a.bin", b"x" * (12 * 1024 * 1024))]), fail_at=10 * 1024 * 1024)
    with pytest.raises(InvalidInput, match="went away"):
        run_upload(body)


def test_stalled_body_times_out_while_pumping() -> None:
    body = Body(body_bytes([("a.bin", b"x" * (4 * 1024 * 1024))]), stall_at=2 * 1024 * 1024)
    with pytest.raises(RequestTimeout):
        run_upload(body, timeout=0.5)


def test_truncated_body_is_refused() -> None:
    data = body_bytes([("a.bin", b"y" * (3 * 1024 * 1024))])
    with pytest.raises(InvalidInput, match="truncated"):
        run_upload(Body(data[: len(data) // 2]))


def part_reader(pieces: list[bytes]) -> multipart._PartReader:
    events = [("data", piece) for piece in pieces] + [("part_end", None)]
    return multipart._PartReader(iter(events).__next__)


@pytest.mark.parametrize("size", [1, 7, 100, 256, 1000, 4096])
def test_part_reader_gives_the_part_in_order_whatever_the_read_size(size: int) -> None:
    pieces = [bytes([i]) * n for i, n in enumerate([300, 1, 0, 2048, 77, 1024])]
    reader = part_reader(pieces)
    out = []
    while data := reader.read(size):
        assert len(data) <= size
        assert isinstance(data, bytes)
        out.append(data)
    assert b"".join(out) == b"".join(pieces)
    assert all(len(x) == size for x in out[:-1])  # short only at the end
    assert reader.read(size) == b""


def test_part_reader_reads_all_and_nothing() -> None:
    reader = part_reader([b"ab", b"cd", b"e"])
    assert reader.read(0) == b""
    assert reader.read(3) == b"abc"
    assert reader.read() == b"de"
    assert reader.read() == b""


def test_part_reader_hands_on_a_piece_of_the_asked_size_without_copying() -> None:
    piece = b"s" * 1024
    reader = part_reader([piece, piece])
    assert reader.read(1024) is piece


def test_part_reader_refuses_a_part_cut_by_another() -> None:
    reader = multipart._PartReader(iter([("data", b"x"), ("part", {})]).__next__)
    with pytest.raises(InvalidInput):
        reader.read(10)
