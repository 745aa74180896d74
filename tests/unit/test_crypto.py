"""The STREAM recipe, key wrapping and small records of vault.crypto, with no I/O but bytes.

Round trips at the segment edges with sources that return short reads, the exact sealed size,
and every tamper the module's docstring promises to catch (each one an IntegrityError).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import random
import struct
import threading
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault import crypto
from vault.crypto import (
    HEADER_SIZE,
    KEY_SIZE,
    SEGMENT_SIZE,
    TAG_SIZE,
    Kek,
    Keyring,
    SealingReader,
    WrappedKey,
    constant_time_equal,
    new_data_key,
    open_bytes,
    open_stream,
    seal_bytes,
    sealed_size,
)
from vault.errors import ConfigError, IntegrityError, StorageUnavailable, TooLarge

S = SEGMENT_SIZE
SEALED_SEGMENT = S + TAG_SIZE
IDENTITY = b"blo-vault/file/v1\x00" + b"a" * 32 + b"\x00" + b"b" * 32
OTHER_IDENTITY = b"blo-vault/file/v1\x00" + b"a" * 32 + b"\x00" + b"c" * 32
SIZES = [0, 1, S - 1, S, S + 1, 3 * S]


def content(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random plaintext."""
    return random.Random(f"{seed}:{size}").randbytes(size)


class ShortReader:
    """A source that never returns more than the next size of a cycle, however much is asked."""

    def __init__(
        self, data: bytes, pattern: tuple[int, ...] = (1, 7, 4093, 65535, 100_000)
    ) -> None:
        self._buf = io.BytesIO(data)
        self._sizes = itertools.cycle(pattern)
        self.calls = 0

    def read(self, size: int = -1, /) -> bytes:
        self.calls += 1
        step = next(self._sizes)
        want = step if size < 0 else min(size, step)
        return self._buf.read(want)


class EndlessReader:
    """A source that never ends (to show the size limit stops sealing early)."""

    def __init__(self) -> None:
        self.delivered = 0

    def read(self, size: int = -1, /) -> bytes:
        n = 4096 if size < 0 else min(size, 4096)
        self.delivered += n
        return b"\xaa" * n


def seal(
    plaintext: bytes,
    key: bytes,
    identity: bytes = IDENTITY,
    *,
    short: bool = True,
    read_sizes: tuple[int, ...] = (5, 1 << 20, 17, 70_000),
) -> bytes:
    """Seal ``plaintext`` through SealingReader, pulling with assorted ``read(n)`` sizes."""
    source = ShortReader(plaintext) if short else io.BytesIO(plaintext)
    reader = SealingReader(source, key, identity=identity)
    out = bytearray()
    for n in itertools.cycle(read_sizes):
        chunk = reader.read(n)
        if not chunk:
            break
        assert len(chunk) <= n
        out += chunk
    assert reader.read(10) == b""
    assert reader.plaintext_size == len(plaintext)
    assert reader.sha256_hex() == hashlib.sha256(plaintext).hexdigest()
    return bytes(out)


def collect(pieces: Iterator[bytes], into: list[bytes]) -> None:
    """Append pieces to ``into`` as they come, so what arrived before a failure is kept."""
    for piece in pieces:
        into.append(piece)


def read_all(reader: SealingReader, size: int) -> bytes:
    """Pull ``reader`` to its end in ``read(size)`` calls."""
    out = bytearray()
    while chunk := reader.read(size):
        out += chunk
    return bytes(out)


def unseal(sealed: bytes, key: bytes, identity: bytes = IDENTITY) -> bytes:
    """Open a sealed stream fully, from a source that returns short reads."""
    return b"".join(open_stream(ShortReader(sealed), key, identity=identity))


def segments(sealed: bytes) -> list[bytes]:
    """The sealed segments (ciphertext || tag) of a stream with the default segment size."""
    body = sealed[HEADER_SIZE:]
    return [body[i : i + SEALED_SEGMENT] for i in range(0, len(body), SEALED_SEGMENT)]


def join(header: bytes, parts: list[bytes]) -> bytes:
    return header + b"".join(parts)


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


