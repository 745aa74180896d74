"""Object store on a local folder: temp file, fsync, rename; paths from opaque ids only."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from vault.errors import NotFound, StorageUnavailable
from vault.storage import check_key

__all__ = [
    "LocalDiskStore",
]

if TYPE_CHECKING:
    from vault.crypto import Readable

_COPY_CHUNK = 1024 * 1024
# Every this many bytes a write asks the kernel to start writing back what it has, so the disk
# works while the upload still arrives and the fsync at the end has little left to wait for.
_WRITEBACK_BYTES = 32 * _COPY_CHUNK


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
                        _start_writeback(out.fileno(), written_back, size)
                        written_back = size
                out.flush()
                os.fsync(out.fileno())
            final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(tmp_name, final)
            _fsync_dir(final.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return size

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        """Open the object file for reading."""
        try:
            handle = open(self._path(key), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NotFound("object not found") from None
        try:
            yield handle
        finally:
            handle.close()

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
            _fsync_dir(path.parent)

    def keys(self) -> Iterator[str]:
        """Walk the shard folders; temp files are not objects."""
        for first in sorted(self.root.iterdir()):
            if first.name == ".tmp" or not first.is_dir():
                continue
            for second in sorted(first.iterdir()):
                for path in sorted(second.iterdir()):
                    yield path.name

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


def _start_writeback(fd: int, start: int, end: int) -> None:
    """Start writing ``[start, end)`` of ``fd`` to disk without waiting for it.

    ``POSIX_FADV_DONTNEED`` starts writeback of the dirty pages (and drops clean ones from the
    page cache: a large object is rarely read back soon); it promises nothing, the fsync does.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
