"""One contract for every object store backend, plus backend-specific checks.

Backends:

* ``local``: LocalDiskStore on a fresh tmp_path.
* ``minio``: MinioStore through the real minio SDK against moto's S3 server on 127.0.0.1 over
  plain HTTP, or against a real MinIO when ``VAULT_TEST_S3_*`` is set (see tests/s3server.py).
* ``minio-tls``: MinioStore against moto over HTTPS with a throw-away CA (always moto).

The S3 stores use a 5 MiB part size so the ~12 MiB cases really go multipart. Every test gets
a fresh bucket; every server started here is stopped. No mocks of minio or moto.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import socket
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from minio.error import S3Error

# The repo root (for `vault` and `tests` without an installed copy) must be importable however
# pytest is started; pyproject sets no pythonpath. The helper is imported as `tests.s3server`,
# the name the other test modules use, so one process loads it once.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.s3server import S3Target, moto_s3, s3_target  # noqa: E402
from vault.config import Settings, load_settings  # noqa: E402
from vault.crypto import SealingReader, new_data_key, open_stream, sealed_size  # noqa: E402
from vault.errors import (  # noqa: E402
    ConfigError,
    InvalidInput,
    NotFound,
    StorageUnavailable,
    TooLarge,
)
from vault.storage import ObjectReader, ObjectStore  # noqa: E402
from vault.storage.local import LocalDiskStore  # noqa: E402
from vault.storage.minio import MAX_PARTS, MinioStore, choose_part_size  # noqa: E402

MiB = 1024**2
TEST_PART_SIZE = 5 * MiB  # S3's minimum; small so multipart is exercised with ~12 MiB
BACKENDS = ["local", "minio", "minio-tls"]
S3_BACKENDS = ["minio", "minio-tls"]


def key_of(n: int) -> str:
    """A valid opaque id (64 hex chars) that differs in its first bytes (so shards differ)."""
    return os.urandom(4).hex() + f"{n:056x}"


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Target]:
    """moto over HTTP on loopback (or a real MinIO from VAULT_TEST_S3_*), for this module."""
    with s3_target() as target:
        yield target


@pytest.fixture(scope="module")
def s3_tls() -> Iterator[S3Target]:
    """moto over HTTPS on loopback with a throw-away CA, for this module."""
    with moto_s3(https=True) as server:
        yield server.target


@dataclass
class Backend:
    name: str
    store: LocalDiskStore | MinioStore
    client: Minio | None = None
    bucket: str | None = None

    def pending_uploads(self) -> list[str]:
        """Object names with unfinished multipart uploads (S3 backends only)."""
        assert self.client is not None
        assert self.bucket is not None
        # No public API for ListMultipartUploads in minio-py 7.2; the private one is stable.
        result = self.client._list_multipart_uploads(bucket_name=self.bucket)
        return [upload.object_name for upload in result.uploads]

    def _foreign_path(self, beside: str, name: str) -> Path:
        assert isinstance(self.store, LocalDiskStore)
        return self.store.root / beside[:2] / beside[2:4] / name

    def put_foreign(self, beside: str, name: str) -> None:
        """Put a file the vault did not write where its objects are: in the shard folder of
        the object ``beside`` (local), in the bucket (S3)."""
        if self.client is None:
            self._foreign_path(beside, name).write_bytes(b"not an object")
            return
        assert self.bucket is not None
        self.client.put_object(
            bucket_name=self.bucket, object_name=name, data=io.BytesIO(b"x"), length=1
        )

    def has_foreign(self, beside: str, name: str) -> bool:
        """Whether the file put_foreign put is still there."""
        if self.client is None:
            return self._foreign_path(beside, name).is_file()
        assert self.bucket is not None
        names = self.client.list_objects(bucket_name=self.bucket, prefix=name)
        return name in {item.object_name for item in names}


def _drop_bucket(client: Minio, bucket: str) -> None:
    """Best-effort removal of every version and the bucket (locked objects stay)."""
    with contextlib.suppress(S3Error):
        if not client.bucket_exists(bucket_name=bucket):
            return
        for item in client.list_objects(bucket_name=bucket, recursive=True, include_version=True):
            with contextlib.suppress(S3Error):
                client.remove_object(
                    bucket_name=bucket,
                    object_name=item.object_name or "",
                    version_id=item.version_id,
                )
        client.remove_bucket(bucket_name=bucket)


@contextlib.contextmanager
def s3_backend(name: str, target: S3Target) -> Iterator[Backend]:
    client = target.client()
    bucket = target.new_bucket()
    store = MinioStore(client=client, bucket=bucket, part_size=TEST_PART_SIZE)
    store.ensure_bucket()
    try:
        yield Backend(name=name, store=store, client=client, bucket=bucket)
    finally:
        _drop_bucket(client, bucket)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        yield Backend(name="local", store=LocalDiskStore(root=tmp_path / "objects"))
        return
    target = request.getfixturevalue("s3" if request.param == "minio" else "s3_tls")
    with s3_backend(request.param, target) as backend:
        yield backend


@pytest.fixture(params=S3_BACKENDS)
def s3_only(request: pytest.FixtureRequest) -> Iterator[Backend]:
    target = request.getfixturevalue("s3" if request.param == "minio" else "s3_tls")
    with s3_backend(request.param, target) as backend:
        yield backend


@pytest.fixture
def store(backend: Backend) -> ObjectStore:
    return backend.store


# --- sources ---------------------------------------------------------------------------------


class TinyReads:
    """Returns at most a few bytes per read, in an uneven pattern."""

    def __init__(self, data: bytes, pattern: tuple[int, ...] = (1, 7, 3, 4093, 2, 511)) -> None:
        self._data = io.BytesIO(data)
        self._pattern = pattern
        self._i = 0

    def read(self, size: int = -1, /) -> bytes:
        step = self._pattern[self._i % len(self._pattern)]
        self._i += 1
        return self._data.read(step if size < 0 else min(step, size))


class GreedyReads:
    """Ignores the requested size and returns fixed large chunks (a misbehaving source)."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self._data = io.BytesIO(data)
        self._chunk = chunk

    def read(self, size: int = -1, /) -> bytes:
        return self._data.read(self._chunk)