@pytest.fixture
def key() -> bytes:
    return new_data_key()


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_with_short_reads(size: int, key: bytes) -> None:
    plaintext = content(size)
    sealed = seal(plaintext, key)
    assert len(sealed) == sealed_size(size)
    assert unseal(sealed, key) == plaintext


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_read_all_at_once(size: int, key: bytes) -> None:
    plaintext = content(size, seed=1)
    reader = SealingReader(io.BytesIO(plaintext), key, identity=IDENTITY)
    sealed = reader.read()
    assert reader.read() == b""
    assert len(sealed) == sealed_size(size)
    assert b"".join(open_stream(io.BytesIO(sealed), key, identity=IDENTITY)) == plaintext


@pytest.mark.parametrize("size", SIZES)
def test_open_stream_yields_whole_segments(size: int, key: bytes) -> None:
    plaintext = content(size, seed=2)
    pieces = list(open_stream(io.BytesIO(seal(plaintext, key)), key, identity=IDENTITY))
    assert len(pieces) == max(1, -(-size // S))
    assert all(len(p) == S for p in pieces[:-1])
    assert b"".join(pieces) == plaintext


def test_byte_at_a_time_source_and_sink(key: bytes) -> None:
    plaintext = content(3000, seed=3)
    reader = SealingReader(ShortReader(plaintext, (1,)), key, identity=IDENTITY, segment_size=1024)
    out = bytearray()
    while chunk := reader.read(1):
        out += chunk
    assert len(out) == sealed_size(3000, 1024)
    opened = open_stream(ShortReader(bytes(out), (1,)), key, identity=IDENTITY)
    assert b"".join(opened) == plaintext


@pytest.mark.parametrize("segment_size", [16, 1000, 4096])
@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 4096, 10_000])
def test_sealed_size_matches_for_other_segment_sizes(
    segment_size: int, size: int, key: bytes
) -> None:
    plaintext = content(size, seed=4)
    reader = SealingReader(
        ShortReader(plaintext), key, identity=IDENTITY, segment_size=segment_size
    )
    sealed = reader.read()
    assert len(sealed) == sealed_size(size, segment_size)
    assert b"".join(open_stream(io.BytesIO(sealed), key, identity=IDENTITY)) == plaintext


def test_sealed_size_formula() -> None:
    assert sealed_size(0) == HEADER_SIZE + TAG_SIZE
    assert sealed_size(1) == HEADER_SIZE + 1 + TAG_SIZE
    assert sealed_size(S) == HEADER_SIZE + S + TAG_SIZE
    assert sealed_size(S + 1) == HEADER_SIZE + S + 1 + 2 * TAG_SIZE
    assert sealed_size(3 * S) == HEADER_SIZE + 3 * S + 3 * TAG_SIZE


def test_header_layout(key: bytes) -> None:
    sealed = seal(b"hello", key)
    magic, version, segment_size, prefix = struct.unpack(">4sBI7s", sealed[:HEADER_SIZE])
    assert (magic, version, segment_size) == (b"BLOV", 1, S)
    assert len(prefix) == 7
    assert b"hello" not in sealed


def test_each_seal_is_fresh(key: bytes) -> None:
    plaintext = content(S + 5, seed=5)
    a, b = seal(plaintext, key), seal(plaintext, key)
    assert a != b
    assert a[9:HEADER_SIZE] != b[9:HEADER_SIZE]  # a new nonce prefix every time
    assert unseal(a, key) == unseal(b, key) == plaintext


def test_sealing_reader_rejects_short_key() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SealingReader(io.BytesIO(b""), b"k" * 16, identity=IDENTITY)


# --- tampering ----------------------------------------------------------------------------------


@pytest.fixture
def three_segments(key: bytes) -> bytes:
    """A sealed stream of three full segments."""
    return seal(content(3 * S, seed=6), key)


@pytest.fixture
def four_segments(key: bytes) -> bytes:
    """A sealed stream of three full segments and a short last one."""
    return seal(content(3 * S + 123, seed=7), key)


def assert_refused(sealed: bytes, key: bytes, identity: bytes = IDENTITY) -> None:
    with pytest.raises(IntegrityError):
        unseal(sealed, key, identity)


