"""How a download becomes an HTTP answer (api/downloads.py): a file of one segment is read,
opened and checked whole before the answer starts, and answered in one piece; a longer one is
streamed. Both close what they opened."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Generator, Iterator

import anyio
import httpx
import pytest
from fastapi.responses import Response, StreamingResponse
from sqlmodel import Session

from blo_vault.api.downloads import download_response
from tests.conftest import PASSWORD, World, open_files_under, running_server
from vault import crypto
from vault.errors import IntegrityError
from vault.models import PackageFile
from vault.schemas import FileInfo, NewPackage
from vault.service import Download, IncomingFile
from vault.storage.local import LocalDiskStore

MiB = 1024 * 1024


def download_of(world: World, content: bytes) -> Download:
    officer = world["uz.officer"]
    package = world.vault.upload(
        officer, NewPackage(title="answer"), [IncomingFile("a.bin", io.BytesIO(content))]
    ).package
    return world.vault.download(officer, package.id, package.files[0].id)


def body_of(response: StreamingResponse) -> bytes:
    async def collect() -> bytes:
        chunks = [chunk async for chunk in response.body_iterator]
        return b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)

    return anyio.run(collect)


@pytest.mark.parametrize("size", [0, 1, 64 * 1024, crypto.SEGMENT_SIZE - 1])
def test_a_file_of_one_segment_is_answered_whole(world: World, size: int) -> None:
    content = os.urandom(size)
    store = world.vault.store
    assert isinstance(store, LocalDiskStore)
    download = download_of(world, content)
    threads_before = threading.active_count()

    response = download_response(download)

    assert type(response) is Response
    assert response.body == content
    assert response.headers["Content-Length"] == str(size)
    assert response.headers["X-Content-SHA256"] == download.file.sha256
    # Read without a second thread, and the object already closed: nothing left to clean up.
    assert threading.active_count() == threads_before
    assert open_files_under(store.root) == []


def test_a_longer_file_is_streamed_and_closed(world: World) -> None:
    content = os.urandom(2 * crypto.SEGMENT_SIZE + 5)
    store = world.vault.store
    assert isinstance(store, LocalDiskStore)
    download = download_of(world, content)
    threads_before = set(threading.enumerate())
    response = download_response(download)

    assert isinstance(response, StreamingResponse)
    assert len(open_files_under(store.root)) == 1  # still reading
    assert body_of(response) == content
    assert open_files_under(store.root) == []
    # Every thread the answer started has ended. A worker thread of body_of's event loop may
    # still be on its way out when anyio.run returns (seen once in CI's PostgreSQL pass), so
    # each is given a moment to end; one that never ends still fails the test.
    started = set(threading.enumerate()) - threads_before
    for thread in started:
        thread.join(timeout=5)
    assert [thread.name for thread in started if thread.is_alive()] == []


def failing_at_the_end(data: bytes, closed: list[bool]) -> Generator[bytes, None, None]:
    """Chunks whose final check fails after the data, as a size mismatch does."""
    try:
        yield data
        raise IntegrityError("downloaded content does not match its recorded size")
    finally:
        closed.append(True)


def test_a_failed_final_check_of_one_segment_comes_before_any_answer() -> None:
    """Such a file used to be answered 200 and then cut off; now the caller gets the error
    before a status or header is sent, and the route answers it with an error status."""
    closed: list[bool] = []
    info = FileInfo(id="f" * 32, name="a.bin", size=4, sha256="0" * 64)
    download = Download(
        file=info,
        package_id="p" * 32,
        handling="H1",
        receipt=1,
        chunks=failing_at_the_end(b"data", closed),
    )
    with pytest.raises(IntegrityError, match="size"):
        download_response(download)
    assert closed == [True]


def test_the_stream_still_cuts_off_on_a_late_failure() -> None:
    """After the answer has started, a failure can only cut the connection (the body raises)."""

    def chunks() -> Iterator[bytes]:
        yield b"one"
        yield b"two"
        raise IntegrityError("sealed object failed authentication")

    generator: Generator[bytes, None, None] = (chunk for chunk in chunks())
    info = FileInfo(id="f" * 32, name="a.bin", size=9, sha256="0" * 64)
    download = Download(file=info, package_id="p" * 32, handling="H1", receipt=1, chunks=generator)
    response = download_response(download)
    assert isinstance(response, StreamingResponse)
    with pytest.raises(Exception, match="integrity_error"):
        body_of(response)


def _drain(chunks: Iterator[bytes], into: bytearray) -> None:
    for chunk in chunks:
        into += chunk


def _with_recorded_size(world: World, file_id: str, size: int) -> None:
    """What someone able to write the database, holding no key, can do to a file's size."""
    with Session(world.vault.engine) as session:
        row = session.get(PackageFile, file_id)
        assert row is not None
        row.size = size
        session.add(row)
        session.commit()


@pytest.mark.parametrize("segments", [1, 2], ids=["one-segment-short", "two-segments-short"])
def test_a_size_edited_short_never_completes_the_answer(world: World, segments: int) -> None:
    """The recorded size cut to a segment boundary: the declared length is never reached, so
    no client can take a prefix of the file for the whole of it, and the failure is recorded.
    (Held back only at the end, the bytes up to the declared length were all sent first.)"""
    content = os.urandom(3 * crypto.SEGMENT_SIZE + 1000)
    officer = world["uz.officer"]
    package = world.vault.upload(
        officer, NewPackage(title="cut"), [IncomingFile("a.bin", io.BytesIO(content))]
    ).package
    file_id = package.files[0].id
    declared = segments * crypto.SEGMENT_SIZE
    _with_recorded_size(world, file_id, declared)
    download = world.vault.download(officer, package.id, file_id)
    assert download.file.size == declared
    received = bytearray()
    with pytest.raises(IntegrityError, match="recorded size"):
        _drain(download.chunks, received)
    assert len(received) < declared
    with running_server(world.vault) as url:
        token = world.vault.login("uz.officer", PASSWORD).access_token
        headers = {"Authorization": f"Bearer {token}"}
        with (
            httpx.Client(base_url=url, headers=headers) as client,
            client.stream("GET", f"/packages/{package.id}/files/{file_id}") as response,
        ):
            try:
                body: bytes | None = response.read()
            except httpx.TransportError:
                body = None  # cut off before the declared length: the client knows
    if body is not None:  # a whole answer: then it must be the error, not the file
        assert response.status_code != 200
        assert response.json()["error"]["code"] == "integrity_error"
    reasons = [
        (e.decision, e.reason) for e in world.vault.unscoped_entries() if e.action == "download"
    ]
    assert reasons.count(("error", "integrity_error")) == 2, reasons


def test_a_size_edited_long_never_completes_the_answer(world: World) -> None:
    """And recorded larger than the file: the stream ends short of it and says so (an
    answer then ends short of its Content-Length, which every client notices)."""
    content = os.urandom(2 * crypto.SEGMENT_SIZE)
    officer = world["uz.officer"]
    package = world.vault.upload(
        officer, NewPackage(title="long"), [IncomingFile("a.bin", io.BytesIO(content))]
    ).package
    _with_recorded_size(world, package.files[0].id, len(content) + 1)
    download = world.vault.download(officer, package.id, package.files[0].id)
    received = bytearray()
    with pytest.raises(IntegrityError, match="recorded size"):
        _drain(download.chunks, received)
    assert len(received) < download.file.size
