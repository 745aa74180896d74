"""The local store's reads leave a large object out of the page cache and a small one in it
(vault/storage/local.py, _DropBehindReader): a download is read once, front to back; and they
read the file in aligned blocks whatever sizes are asked for.

Which pages are cached is asked of the kernel itself (mincore(2) on a read-only mapping of the
object file), after the object was written and fsynced, so every page starts out cached.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from vault.storage.local import LocalDiskStore, _DropBehindReader

MiB = 1024 * 1024
PAGE = mmap.PAGESIZE

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def cached_bytes(path: Path) -> int:
    """How many bytes of ``path`` are in the page cache (mincore on a shared mapping; mapping
    a file reads none of it)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            pages = (size + PAGE - 1) // PAGE
            vector = ctypes.create_string_buffer(pages)
            if _libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return sum(byte & 1 for byte in vector.raw) * PAGE
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)


def put_object(tmp_path: Path, size: int) -> tuple[LocalDiskStore, str, Path]:
    """A stored object of ``size`` random bytes, and its file."""
    store = LocalDiskStore(root=tmp_path / "objects")
    key = "ab" * 16
    source = tmp_path / "source"
    source.write_bytes(os.urandom(size))
    with source.open("rb") as reader:
        store.put(key, reader)
    return store, key, store._path(key)


def stored(tmp_path: Path, size: int) -> tuple[LocalDiskStore, str, Path]:
    """As put_object, with the whole file in the page cache (or the test skipped)."""
    store, key, path = put_object(tmp_path, size)
    with path.open("rb") as warm:  # writing a large object drops it (LocalDiskStore.put)
        while warm.read(MiB):
            pass
    if cached_bytes(path) < size * 0.9:
        pytest.skip("the kernel does not keep this file in its page cache (memory pressure?)")
    return store, key, path


def read_through(store: LocalDiskStore, key: str, chunk: int) -> int:
    total = 0
    with store.open(key) as reader:
        while block := reader.read(chunk):
            total += len(block)
    return total


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this system")
def test_a_large_object_read_to_its_end_is_no_longer_cached(tmp_path: Path) -> None:
    size = 40 * MiB + 123
    store, key, path = stored(tmp_path, size)
    probe = tmp_path / "probe"
    probe.write_bytes(os.urandom(MiB))
    fd = os.open(probe, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    if cached_bytes(probe) > MiB // 2:
        pytest.skip("this filesystem keeps pages cached regardless of posix_fadvise (tmpfs)")
    # Segment-sized reads, as a download makes them (1 MiB and its tag).
    assert read_through(store, key, MiB + 16) == size
    # At most a few MiB the kernel had not yet let go of (pages still being read in).
    assert cached_bytes(path) < 8 * MiB


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this system")
def test_a_large_object_is_dropped_behind_while_it_is_read(tmp_path: Path) -> None:
    size = 40 * MiB
    store, key, path = stored(tmp_path, size)
    with store.open(key) as reader:
        for _ in range(24):
            assert len(reader.read(MiB)) == MiB
        # 24 MiB read: all of it dropped, the 16 MiB ahead untouched (kernel read-ahead
        # only adds to what is cached there).
        assert cached_bytes(path) <= 16 * MiB + 64 * PAGE


def test_a_small_object_stays_cached(tmp_path: Path) -> None:
    size = 3 * MiB
    store, key, path = stored(tmp_path, size)
    assert read_through(store, key, MiB + 16) == size
    assert cached_bytes(path) >= size * 0.9


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this system")
def test_a_refused_drop_fails_no_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The drop is advice: where the filesystem refuses it, the object still reads whole."""
    size = 20 * MiB + 5
    store, key, _ = stored(tmp_path, size)
    refused: list[int] = []

    def refuse(fd: int, offset: int, length: int, advice: int) -> None:
        refused.append(advice)
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    assert read_through(store, key, MiB + 16) == size
    assert refused  # the store did ask, and carried on


class RecordingFile:
    """The object file opened as the store opens it, recording every read made of it."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb", buffering=0)
        self.reads: list[tuple[int, int]] = []  # (offset, size asked)
        self.returned: list[bytes] = []

    def fileno(self) -> int:
        return self._file.fileno()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def read(self, size: int = -1, /) -> bytes:
        offset = self._file.tell()
        data = self._file.read(size)
        self.reads.append((offset, size))
        self.returned.append(data)
        return data

    def close(self) -> None:
        self._file.close()


def recorded(path: Path) -> tuple[_DropBehindReader, RecordingFile]:
    handle = RecordingFile(path)
    return _DropBehindReader(cast(BinaryIO, handle)), handle


@pytest.mark.parametrize(
    "sizes",
    [
        [16] + [MiB + 16] * 8,  # a sealed object's header, then its segments
        [1, 7, MiB, 3 * MiB, 5, MiB + 1, 2 * MiB],
        [0, MiB, 0, MiB - 1, 2],
        [-1],
    ],
)
def test_any_sizes_asked_read_the_file_in_aligned_blocks(tmp_path: Path, sizes: list[int]) -> None:
    """A segment is 16 bytes longer than a block and follows a 16-byte header: read as asked,
    every read of the file would start off a page boundary, which on the benchmark VMs made
    the kernel's copy eight times as costly. The bytes must come out the same either way."""
    size = 6 * MiB + 123
    _, _, path = put_object(tmp_path, size)
    expected = path.read_bytes()
    reader, handle = recorded(path)
    got: list[bytes] = []
    for n in sizes:
        got.append(reader.read(n))
    while rest := reader.read(MiB + 16):
        got.append(rest)
    reader.close()
    assert b"".join(got) == expected
    assert handle.closed
    # Every read that found data started on a block boundary (the one after the end did not).
    found = [
        offset for (offset, _), data in zip(handle.reads, handle.returned, strict=True) if data
    ]
    assert found == [n * MiB for n in range(7)]
    assert {asked for _, asked in handle.reads} == {MiB}


def test_a_block_asked_for_whole_is_handed_over_without_a_copy(tmp_path: Path) -> None:
    _, _, path = put_object(tmp_path, 3 * MiB)
    reader, handle = recorded(path)
    first = reader.read(MiB)
    assert first is handle.returned[0]
    # Partly handed out, the rest of a block is a copy; a whole block after it is not.
    assert len(reader.read(10)) == 10
    assert len(reader.read(MiB)) == MiB  # the rest of block 2, and 10 bytes of block 3
    rest = reader.read(2 * MiB)
    assert len(rest) == MiB - 10
    assert reader.read(MiB) == b""
    reader.close()