class Boom(RuntimeError):
    pass


class HardStop(BaseException):
    """Like KeyboardInterrupt: not an Exception."""


class FailingSource:
    """Serves ``good`` bytes, then raises ``error`` instead of going on."""

    def __init__(self, good: int, error: BaseException) -> None:
        self._data = io.BytesIO(os.urandom(good))
        self._error = error

    def read(self, size: int = -1, /) -> bytes:
        chunk = self._data.read(size)
        if not chunk:
            raise self._error
        return chunk


def read_back(store: ObjectStore, key: str, chunk: int = 64 * 1024) -> bytes:
    parts = []
    with store.open(key) as reader:
        while data := reader.read(chunk):
            parts.append(data)
    return b"".join(parts)


def drain(reader: ObjectReader) -> None:
    while reader.read(64 * 1024):
        pass


# --- the contract ----------------------------------------------------------------------------


def test_backend_satisfies_protocol(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)


@pytest.mark.parametrize(
    "size",
    [0, 1, TEST_PART_SIZE, TEST_PART_SIZE + 1, 12 * MiB + 3],
    ids=["empty", "one-byte", "one-part", "part-plus-one", "three-parts"],
)
def test_round_trip(store: ObjectStore, size: int) -> None:
    key = key_of(1)
    data = os.urandom(size)
    assert store.put(key, io.BytesIO(data)) == size
    assert store.size(key) == size
    assert read_back(store, key) == data


def test_round_trip_from_tiny_uneven_reads(store: ObjectStore) -> None:
    key = key_of(2)
    data = os.urandom(TEST_PART_SIZE + 17)
    assert store.put(key, TinyReads(data)) == len(data)
    assert read_back(store, key, chunk=1000) == data