@pytest.mark.parametrize("bit", range(HEADER_SIZE * 8))
def test_flipped_bit_in_header(bit: int, key: bytes) -> None:
    sealed = seal(content(S + 1, seed=8), key)
    assert_refused(flip(sealed, bit // 8, bit % 8), key)


@pytest.mark.parametrize("segment", [0, 1, 3])
@pytest.mark.parametrize("where", ["start", "middle", "end_of_ciphertext"])
def test_flipped_bit_in_segment(segment: int, where: str, four_segments: bytes, key: bytes) -> None:
    start = HEADER_SIZE + segment * SEALED_SEGMENT
    length = len(segments(four_segments)[segment]) - TAG_SIZE
    offset = {"start": 0, "middle": length // 2, "end_of_ciphertext": length - 1}[where]
    assert_refused(flip(four_segments, start + offset, 5), key)


@pytest.mark.parametrize("segment", [0, 2, 3])
@pytest.mark.parametrize("tag_byte", [0, TAG_SIZE - 1])
def test_flipped_bit_in_tag(segment: int, tag_byte: int, four_segments: bytes, key: bytes) -> None:
    parts = segments(four_segments)
    end = HEADER_SIZE + sum(len(p) for p in parts[: segment + 1])
    assert_refused(flip(four_segments, end - TAG_SIZE + tag_byte, 7), key)


def test_flipped_bit_in_only_tag_of_empty_stream(key: bytes) -> None:
    sealed = seal(b"", key)
    assert len(sealed) == HEADER_SIZE + TAG_SIZE
    assert_refused(flip(sealed, HEADER_SIZE + 3), key)


@pytest.mark.parametrize("fixture_name", ["three_segments", "four_segments"])
def test_truncated_at_segment_boundary(
    fixture_name: str, request: pytest.FixtureRequest, key: bytes
) -> None:
    sealed: bytes = request.getfixturevalue(fixture_name)
    header, parts = sealed[:HEADER_SIZE], segments(sealed)
    for keep in range(len(parts)):
        assert_refused(join(header, parts[:keep]), key)


@pytest.mark.parametrize("size", [1, S - 1, S, S + 1])
def test_truncated_to_header_or_nothing(size: int, key: bytes) -> None:
    sealed = seal(content(size), key)
    for cut in (0, 1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + TAG_SIZE - 1):
        assert_refused(sealed[:cut], key)


@pytest.mark.parametrize("segment", [0, 1, 3])
def test_truncated_mid_segment(segment: int, four_segments: bytes, key: bytes) -> None:
    parts = segments(four_segments)
    start = HEADER_SIZE + sum(len(p) for p in parts[:segment])
    for cut in (1, len(parts[segment]) // 2, len(parts[segment]) - 1):
        assert_refused(four_segments[: start + cut], key)


@pytest.mark.parametrize(("a", "b"), [(0, 1), (1, 2), (0, 2)])
def test_two_segments_swapped(a: int, b: int, three_segments: bytes, key: bytes) -> None:
    header, parts = three_segments[:HEADER_SIZE], segments(three_segments)
    parts[a], parts[b] = parts[b], parts[a]
    assert_refused(join(header, parts), key)


def test_last_segment_swapped_into_middle(four_segments: bytes, key: bytes) -> None:
    header, parts = four_segments[:HEADER_SIZE], segments(four_segments)
    assert_refused(join(header, [parts[0], parts[3], parts[2], parts[1]]), key)


@pytest.mark.parametrize("drop", [0, 1, 2])
def test_segment_dropped(drop: int, four_segments: bytes, key: bytes) -> None:
    header, parts = four_segments[:HEADER_SIZE], segments(four_segments)
    del parts[drop]
    assert_refused(join(header, parts), key)


def test_segment_duplicated(three_segments: bytes, key: bytes) -> None:
    header, parts = three_segments[:HEADER_SIZE], segments(three_segments)
    assert_refused(join(header, [parts[0], parts[0], parts[1], parts[2]]), key)


@pytest.mark.parametrize("size", [0, 1, S, S + 1, 3 * S])
@pytest.mark.parametrize("garbage", [1, TAG_SIZE, TAG_SIZE + 1, SEALED_SEGMENT])
def test_trailing_garbage(size: int, garbage: int, key: bytes) -> None:
    sealed = seal(content(size, seed=9), key)
    assert_refused(sealed + b"\x00" * garbage, key)


def test_trailing_copy_of_a_segment(three_segments: bytes, key: bytes) -> None:
    assert_refused(three_segments + segments(three_segments)[-1], key)


@pytest.mark.parametrize("size", [0, 1, S, 3 * S])
def test_wrong_identity(size: int, key: bytes) -> None:
    sealed = seal(content(size), key, IDENTITY)
    assert_refused(sealed, key, OTHER_IDENTITY)
    assert_refused(sealed, key, b"")
    assert_refused(sealed, key, IDENTITY + b"\x00")


def test_segment_spliced_from_another_file(key: bytes) -> None:
    """Same key, same plaintext, other identity: the other file's segments don't fit."""
    plaintext = content(3 * S, seed=10)
    mine, theirs = seal(plaintext, key, IDENTITY), seal(plaintext, key, OTHER_IDENTITY)
    header, parts = mine[:HEADER_SIZE], segments(mine)
    parts[1] = segments(theirs)[1]
    assert_refused(join(header, parts), key, IDENTITY)
    # The other file's header with this file's segments fails too.
    assert_refused(join(theirs[:HEADER_SIZE], segments(mine)), key, IDENTITY)
    assert_refused(join(theirs[:HEADER_SIZE], segments(mine)), key, OTHER_IDENTITY)


def test_segment_spliced_from_another_stream_of_the_same_file(key: bytes) -> None:
    """Same key and identity, but another seal (another nonce prefix): still refused."""
    plaintext = content(3 * S, seed=11)
    first, second = seal(plaintext, key), seal(plaintext, key)
    parts = segments(first)
    parts[2] = segments(second)[2]
    assert_refused(join(first[:HEADER_SIZE], parts), key)


@pytest.mark.parametrize("size", [0, 1, S + 1])
def test_wrong_key(size: int, key: bytes) -> None:
    sealed = seal(content(size), key)
    assert_refused(sealed, new_data_key())
    assert_refused(sealed, flip(key, 31))


def test_empty_final_segment_after_full_segments_is_refused(key: bytes) -> None:
    """A stream ending in an empty 'last' segment is never produced; opening one must fail.

    Built with the right key and nonces, so only the rule about empty final segments stops it.
    """
    prefix = b"\x01" * 7
    header = struct.pack(">4sBI7s", b"BLOV", 1, S, prefix)
    aad = header + IDENTITY
    aead = AESGCM(key)
    seg0 = aead.encrypt(prefix + (0).to_bytes(4, "big") + b"\x00", b"x" * S, aad)
    seg1 = aead.encrypt(prefix + (1).to_bytes(4, "big") + b"\x01", b"", aad)
    assert_refused(header + seg0 + seg1, key)


def test_failure_surfaces_after_authentic_segments(four_segments: bytes, key: bytes) -> None:
    """A bad later segment fails at that segment; earlier (authentic) ones came out first."""
    tampered = flip(four_segments, HEADER_SIZE + 2 * SEALED_SEGMENT + 10)
    got: list[bytes] = []
    with pytest.raises(IntegrityError):
        collect(open_stream(io.BytesIO(tampered), key, identity=IDENTITY), got)
    assert len(got) <= 2
    plain = content(3 * S + 123, seed=7)
    assert b"".join(got) == plain[: len(b"".join(got))]


# --- reading the source ------------------------------------------------------------------------
# open_stream reads its source on the caller's thread, one segment ahead of the one it opens.
# These pin down what its callers rely on: closing it mid-stream leaves nothing reading the
# source (so the store may close the object), it holds at most two segments (memory), and a
# read error reaches the caller as it was raised.


class CountingReader:
    """A source that counts the bytes handed out, refuses reads once closed, and can fail."""

    def __init__(self, data: bytes, *, fail_after: int | None = None) -> None:
        self._buf = io.BytesIO(data)
        self._fail_after = fail_after
        self.delivered = 0
        self.closed = False

    def read(self, size: int = -1, /) -> bytes:
        if self.closed:
            raise AssertionError("read after the source was closed")
        if self._fail_after is not None and self.delivered >= self._fail_after:
            raise StorageUnavailable("object store went away")
        chunk = self._buf.read(size)
        self.delivered += len(chunk)
        return chunk


SMALL_SEGMENT = 1024
MANY = 64  # segments


@pytest.fixture
def many_segments(key: bytes) -> bytes:
    plaintext = content(MANY * SMALL_SEGMENT, seed=9)
    reader = SealingReader(io.BytesIO(plaintext), key, identity=IDENTITY, segment_size=1024)
    return reader.read()


def test_a_stream_reads_one_segment_ahead_on_the_callers_thread(
    many_segments: bytes, key: bytes
) -> None:
    threads = threading.active_count()
    source = CountingReader(many_segments)
    opened = open_stream(source, key, identity=IDENTITY)
    for n in range(1, 4):
        assert len(next(opened)) == SMALL_SEGMENT
        assert threading.active_count() == threads
        # The header, the segments handed out and the one read to know whether it was the last.
        assert source.delivered == HEADER_SIZE + (n + 1) * (SMALL_SEGMENT + TAG_SIZE)
    opened.close()
    source.closed = True  # what the store does next; the stream must not touch it again
    with pytest.raises(StopIteration):
        next(opened)


def test_an_integrity_error_stops_at_the_segment_that_failed(
    many_segments: bytes, key: bytes
) -> None:
    tampered = flip(many_segments, HEADER_SIZE + 3 * (SMALL_SEGMENT + TAG_SIZE) + 5)
    source = CountingReader(tampered)
    got: list[bytes] = []
    with pytest.raises(IntegrityError):
        collect(open_stream(source, key, identity=IDENTITY), got)
    assert len(got) == 3
    assert source.delivered == HEADER_SIZE + 5 * (SMALL_SEGMENT + TAG_SIZE)


@pytest.mark.parametrize("fail_after", [HEADER_SIZE, HEADER_SIZE + 1, HEADER_SIZE + 10 * 1040])
def test_read_error_reaches_the_caller_unchanged(
    fail_after: int, many_segments: bytes, key: bytes
) -> None:
    source = CountingReader(many_segments, fail_after=fail_after)
    got: list[bytes] = []
    with pytest.raises(StorageUnavailable, match="went away"):
        collect(open_stream(source, key, identity=IDENTITY), got)
    assert b"".join(got) == content(MANY * SMALL_SEGMENT, seed=9)[: len(b"".join(got))]
    assert len(got) < MANY


def sha256_threads() -> int:
    return sum(t.name == "sha256" for t in threading.enumerate())


@pytest.mark.parametrize(
    ("sizes", "threaded"),
    [
        ([], False),
        ([1], False),
        ([1 << 19, (1 << 19) - 1], False),  # one byte short of a batch
        ([1 << 20], True),
        ([3 << 19, 5, 1 << 21], True),
    ],
)
def test_background_digest_hashes_less_than_a_batch_on_the_callers_thread(
    sizes: list[int], threaded: bool
) -> None:
    before = sha256_threads()
    digest = crypto.BackgroundDigest()
    expected = hashlib.sha256()
    for seed, size in enumerate(sizes):
        chunk = content(size, seed=seed)
        digest.update(chunk)
        expected.update(chunk)
    assert sha256_threads() - before == (1 if threaded else 0)
    assert digest.hexdigest() == expected.hexdigest()
    assert digest.hexdigest() == expected.hexdigest()  # asked twice: the same answer
    assert sha256_threads() == before


# --- limits -------------------------------------------------------------------------------------


def test_max_size_raises_the_given_error(key: bytes) -> None:
    limit = TooLarge("file exceeds the size limit")
    reader = SealingReader(
        ShortReader(content(1001)), key, identity=IDENTITY, max_size=1000, limit_error=limit
    )
    with pytest.raises(TooLarge) as info:
        reader.read()
    assert info.value is limit


@pytest.mark.parametrize("size", [0, 1000, S, S + 1])
def test_max_size_allows_exactly_the_limit(size: int, key: bytes) -> None:
    plaintext = content(size)
    reader = SealingReader(
        io.BytesIO(plaintext),
        key,
        identity=IDENTITY,
        max_size=size,
        limit_error=TooLarge("too large"),
    )
    sealed = reader.read()
    assert unseal(sealed, key) == plaintext


@pytest.mark.parametrize("limit", [S, S + 1, 2 * S - 1])
def test_max_size_one_over_across_segments(limit: int, key: bytes) -> None:
    reader = SealingReader(
        io.BytesIO(content(limit + 1)),
        key,
        identity=IDENTITY,
        max_size=limit,
        limit_error=TooLarge("too large"),
    )
    with pytest.raises(TooLarge):
        read_all(reader, 4096)


def test_max_size_stops_an_endless_source_early(key: bytes) -> None:
    source = EndlessReader()
    reader = SealingReader(
        source, key, identity=IDENTITY, max_size=10, limit_error=TooLarge("too large")
    )
    with pytest.raises(TooLarge):
        reader.read(100)
    assert source.delivered <= 2 * S


def test_max_size_without_limit_error_raises_value_error(key: bytes) -> None:
    reader = SealingReader(io.BytesIO(b"abc"), key, identity=IDENTITY, max_size=2)
    with pytest.raises(ValueError, match="limit"):
        reader.read()


# --- key wrapping -------------------------------------------------------------------------------


def test_kek_must_be_32_bytes() -> None:
    for size in (0, 16, 31, 33):
        with pytest.raises(ConfigError):
            Kek(b"k" * size)


def test_kek_id_is_derived_from_the_key() -> None:
    raw = b"\x11" * KEY_SIZE
    assert Kek(raw).id == Kek(raw).id
    assert Kek(raw).id != Kek(b"\x12" * KEY_SIZE).id
    assert Kek(raw).id.startswith("kek-")
    assert raw.hex() not in Kek(raw).id
    assert raw.hex() not in repr(Kek(raw))


def test_wrap_unwrap_round_trip() -> None:
    ring = Keyring(current=Kek(new_data_key()))
    data_key = new_data_key()
    wrapped = ring.wrap(data_key, context=b"ctx-1")
    assert wrapped.kek_id == ring.current.id
    assert data_key not in wrapped.blob
    assert ring.unwrap(wrapped, context=b"ctx-1") == data_key
    assert ring.wrap(data_key, context=b"ctx-1").blob != wrapped.blob


def test_unwrap_with_wrong_context() -> None:
    ring = Keyring(current=Kek(new_data_key()))
    wrapped = ring.wrap(new_data_key(), context=b"package-a")
    for context in (b"package-b", b"", b"package-a\x00", b"package-"):
        with pytest.raises(IntegrityError):
            ring.unwrap(wrapped, context=context)


def test_unwrap_with_unknown_kek_id() -> None:
    ring = Keyring(current=Kek(new_data_key()))
    other = Keyring(current=Kek(new_data_key()))
    wrapped = ring.wrap(new_data_key(), context=b"ctx")
    with pytest.raises(IntegrityError):
        other.unwrap(wrapped, context=b"ctx")
    with pytest.raises(IntegrityError):
        ring.unwrap(WrappedKey("kek-0000000000000000", wrapped.blob), context=b"ctx")


def test_unwrap_with_mislabelled_kek_id() -> None:
    """A blob relabelled with another known KEK's id fails (the id is bound in the AAD)."""
    old, new = Kek(new_data_key()), Kek(new_data_key())
    ring = Keyring(current=new, previous=(old,))
    wrapped = Keyring(current=old).wrap(new_data_key(), context=b"ctx")
    with pytest.raises(IntegrityError):
        ring.unwrap(WrappedKey(new.id, wrapped.blob), context=b"ctx")


def test_unwrap_tampered_or_malformed_blob() -> None:
    ring = Keyring(current=Kek(new_data_key()))
    wrapped = ring.wrap(new_data_key(), context=b"ctx")
    blobs = [
        flip(wrapped.blob, 0),  # version
        flip(wrapped.blob, 5),  # nonce
        flip(wrapped.blob, 20),  # ciphertext
        flip(wrapped.blob, len(wrapped.blob) - 1),  # tag
        wrapped.blob[:-1],
        wrapped.blob + b"\x00",
        b"",
    ]
    for blob in blobs:
        with pytest.raises(IntegrityError):
            ring.unwrap(WrappedKey(wrapped.kek_id, blob), context=b"ctx")


def test_rewrap_under_new_kek_then_unwrap_with_only_the_new_kek() -> None:
    old, new = Kek(new_data_key()), Kek(new_data_key())
    data_key = new_data_key()
    wrapped = Keyring(current=old).wrap(data_key, context=b"ctx")

    rotating = Keyring(current=new, previous=(old,))
    assert rotating.ids == {old.id, new.id}
    assert rotating.unwrap(wrapped, context=b"ctx") == data_key
    rewrapped = rotating.rewrap(wrapped, context=b"ctx")
    assert rewrapped.kek_id == new.id

    only_new = Keyring(current=new)
    assert only_new.ids == {new.id}
    assert only_new.unwrap(rewrapped, context=b"ctx") == data_key
    with pytest.raises(IntegrityError):
        only_new.unwrap(wrapped, context=b"ctx")
    with pytest.raises(IntegrityError):
        Keyring(current=old).unwrap(rewrapped, context=b"ctx")
    with pytest.raises(IntegrityError):
        only_new.unwrap(rewrapped, context=b"other")


def test_rewrap_with_wrong_context_refused() -> None:
    old, new = Kek(new_data_key()), Kek(new_data_key())
    wrapped = Keyring(current=old).wrap(new_data_key(), context=b"ctx")
    with pytest.raises(IntegrityError):
        Keyring(current=new, previous=(old,)).rewrap(wrapped, context=b"not-ctx")


# --- small records ------------------------------------------------------------------------------


def test_seal_bytes_round_trip(key: bytes) -> None:
    for plaintext in (b"", b"x", "Сводка о задержании".encode(), content(5000)):
        sealed = seal_bytes(key, plaintext, context=b"ctx")
        assert open_bytes(key, sealed, context=b"ctx") == plaintext
        if len(plaintext) >= 8:  # shorter ones may occur in random ciphertext by chance
            assert plaintext not in sealed
    assert seal_bytes(key, b"same", context=b"ctx") != seal_bytes(key, b"same", context=b"ctx")


def test_seal_bytes_is_bound_to_its_context(key: bytes) -> None:
    sealed = seal_bytes(key, b"title", context=b"blo-vault/package/v1\x00" + b"a" * 32)
    for context in (b"blo-vault/package/v1\x00" + b"b" * 32, b"", b"blo-vault/package/v1\x00"):
        with pytest.raises(IntegrityError):
            open_bytes(key, sealed, context=context)


def test_open_bytes_refuses_wrong_key_and_tampering(key: bytes) -> None:
    sealed = seal_bytes(key, b"description", context=b"ctx")
    with pytest.raises(IntegrityError):
        open_bytes(new_data_key(), sealed, context=b"ctx")
    for bad in (
        flip(sealed, 0),
        flip(sealed, 3),
        flip(sealed, len(sealed) - 1),
        sealed[:-1],
        sealed + b"\x00",
        sealed[: 1 + 12 + TAG_SIZE - 1],
        b"",
    ):
        with pytest.raises(IntegrityError):
            open_bytes(key, bad, context=b"ctx")


# --- helpers ------------------------------------------------------------------------------------


def test_constant_time_equal() -> None:
    assert constant_time_equal(b"abc", b"abc")
    assert constant_time_equal("abc", "abc")
    assert constant_time_equal("abc", b"abc")
    assert constant_time_equal(b"", b"")
    assert not constant_time_equal(b"abc", b"abd")
    assert not constant_time_equal(b"abc", b"abcd")
    assert not constant_time_equal("abc", "")
    digest = hashlib.sha256(b"x").hexdigest()
    assert constant_time_equal(digest, digest.encode())
    assert not constant_time_equal(digest, digest.upper())
    assert constant_time_equal("ключ", "ключ".encode())


def test_new_data_key_is_random_and_sized() -> None:
    keys = {crypto.new_data_key() for _ in range(16)}
    assert len(keys) == 16
    assert all(len(k) == KEY_SIZE for k in keys)
    assert len(crypto.random_bytes(7)) == 7


def test_derive_key_matches_rfc5869_test_case_3() -> None:
    """HKDF-SHA256 with no salt and no info (RFC 5869, A.3); ours is the OKM's first 32 bytes."""
    okm = bytes.fromhex(
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )
    assert crypto.derive_key(b"\x0b" * 22, purpose=b"") == okm[:KEY_SIZE]
    one, other = (crypto.derive_key(b"\x0b" * 22, purpose=p) for p in (b"a", b"b"))
    assert len({one, other, okm[:KEY_SIZE]}) == 3


def test_keyed_digest_matches_rfc4231_test_case_2() -> None:
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert crypto.keyed_digest(b"Jefe", b"what do ya want for nothing?") == expected
