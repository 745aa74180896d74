"""The server's receive path for request bodies (blo_vault.api.server): reading from the socket
pauses only when more than BODY_HIGH_WATER bytes of body wait for the app, and once a large
body arrives a read takes up to RECV_BYTES. Driven through VaultH11Protocol itself with an
in-memory transport."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from blo_vault.api.server import BODY_HIGH_WATER, RECV_BYTES, VaultH11Protocol, server_options
from vault.config import load_settings

MiB = 1024 * 1024


class Transport(asyncio.Transport):
    """What the protocol uses of asyncio's socket transport, recorded."""

    max_size = 256 * 1024  # asyncio's own read size

    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return self.closed

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True


def run_with_body(tmp_path: Path, pieces: list[int], *, app_reads: int) -> dict[str, Any]:
    """Send a POST's headers, then body pieces of these sizes, to an app that takes
    ``app_reads`` messages and then stops reading; what the transport and the app saw."""
    total = sum(pieces) + 1  # one byte more than sent: the body is never complete
    received: list[int] = []
    stop = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for _ in range(app_reads):
            received.append(len((await receive())["body"]))
        await stop.wait()

    async def main() -> dict[str, Any]:
        options = server_options(load_settings(data_dir=tmp_path / "data"))
        config = uvicorn.Config(app, lifespan="off", log_config=None, **options)
        config.load()  # as uvicorn's server does before it makes protocols
        protocol = options["http"](config=config, server_state=ServerState(), app_state={})
        assert isinstance(protocol, VaultH11Protocol)  # what `blovault serve` runs
        transport = Transport()
        protocol.connection_made(transport)
        head = b"POST /packages HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total
        protocol.data_received(head)
        reading = []
        for size in pieces:
            protocol.data_received(b"x" * size)
            for _ in range(5):
                await asyncio.sleep(0)  # let the app take what it will
            reading.append(transport.reading)
        stop.set()
        await asyncio.sleep(0)
        protocol.connection_lost(None)
        return {"reading": reading, "received": received, "max_size": transport.max_size}

    return asyncio.run(main())


def test_a_body_is_read_ahead_of_the_app_up_to_the_high_water_mark(tmp_path: Path) -> None:
    """1 MiB waiting for an app that is not reading yet: uvicorn's 64 KiB limit would have
    paused the socket; the vault's keeps reading until BODY_HIGH_WATER is passed."""
    half = BODY_HIGH_WATER // 2
    assert half >= MiB
    seen = run_with_body(tmp_path, [half, half // 2, half], app_reads=0)
    assert seen["reading"] == [True, True, False]


def test_an_app_that_takes_the_body_keeps_the_socket_read(tmp_path: Path) -> None:
    half = BODY_HIGH_WATER // 2
    seen = run_with_body(tmp_path, [half] * 6, app_reads=6)
    assert seen["reading"] == [True] * 6
    assert seen["received"] == [half] * 6


def test_an_app_that_stops_reading_stops_the_socket(tmp_path: Path) -> None:
    """Memory stays bounded: once the app stops taking the body, at most BODY_HIGH_WATER and
    one more read wait before reading pauses."""
    half = BODY_HIGH_WATER // 2
    seen = run_with_body(tmp_path, [half] * 6, app_reads=2)
    assert seen["received"] == [half, half]
    assert seen["reading"] == [True, True, True, True, False, False]


def test_a_large_body_is_read_in_pieces_of_recv_bytes(tmp_path: Path) -> None:
    assert run_with_body(tmp_path, [MiB], app_reads=1)["max_size"] == RECV_BYTES


def test_small_requests_keep_asyncios_read_size(tmp_path: Path) -> None:
    assert run_with_body(tmp_path, [10, 60_000], app_reads=2)["max_size"] == Transport.max_size