def test_round_trip_from_a_source_returning_more_than_asked(store: ObjectStore) -> None:
    key = key_of(20)
    data = os.urandom(2 * TEST_PART_SIZE + 5)
    assert store.put(key, GreedyReads(data, chunk=3 * MiB + 1)) == len(data)
    assert read_back(store, key) == data


def test_read_everything_at_once(store: ObjectStore) -> None:
    key = key_of(3)
    data = os.urandom(70_000)
    store.put(key, io.BytesIO(data))
    with store.open(key) as reader:
        assert reader.read() == data
        assert reader.read(10) == b""


def test_sealed_stream_round_trip(store: ObjectStore) -> None:
    """What the vault really does: put a SealingReader, open_stream the object back."""
    key, data_key, identity = key_of(4), new_data_key(), b"file-1\x00package-1"
    plain = os.urandom(300_000)
    sealer = SealingReader(io.BytesIO(plain), data_key, identity=identity)
    assert store.put(key, sealer) == sealed_size(len(plain))
    with store.open(key) as reader:
        assert b"".join(open_stream(reader, data_key, identity=identity)) == plain


@pytest.mark.parametrize(
    ("good", "error"),
    [
        (0, Boom("at once")),
        (MiB, Boom("within the first part")),
        (7 * MiB, Boom("after a whole part")),
        (7 * MiB, HardStop("interrupted after a whole part")),
    ],
    ids=["at-once", "first-part", "second-part", "base-exception"],
)
def test_failed_put_leaves_no_object(backend: Backend, good: int, error: BaseException) -> None:
    store = backend.store
    key = key_of(5)
    with pytest.raises(type(error)) as caught:
        store.put(key, FailingSource(good, error))
    assert caught.value is error  # the source's own error, not a storage error
    assert key not in set(store.keys())
    with pytest.raises(NotFound), store.open(key):
        pass
    with pytest.raises(NotFound):
        store.size(key)
    if isinstance(store, LocalDiskStore):  # the "local" backend
        assert store.stray_temp_files() == []
    else:
        assert key not in backend.pending_uploads()  # the multipart upload was aborted


def test_failed_overwrite_keeps_the_old_object(backend: Backend) -> None:
    store = backend.store
    key = key_of(6)
    old = os.urandom(1000)
    store.put(key, io.BytesIO(old))
    with pytest.raises(Boom):
        store.put(key, FailingSource(7 * MiB, Boom("mid-stream")))
    assert read_back(store, key) == old
    assert store.size(key) == len(old)


def test_size_limit_error_of_the_source_propagates(store: ObjectStore) -> None:
    key = key_of(7)
    limit = TooLarge("file exceeds the limit")
    sealer = SealingReader(
        io.BytesIO(os.urandom(6 * MiB)),
        new_data_key(),
        identity=b"id",
        max_size=5 * MiB + 100,
        limit_error=limit,
    )
    with pytest.raises(TooLarge) as caught, contextlib.closing(sealer):
        store.put(key, sealer)
    assert caught.value is limit
    assert key not in set(store.keys())


def test_overwrite_replaces_content(store: ObjectStore) -> None:
    key = key_of(8)
    store.put(key, io.BytesIO(b"first version, longer"))
    store.put(key, io.BytesIO(b"second"))
    assert read_back(store, key) == b"second"
    assert store.size(key) == len(b"second")
    assert list(store.keys()) == [key]


def test_missing_key_is_not_found(store: ObjectStore) -> None:
    key = key_of(9)
    with pytest.raises(NotFound), store.open(key):
        pass
    with pytest.raises(NotFound):
        store.size(key)


def test_delete(store: ObjectStore) -> None:
    key = key_of(10)
    store.put(key, io.BytesIO(b"x"))
    store.delete(key)
    assert key not in set(store.keys())
    with pytest.raises(NotFound):
        store.size(key)
    store.delete(key)  # already gone: fine
    store.delete(key_of(11))  # never existed: fine


