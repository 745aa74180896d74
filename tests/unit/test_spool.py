"""vault.spool.SealedSpool: what a scoped export is staged in before it is sent."""

from __future__ import annotations

import os

import pytest

from vault.errors import IntegrityError
from vault.spool import SealedSpool

SECRET = "uz.officer released 0123456789abcdef to KZ-BORDER"


def _filled(chunk_size: int = 64) -> tuple[SealedSpool, str]:
    spool = SealedSpool(chunk_size=chunk_size)
    text = "".join(f"{i}: {SECRET} — «ёжик»\n" for i in range(50))
    for line in text.splitlines(keepends=True):
        spool.write(line)
    return spool, text


def _file_bytes(spool: SealedSpool) -> bytes:
    spool._flush()
    return os.pread(spool._file.fileno(), 1 << 20, 0)


def test_reads_back_what_was_written_in_order() -> None:
    spool, text = _filled()
    assert b"".join(spool.chunks()).decode("utf-8") == text
    assert spool._file.closed


def test_nothing_written_reaches_the_file_in_the_clear() -> None:
    spool, _ = _filled()
    on_disk = _file_bytes(spool)
    assert len(on_disk) > 50 * len(SECRET)
    for needle in (SECRET, "uz.officer", "0123456789abcdef", "KZ-BORDER", "ёжик"):
        assert needle.encode() not in on_disk
    spool.close()


def test_an_altered_file_is_refused() -> None:
    spool, _ = _filled()
    on_disk = bytearray(_file_bytes(spool))
    on_disk[40] ^= 1
    os.pwrite(spool._file.fileno(), bytes(on_disk), 0)
    with pytest.raises(IntegrityError):
        b"".join(spool.chunks())


def test_a_file_cut_short_or_with_chunks_swapped_is_refused() -> None:
    spool, _ = _filled()
    on_disk = _file_bytes(spool)
    first = 4 + int.from_bytes(on_disk[:4], "big")
    second = first + 4 + int.from_bytes(on_disk[first : first + 4], "big")
    swapped = on_disk[first:second] + on_disk[:first] + on_disk[second:]
    os.pwrite(spool._file.fileno(), swapped, 0)
    with pytest.raises(IntegrityError):
        b"".join(spool.chunks())

    spool, _ = _filled()
    on_disk = _file_bytes(spool)
    spool._file.truncate(len(on_disk) - 10)
    with pytest.raises(IntegrityError):
        b"".join(spool.chunks())
