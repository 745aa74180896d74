"""Object store on a local folder: temp file, fsync, rename; paths from opaque ids only."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from vault.errors import InvalidInput, NotFound, StorageUnavailable
from vault.storage import ObjectReader, check_key

__all__ = [
    "LocalDiskStore",
    "fsync_dir",
]

if TYPE_CHECKING:
    from vault.crypto import Readable

_COPY_CHUNK = 1024 * 1024
# Every this many bytes a write asks the kernel to start writing back what it has, so the disk
# works while the upload still arrives and the fsync at the end has little left to wait for.
_WRITEBACK_BYTES = 32 * _COPY_CHUNK


# A download reads its object once, front to back: in the page cache it would only push out
# what the server does read again (put drops what it writes for the same reason). Past this
# many bytes a reader lets go of what it has read (posix_fadvise DONTNEED), every as many
# bytes again, and of the rest when it is closed. The kernel then reuses those pages for the next
# ones instead of taking fresh pages for the whole object, which on a VM whose free memory the
# host takes back (a balloon) cost a fault in the host each: there a cold read of 512 MiB took
# 0.35-0.41 s every time instead of 0.33-1.4 s (BENCHMARKS.md, issue 14). Smaller objects, the
# documents and photos read again, stay cached.
_DROP_BEHIND_BYTES = 8 * _COPY_CHUNK
_EMPTY = memoryview(b"")


class _DropBehindReader:
    """A file read front to back in whole aligned blocks, that drops what it has read from the
    page cache every ``_DROP_BEHIND_BYTES``, and the whole file when closed after that many
    (so an object smaller than that is left cached).

    The file is only ever read in blocks of ``_COPY_CHUNK`` at offsets that are multiples of it,
    whatever sizes the caller asks for: a sealed object's segments are 16 bytes longer than a
    block and follow a 16-byte header, so reading them as asked puts every read at an offset
    that is not a multiple of the page size, and on the VMs the benchmarks run on the kernel's
    copy out of the page cache then cost eight times the CPU (a 512 MiB object: 0.20-0.25 s
    instead of 0.025 s; BENCHMARKS.md, issue 14). A request that spans two blocks is joined
    from them, one copy in user space; one that matches a whole block gets it without a copy.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._fd = handle.fileno()
        self._block = _EMPTY  # what is left of the last block read
        self._read = 0  # bytes read from the file
        self._dropped = 0

    def _fill(self) -> None:
        # A regular file reads short only at its end; a short read anywhere else would only
        # misalign the blocks after it, which costs time and nothing else.
        data = self._handle.read(_COPY_CHUNK)
        self._read += len(data)
        if self._read - self._dropped >= _DROP_BEHIND_BYTES:
            _dont_need(self._fd, self._dropped, self._read - self._dropped)
            self._dropped = self._read
        self._block = memoryview(data)

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (the rest of the file if negative); fewer only at its end, or
        when a block none of which was handed out yet is asked for whole or more."""
        if size < 0:
            return b"".join(iter(lambda: self.read(_COPY_CHUNK), b""))
        if not self._block:
            self._fill()
        block = self._block
        if size >= len(block) and len(block) == len(cast(bytes, block.obj)):
            self._block = _EMPTY
            return cast(bytes, block.obj)
        parts: list[memoryview] = []
        while size > 0 and self._block:
            part = self._block[:size]
            self._block = self._block[len(part) :]
            parts.append(part)
            size -= len(part)
            if size and not self._block:
                self._fill()
        return b"".join(parts)

    def close(self) -> None:
        self._block = _EMPTY
        if self._read >= _DROP_BEHIND_BYTES and not self._handle.closed:
            # The tail since the last drop, and what the kernel read ahead (0: to the end).
            _dont_need(self._fd, self._dropped, 0)
        self._handle.close()


class LocalDiskStore:
    """Objects as files under ``root/ab/cd/<key>``; writes are atomic and durable."""

    def __init__(self, *, root: Path) -> None:
        self.root = root.resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StorageUnavailable(f"object folder unusable: {exc.strerror}") from None
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(exist_ok=True, mode=0o700)

    def _path(self, key: str) -> Path:
        check_key(key)
        path = (self.root / key[:2] / key[2:4] / key).resolve()
        # Defence in depth: even a valid id must land inside the root (a symlinked shard
        # folder pointing elsewhere is refused).
        if os.path.commonpath([self.root, path]) != str(self.root):
            raise StorageUnavailable("object path escapes the store")
        return path

    def put(self, key: str, source: Readable) -> int:
        """Write to a temp file, fsync it, rename into place, fsync the folder."""
        final = self._path(key)
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as out:
                written_back = 0
                while chunk := source.read(_COPY_CHUNK):
                    out.write(chunk)
                    size += len(chunk)
                    if size - written_back >= _WRITEBACK_BYTES:
                        out.flush()
                        # Starts writeback of the dirty pages, and drops clean ones: a
                        # large object is rarely read back soon. The fsync promises.
                        _dont_need(out.fileno(), written_back, size - written_back)
                        written_back = size
                out.flush()
                os.fsync(out.fileno())
            if not final.parent.is_dir():
                _make_shard_folders(final.parent)
            os.replace(tmp_name, final)
            fsync_dir(final.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return size

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[ObjectReader]:
        """Open the object file for reading (front to back: see _DropBehindReader)."""
        try:
            handle = open(self._path(key), "rb", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NotFound("object not found") from None
        reader = _DropBehindReader(handle)
        try:
            yield reader
        finally:
            reader.close()

    def size(self, key: str) -> int:
        """Size of the object file."""
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise NotFound("object not found") from None

    def delete(self, key: str) -> None:
        """Unlink the object file if present."""
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            fsync_dir(path.parent)

    def keys(self) -> Iterator[str]:
        """Walk the shard folders for object files; anything else found there is skipped."""
        # Listed is only what put could have written: a regular file named by an id, in the
        # shard folders that id names (where _path looks for it). A shared folder collects
        # other things (an NFS client's .nfsXXXX files, an editor's or a backup tool's
        # leftovers, a subfolder), and gc, which stats every key listed and deletes the strays,
        # must neither stop at them nor delete them: like MinioStore.keys, skip them. Symlinks
        # are skipped, not followed: _path resolves them, so gc would stat, and delete, the
        # file a symlink points at (or be refused, when it points outside the root).
        for first in _entries(self.root):
            if first.name == ".tmp" or not first.is_dir(follow_symlinks=False):
                continue
            for second in _entries(first.path):
                if not second.is_dir(follow_symlinks=False):
                    continue
                for entry in _entries(second.path):
                    name = entry.name
                    if (
                        _is_key(name)
                        and (name[:2], name[2:4]) == (first.name, second.name)
                        and entry.is_file(follow_symlinks=False)
                    ):
                        yield name

    def stray_temp_files(self) -> list[Path]:
        """Temp files left by writes that were killed mid-way."""
        return sorted(self._tmp.iterdir())

    def modified(self, key: str) -> datetime:
        """Modification time of the object file."""
        try:
            return datetime.fromtimestamp(self._path(key).stat().st_mtime, tz=UTC)
        except FileNotFoundError:
            raise NotFound("object not found") from None

    def sweep_incomplete(self, older_than: datetime) -> int:
        """Delete temp files of writes that died (a killed process leaves them behind)."""
        removed = 0
        for path in self.stray_temp_files():
            with contextlib.suppress(FileNotFoundError):
                if datetime.fromtimestamp(path.stat().st_mtime, tz=UTC) < older_than:
                    path.unlink()
                    removed += 1
        return removed

    def check(self) -> None:
        """The folder must exist and be writable."""
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable("object folder is not writable")


def _dont_need(fd: int, offset: int, length: int) -> None:
    """``posix_fadvise(DONTNEED)`` on ``length`` bytes of ``fd`` from ``offset`` (0: to the
    end): dirty pages start being written back, clean ones leave the page cache. Only advice:
    a filesystem (or a platform) that refuses it fails no transfer."""
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _is_key(name: str) -> bool:
    try:
        check_key(name)
    except InvalidInput:
        return False
    return True


def _entries(folder: str | Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` by name (not followed: callers ask about symlinks)."""
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def _make_shard_folders(folder: Path) -> None:
    """Create ``folder`` (``root/ab/cd``) and its parent if missing, and fsync the parent of
    each one that was missing."""
    # A new folder is an entry in its parent, durable only once the parent is fsynced: without
    # that, a crash after put returned could lose the folder and the object renamed into it.
    # A put that finds a folder missing but loses the race to create it fsyncs the parent too,
    # so that it does not return before the folder is durable. Folders already there (nearly
    # every put) cost no fsync; put's caller checks for that first.
    for level in (folder.parent, folder):
        if level.is_dir():
            continue
        with contextlib.suppress(FileExistsError):
            level.mkdir(mode=0o700)
        fsync_dir(level.parent)


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (files created, renamed or removed) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