INVALID_KEYS = [
    "",
    "../x",
    "ABC",
    "a/b",
    "../" + "a" * 40,
    "a" * 31,
    "a" * 65,
    "A" * 32,
    "a" * 32 + "\n",
    " " + "a" * 32,
    "Operation Nightfall - final report.pdf",
    "PL-DE border incident 2024",
    "a" * 16 + "/" + "b" * 16,
]


def _call(store: ObjectStore, method: str, key: str) -> None:
    if method == "put":
        store.put(key, io.BytesIO(b"data"))
    elif method == "open":
        with store.open(key) as reader:
            reader.read()
    elif method == "size":
        store.size(key)
    else:
        store.delete(key)


@pytest.mark.parametrize("method", ["put", "open", "size", "delete"])
def test_invalid_keys_are_refused(store: ObjectStore, method: str) -> None:
    for key in INVALID_KEYS:
        with pytest.raises(InvalidInput):
            _call(store, method, key)
    assert list(store.keys()) == []


def test_keys_lists_exactly_what_was_put(store: ObjectStore) -> None:
    assert list(store.keys()) == []
    keys = {key_of(n) for n in range(5)}
    for key in keys:
        store.put(key, io.BytesIO(key.encode()))
    gone = sorted(keys)[0]
    store.delete(gone)
    assert set(store.keys()) == keys - {gone}
    assert len(list(store.keys())) == len(keys) - 1


# Names that turn up beside a store's objects without being vault ids.
FOREIGN_NAMES = [
    ".nfs0000000012345",  # an NFS client's silly rename of an open, deleted file
    "README.txt",
    "a" * 31,
    "A" * 64,
    "a" * 64 + ".swp",  # an editor's leftover
    "a" * 64 + "~",
]


def test_keys_skip_what_the_store_did_not_write(backend: Backend) -> None:
    """Garbage collection stats every key listed and deletes the strays: it must neither stop
    at, nor delete, a file the vault did not write."""
    key = key_of(17)
    backend.store.put(key, io.BytesIO(b"x"))
    for name in FOREIGN_NAMES:
        backend.put_foreign(key, name)
    assert list(backend.store.keys()) == [key]
    for listed in backend.store.keys():  # noqa: SIM118 - as admin gc does, a store not a dict
        backend.store.modified(listed)
        backend.store.delete(listed)
    assert list(backend.store.keys()) == []
    assert [name for name in FOREIGN_NAMES if not backend.has_foreign(key, name)] == []


def test_check_passes(store: ObjectStore) -> None:
    store.check()


# --- S3 only ---------------------------------------------------------------------------------


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connections are refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_unreachable_endpoint_is_storage_unavailable() -> None:
    with refused_port() as port:
        target = S3Target(endpoint=f"127.0.0.1:{port}", access_key="a", secret_key="b")
        store = MinioStore(
            client=target.client(timeout=2.0, retries=0),
            bucket="vault-unreachable",
            part_size=TEST_PART_SIZE,
        )
        key = key_of(12)
        with pytest.raises(StorageUnavailable):
            store.check()
        with pytest.raises(StorageUnavailable):
            store.ensure_bucket()
        with pytest.raises(StorageUnavailable):
            store.put(key, io.BytesIO(b"data"))
        with pytest.raises(StorageUnavailable), store.open(key):
            pass
        with pytest.raises(StorageUnavailable):
            store.size(key)
        with pytest.raises(StorageUnavailable):
            store.delete(key)
        with pytest.raises(StorageUnavailable):
            list(store.keys())
        # Key checks come first, without touching the network.
        with pytest.raises(InvalidInput):
            store.size("../x")


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_server_gone_mid_read_is_storage_unavailable(https: bool) -> None:
    data = os.urandom(24 * MiB)  # far more than socket buffers hold
    key = key_of(13)
    # moto's state is process-global, so a second server can clean up after the first one died.
    with moto_s3(https=https) as server, moto_s3() as keeper:
        target = server.target
        client = target.client(timeout=5.0, retries=0)
        bucket = target.new_bucket()
        store = MinioStore(client=client, bucket=bucket, part_size=TEST_PART_SIZE)
        store.ensure_bucket()
        store.put(key, io.BytesIO(data))
        try:
            with store.open(key) as reader:
                assert reader.read(64 * 1024) == data[: 64 * 1024]
                server.stop()
                with pytest.raises(StorageUnavailable):
                    drain(reader)
            with pytest.raises(StorageUnavailable):
                store.check()
        finally:
            server.stop()
            _drop_bucket(keeper.target.client(), bucket)


