"""A temporary file that holds text only sealed, under a key that never leaves memory.

The ledger export over HTTP is written in full first (inside one read transaction, which must
not wait on a slow client) and sent afterwards. A scoped export carries openings: who did what
to which package. Staging them in a plain temporary file would put them on disk in the clear,
however briefly (and an unlinked file's blocks stay on the disk after it). Here each chunk is
sealed (AES-256-GCM, crypto.seal_bytes) under a random key held only by this object, bound to
its position, so the file alone can be neither read nor reordered, and a cut-short file is
noticed. Memory stays at one chunk however long the text is.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterator
from types import TracebackType
from typing import IO, Self

from vault import crypto
from vault.errors import IntegrityError

__all__ = ["SealedSpool"]

_LENGTH = struct.Struct(">I")
_CONTEXT = b"blo-vault/spool/v1\x00"


class SealedSpool:
    """Write text (``write``), then read it back once as UTF-8 chunks (``chunks``)."""

    def __init__(self, *, chunk_size: int = 256 * 1024) -> None:
        self._key = crypto.new_data_key()
        self._file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._chunk_size = chunk_size
        self._pending: list[str] = []
        self._pending_size = 0
        self._written = 0  # sealed chunks in the file

    def write(self, text: str) -> int:
        """Buffer ``text``; whole chunks go to the file sealed."""
        self._pending.append(text)
        self._pending_size += len(text)
        if self._pending_size >= self._chunk_size:
            self._flush()
        return len(text)

    def _flush(self) -> None:
        if not self._pending:
            return
        plain = "".join(self._pending).encode("utf-8")
        self._pending, self._pending_size = [], 0
        sealed = crypto.seal_bytes(self._key, plain, context=self._context(self._written))
        self._file.write(_LENGTH.pack(len(sealed)) + sealed)
        self._written += 1

    def _context(self, index: int) -> bytes:
        return _CONTEXT + struct.pack(">Q", index)

    def chunks(self) -> Iterator[bytes]:
        """The text written, as UTF-8 chunks in order; IntegrityError if the file was altered,
        reordered or cut short. Closes the spool when done."""
        try:
            self._flush()
            self._file.seek(0)
            for index in range(self._written):
                head = self._file.read(_LENGTH.size)
                if len(head) != _LENGTH.size:
                    raise IntegrityError("the spooled export was cut short")
                sealed = self._file.read(_LENGTH.unpack(head)[0])
                yield crypto.open_bytes(self._key, sealed, context=self._context(index))
            if self._file.read(1):
                raise IntegrityError("the spooled export has trailing bytes")
        finally:
            self.close()

    def close(self) -> None:
        """Drop the file and forget the key."""
        self._file.close()
        self._key = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