def test_no_user_metadata(s3_only: Backend) -> None:
    assert s3_only.client is not None
    assert s3_only.bucket is not None
    for n, size in enumerate([10, 6 * MiB]):  # single PUT and multipart
        key = key_of(14 + n)
        s3_only.store.put(key, io.BytesIO(os.urandom(size)))
        stat = s3_only.client.stat_object(bucket_name=s3_only.bucket, object_name=key)
        headers = {name.lower() for name in stat.metadata or {}}
        assert not [name for name in headers if name.startswith("x-amz-meta-")]
        assert stat.content_type == "application/octet-stream"
        assert stat.size == size


def test_keys_skips_foreign_objects(s3_only: Backend) -> None:
    assert s3_only.client is not None
    assert s3_only.bucket is not None
    s3_only.client.put_object(
        bucket_name=s3_only.bucket, object_name="README.txt", data=io.BytesIO(b"hi"), length=2
    )
    key = key_of(16)
    s3_only.store.put(key, io.BytesIO(b"x"))
    assert list(s3_only.store.keys()) == [key]


def _settings(target: S3Target, tmp_path: Path, bucket: str, **extra: Any) -> Settings:
    return load_settings(data_dir=tmp_path, **target.settings_overrides(bucket=bucket), **extra)


def test_from_settings_creates_missing_bucket(s3_tls: S3Target, tmp_path: Path) -> None:
    client = s3_tls.client()
    bucket = s3_tls.new_bucket()
    assert not client.bucket_exists(bucket_name=bucket)
    try:
        settings = _settings(s3_tls, tmp_path, bucket)
        store = MinioStore.from_settings(settings)
        assert client.bucket_exists(bucket_name=bucket)
        assert store.part_size == choose_part_size(sealed_size(settings.max_file_size))
        store.check()
        key = key_of(17)
        store.put(key, io.BytesIO(b"through from_settings over TLS"))
        assert read_back(store, key) == b"through from_settings over TLS"
        MinioStore.from_settings(settings).check()  # existing bucket: fine
    finally:
        _drop_bucket(client, bucket)


def test_check_on_missing_bucket_is_storage_unavailable(s3: S3Target) -> None:
    store = MinioStore(client=s3.client(), bucket=s3.new_bucket(), part_size=TEST_PART_SIZE)
    with pytest.raises(StorageUnavailable):
        store.check()


@pytest.mark.parametrize(
    "overrides",
    [
        {"s3_endpoint": None},
        {"s3_endpoint": "https://127.0.0.1:9000"},
        {"s3_endpoint": "127.0.0.1:9000/bucket"},
        {"s3_access_key": None},
        {"s3_secret_key": None},
        {"s3_ca_file": Path("/nonexistent/ca.pem")},
        {"s3_bucket": "Not_A_Bucket"},
        {"s3_secure": False, "s3_object_lock_days": 1},
    ],
)
def test_from_settings_refuses_bad_config(tmp_path: Path, overrides: dict[str, Any]) -> None:
    base = S3Target(endpoint="127.0.0.1:9", access_key="a", secret_key="b", secure=True)
    settings_kwargs = base.settings_overrides(bucket="vault-bad-config") | overrides
    with pytest.raises(ConfigError):
        MinioStore.from_settings(load_settings(data_dir=tmp_path, **settings_kwargs))


# --- object lock (moto over HTTPS: minio-py only sends Content-MD5 over TLS) ---------------


def test_object_lock_keeps_versions(s3_tls: S3Target, tmp_path: Path) -> None:
    client = s3_tls.client()
    bucket = s3_tls.new_bucket()
    settings = _settings(s3_tls, tmp_path, bucket, s3_object_lock_days=1)
    store = MinioStore.from_settings(settings)  # creates the bucket with object lock
    assert client.get_object_lock_config(bucket_name=bucket) is not None
    now = dt.datetime.now(dt.UTC)
    key = key_of(18)
    data = os.urandom(100)
    store.put(key, io.BytesIO(data))
    stat = client.stat_object(bucket_name=bucket, object_name=key)
    headers = {name.lower(): value for name, value in (stat.metadata or {}).items()}
    assert headers["x-amz-object-lock-mode"] == "COMPLIANCE"
    until = dt.datetime.fromisoformat(headers["x-amz-object-lock-retain-until-date"])
    assert now + dt.timedelta(hours=23) < until <= now + dt.timedelta(days=1, minutes=5)
    version = stat.version_id
    assert version
    with pytest.raises(S3Error) as refused:
        client.remove_object(bucket_name=bucket, object_name=key, version_id=version)
    assert refused.value.code == "AccessDenied"
    # The store's delete hides the object (delete marker) but the locked version stays.
    store.delete(key)
    assert key not in set(store.keys())
    with pytest.raises(NotFound):
        store.size(key)
    kept = client.get_object(bucket_name=bucket, object_name=key, version_id=version)
    try:
        assert kept.read() == data
    finally:
        kept.close()
        kept.release_conn()
    with pytest.raises(S3Error):
        client.remove_object(bucket_name=bucket, object_name=key, version_id=version)
    # Locked versions cannot be removed, so the bucket stays in moto's memory until exit.


def test_object_lock_retention_is_sent_on_multipart_uploads(s3_tls: S3Target) -> None:
    """moto 5.2.5 ignores lock headers on CreateMultipartUpload (real S3/MinIO apply them),
    so this checks the request the SDK sends, from minio-py's own HTTP trace."""
    client = s3_tls.client()
    bucket = s3_tls.new_bucket()
    store = MinioStore(client=client, bucket=bucket, part_size=TEST_PART_SIZE, object_lock_days=1)
    store.ensure_bucket()
    trace = io.StringIO()
    client.trace_on(trace)
    try:
        store.put(key_of(19), io.BytesIO(os.urandom(6 * MiB)))
    finally:
        client.trace_off()  # type: ignore[no-untyped-call]
    requests = [r.strip() for r in trace.getvalue().split("---------START-HTTP---------")]
    requests = [r for r in requests if r]
    create = [r for r in requests if r.splitlines()[0].startswith("POST ") and "?uploads=" in r]
    assert len(create) == 1
    assert "X-Amz-Object-Lock-Mode: COMPLIANCE" in create[0]
    assert "X-Amz-Object-Lock-Retain-Until-Date: " in create[0]
    parts = [r for r in requests if "partNumber=" in r.splitlines()[0]]
    assert len(parts) == 2
    assert all("Content-Md5: " in r for r in parts)


def test_object_lock_refuses_an_unlocked_bucket(s3_tls: S3Target, tmp_path: Path) -> None:
    client = s3_tls.client()
    bucket = s3_tls.new_bucket()
    client.make_bucket(bucket_name=bucket)
    try:
        with pytest.raises(ConfigError):
            MinioStore.from_settings(_settings(s3_tls, tmp_path, bucket, s3_object_lock_days=1))
    finally:
        _drop_bucket(client, bucket)


# --- part size -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "max_file_size",
    [1, 16 * MiB, Settings().max_file_size, 100 * 1024**3, 1024**4, 5 * 1024**4],
    ids=["1B", "16MiB", "default", "100GiB", "1TiB", "5TiB"],
)
def test_choose_part_size_keeps_parts_within_the_s3_limit(max_file_size: int) -> None:
    largest = sealed_size(max_file_size)
    part = choose_part_size(largest)
    assert part >= 16 * MiB
    assert part % MiB == 0
    assert part <= 5 * 1024 * MiB
    assert -(-largest // part) <= 9_000 < MAX_PARTS


def test_choose_part_size_default_is_16_mib() -> None:
    assert choose_part_size(sealed_size(Settings().max_file_size)) == 16 * MiB


def test_choose_part_size_refuses_impossible_sizes() -> None:
    with pytest.raises(ConfigError):
        choose_part_size(9_001 * 5 * 1024 * MiB)


# --- local only ------------------------------------------------------------------------------


def test_local_refuses_symlinked_shard_outside_root(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    store = LocalDiskStore(root=root)
    key = "ab" + "0" * 62
    (root / "ab").symlink_to(outside, target_is_directory=True)
    calls: list[Callable[[], object]] = [
        lambda: store.put(key, io.BytesIO(b"secret")),
        lambda: store.size(key),
        lambda: store.delete(key),
        lambda: read_back(store, key),
    ]
    for call in calls:
        with pytest.raises(StorageUnavailable):
            call()
    assert list(outside.rglob("*")) == []
    assert store.stray_temp_files() == []


def test_local_keys_skip_folders_symlinks_and_misplaced_ids(tmp_path: Path) -> None:
    """Only the regular files put wrote are keys: not a folder (even one named by an id), nor a
    symlink (gc would delete the file it points at, _path resolving it), nor an id in another
    id's shard folder (where _path does not look), nor what a symlinked shard folder holds."""
    root = tmp_path / "objects"
    store = LocalDiskStore(root=root)
    key = "abcd" + "0" * 60
    store.put(key, io.BytesIO(b"x"))
    shard = root / "ab" / "cd"
    (shard / ("abcd" + "1" * 60)).mkdir()
    (shard / ".snapshot").mkdir()
    (shard / ("abcd" + "2" * 60)).symlink_to(shard / key)
    (shard / ("ffff" + "3" * 60)).write_bytes(b"misplaced")
    (root / "ab" / "notes.txt").write_bytes(b"a file among the shard folders")
    (root / "ab" / "ce").symlink_to(shard, target_is_directory=True)
    outside = tmp_path / "elsewhere" / "ee"
    outside.mkdir(parents=True)
    (outside / ("eeee" + "4" * 60)).write_bytes(b"outside the store")
    (root / "ee").symlink_to(outside.parent, target_is_directory=True)
    assert list(store.keys()) == [key]
    store.delete(key)
    assert list(store.keys()) == []
    assert (outside / ("eeee" + "4" * 60)).is_file()


def _folders_synced(root: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record the folders os.fsync is called on (as device and inode), still syncing them."""
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            synced.append((status.st_dev, status.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced


def _names(root: Path, synced: list[tuple[int, int]]) -> set[str]:
    """The folders under ``root`` (relative, "." for root) among ``synced``."""
    folders = [root, *(path for path in root.rglob("*") if path.is_dir())]
    by_inode = {(p.stat().st_dev, p.stat().st_ino): str(p.relative_to(root)) for p in folders}
    return {by_inode[inode] for inode in synced}


def test_local_put_makes_new_shard_folders_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder put creates is an entry in its parent, lost in a crash unless the parent is
    fsynced too; folders already there cost no extra fsync. (No crash can be staged in a test:
    what is asserted is which folders were fsynced, by the real fsync, before put returned.)"""
    root = tmp_path / "objects"
    store = LocalDiskStore(root=root)
    synced = _folders_synced(root, monkeypatch)
    store.put("abcd" + "0" * 60, io.BytesIO(b"x"))
    assert _names(root, synced) == {".", "ab", "ab/cd"}
    synced.clear()
    store.put("abcd" + "1" * 60, io.BytesIO(b"x"))  # the common path: both folders exist
    assert _names(root, synced) == {"ab/cd"}
    synced.clear()
    store.put("abef" + "0" * 60, io.BytesIO(b"x"))  # root/ab exists, root/ab/ef is new
    assert _names(root, synced) == {"ab", "ab/ef"}
