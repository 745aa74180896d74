"""Object store on MinIO or any S3 service, through the ``minio`` SDK.

Every object is written with one streamed upload of unknown length: a single PutObject when it
fits in one part, otherwise a multipart upload that only becomes visible when it is completed.
A put that fails part-way is aborted, so no object (and no new version of an old object)
appears. Object names are the vault's opaque ids; nothing else (no user metadata, no content
type beyond ``application/octet-stream``) is sent.

Failure mapping: a missing object is :class:`~vault.errors.NotFound`; anything that means "the
store did not do it" (connection refused or dropped, timeouts, TLS failures, S3 errors such as
5xx, access denied or a missing bucket) is :class:`~vault.errors.StorageUnavailable`, both
when opening and in the middle of reading. Errors raised by the *source* of a put propagate
unchanged (for example the size-limit error of a :class:`~vault.crypto.SealingReader`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

import urllib3
from minio import Minio
from minio.commonconfig import COMPLIANCE, ENABLED, Filter
from minio.datatypes import Object
from minio.error import MinioException, S3Error
from minio.helpers import check_bucket_name
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, LifecycleConfig, Rule
from minio.retention import Retention
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.response import BaseHTTPResponse
from urllib3.util import Retry, Timeout

from vault.crypto import sealed_size
from vault.errors import ConfigError, InvalidInput, NotFound, StorageUnavailable, TooLarge
from vault.storage import check_key

__all__ = [
    "CONNECT_TIMEOUT_SECONDS",
    "CONTENT_TYPE",
    "DEFAULT_MIN_PART_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "READ_TIMEOUT_SECONDS",
    "RETRIES",
    "MiB",
    "MinioStore",
    "choose_part_size",
]

if TYPE_CHECKING:
    from vault.config import Settings
    from vault.crypto import Readable

MiB = 1024**2
# S3 multipart limits.
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
# Our own floor and the part count we aim below (headroom under MAX_PARTS).
DEFAULT_MIN_PART_SIZE = 16 * MiB
_TARGET_PARTS = 9_000

CONTENT_TYPE = "application/octet-stream"

# Client-side network behaviour (production client built by from_settings).
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 120.0
RETRIES = 3

# Errors meaning "the store did not answer properly". OSError covers ConnectionError, socket
# timeouts and ssl.SSLError; urllib3's HTTPError covers MaxRetryError, ProtocolError (dropped
# or truncated responses), ReadTimeoutError and its SSLError; MinioException covers S3Error
# (any S3 error reply, including 5xx), ServerError and InvalidResponseError (non-XML replies).
_STORE_ERRORS = (MinioException, Urllib3Error, OSError)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchVersion"})


def choose_part_size(max_object_size: int) -> int:
    """Part size for streamed uploads of objects up to ``max_object_size`` bytes.

    At least 16 MiB; larger when needed so the biggest allowed object takes at most 9,000
    parts (S3 allows 10,000), rounded up to a whole MiB.
    """
    if max_object_size < 0:
        raise ValueError("max_object_size must not be negative")
    per_part = -(-max_object_size // _TARGET_PARTS)
    rounded = -(-per_part // MiB) * MiB
    size = max(DEFAULT_MIN_PART_SIZE, rounded)
    if size > MAX_PART_SIZE:
        raise ConfigError("the maximum file size is too large for S3 multipart uploads")
    return size


def _unavailable(exc: BaseException, doing: str) -> StorageUnavailable:
    """A StorageUnavailable with a short reason that names no endpoint, bucket or key."""
    reason = f"S3 error {exc.code}" if isinstance(exc, S3Error) else type(exc).__name__
    return StorageUnavailable(f"object store unavailable while {doing} ({reason})")


def _is_not_found(exc: S3Error) -> bool:
    return exc.code in _NOT_FOUND_CODES


class _SourceInterrupted(Exception):
    """Carries a BaseException from the source through minio's ``except Exception`` abort."""


class _UploadSource:
    """Wraps a put's source: fills each read, counts bytes, caps size, remembers its errors.

    minio-py's ``read_part_data`` grows each part with ``bytes +=``; filling every request
    here keeps that to one concatenation per part even for a source with tiny reads.
    """

    def __init__(self, source: Readable, *, limit: int) -> None:
        self._source = source
        self._limit = limit
        self.size = 0
        self.error: BaseException | None = None
        self._excess = b""

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self._fill(size)
            self.size += len(data)
            if self.size > self._limit:
                raise TooLarge("object is larger than the store's part size allows")
        except Exception as exc:
            self.error = exc
            raise
        except BaseException as exc:
            # minio aborts the multipart upload only on Exception; turn KeyboardInterrupt and
            # friends into one for the trip through put_object, and re-raise the original.
            self.error = exc
            raise _SourceInterrupted from exc
        return data

    def _fill(self, size: int) -> bytes:
        """Exactly ``size`` bytes unless the source ends first (all of it when ``size`` < 0)."""
        chunks = [self._excess] if self._excess else []
        got = len(self._excess)
        self._excess = b""
        while size < 0 or got < size:
            more = self._source.read(MiB if size < 0 else size - got)
            if not more:
                break
            chunks.append(bytes(more))
            got += len(more)
        data = b"".join(chunks)
        if 0 <= size < len(data):
            # A source that returns more than asked: keep the rest for the next read (minio's
            # read loop would otherwise overshoot its part size and never stop reading).
            data, self._excess = data[:size], data[size:]
        return data


class _ObjectReader:
    """A stored object being downloaded; transport failures become StorageUnavailable."""

    def __init__(self, response: BaseHTTPResponse) -> None:
        self._response = response

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._response.read(None if size < 0 else size)
        except _STORE_ERRORS as exc:
            raise _unavailable(exc, "reading an object") from exc

    def close(self) -> None:
        with contextlib.suppress(*_STORE_ERRORS):
            self._response.close()

    def __enter__(self) -> _ObjectReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _http_client(*, ca_file: Path | None) -> urllib3.PoolManager:
    """Connection pool with bounded timeouts and a few retries with backoff.

    Retries cover connection failures and 500/502/503/504 replies (on idempotent requests;
    urllib3 never re-sends a POST after it reached the server). Certificates are checked
    against ``ca_file`` when given, else the system trust store.
    """
    return urllib3.PoolManager(
        timeout=Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS),
        retries=Retry(
            total=RETRIES,
            connect=RETRIES,
            read=RETRIES,
            status=RETRIES,
            backoff_factor=0.5,
            status_forcelist=(500, 502, 503, 504),
        ),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=str(ca_file) if ca_file is not None else None,
    )


class MinioStore:
    """Objects in one S3 bucket, named by their opaque ids; see the module docstring."""

    def __init__(
        self, *, client: Minio, bucket: str, part_size: int, object_lock_days: int = 0
    ) -> None:
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError as exc:
            raise ConfigError(f"invalid S3 bucket name: {exc}") from None
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ConfigError("S3 part size must be between 5 MiB and 5 GiB")
        if object_lock_days < 0:
            raise ConfigError("object lock days must not be negative")
        self._client = client
        self.bucket = bucket
        self.part_size = part_size
        self.object_lock_days = object_lock_days

    @classmethod
    def from_settings(cls, settings: Settings) -> MinioStore:
        """Build the client from ``VAULT_S3_*`` settings and make sure the bucket exists."""
        endpoint = (settings.s3_endpoint or "").strip()
        if not endpoint:
            raise ConfigError("the minio store needs VAULT_S3_ENDPOINT (host:port)")
        if "://" in endpoint or "/" in endpoint:
            raise ConfigError(
                "VAULT_S3_ENDPOINT must be host:port without scheme or path "
                "(use VAULT_S3_SECURE for http/https)"
            )
        if settings.s3_access_key is None or settings.s3_secret_key is None:
            raise ConfigError("the minio store needs VAULT_S3_ACCESS_KEY and VAULT_S3_SECRET_KEY")
        if settings.s3_object_lock_days > 0 and not settings.s3_secure:
            # S3 requires Content-MD5 (or a checksum) on writes that carry retention, and
            # minio-py only sends Content-MD5 over TLS: over plain HTTP single-part puts fail.
            raise ConfigError("VAULT_S3_OBJECT_LOCK_DAYS needs VAULT_S3_SECURE=true (HTTPS)")
        ca_file = settings.s3_ca_file
        if ca_file is not None and not ca_file.is_file():
            raise ConfigError("VAULT_S3_CA_FILE does not name a readable file")
        try:
            client = Minio(
                endpoint=endpoint,
                access_key=settings.s3_access_key.get_secret_value(),
                secret_key=settings.s3_secret_key.get_secret_value(),
                secure=settings.s3_secure,
                region=settings.s3_region or None,
                http_client=_http_client(ca_file=ca_file),
            )
        except ValueError as exc:
            raise ConfigError(f"invalid S3 endpoint: {exc}") from None
        store = cls(
            client=client,
            bucket=settings.s3_bucket,
            part_size=choose_part_size(sealed_size(settings.max_file_size)),
            object_lock_days=settings.s3_object_lock_days,
        )
        store.ensure_bucket()
        return store

    def ensure_bucket(self) -> None:
        """Create the bucket if missing (with object lock when lock days are set).

        With object lock configured, an existing bucket without object lock is a ConfigError:
        S3 cannot add it later, and puts with retention would all fail.
        """
        lock = self.object_lock_days > 0
        try:
            if not self._client.bucket_exists(bucket_name=self.bucket):
                try:
                    self._client.make_bucket(bucket_name=self.bucket, object_lock=lock)
                except S3Error as exc:
                    if exc.code == "BucketAlreadyExists":
                        raise ConfigError("the S3 bucket name is taken by another owner") from None
                    if exc.code != "BucketAlreadyOwnedByYou":  # lost a creation race: fine
                        raise
            self._abort_stale_multipart_uploads()
            if lock:
                try:
                    self._client.get_object_lock_config(bucket_name=self.bucket)
                except S3Error as exc:
                    if exc.code == "ObjectLockConfigurationNotFoundError":
                        raise ConfigError(
                            "VAULT_S3_OBJECT_LOCK_DAYS is set but the bucket has no object lock"
                        ) from None
                    raise
        except _STORE_ERRORS as exc:
            raise _unavailable(exc, "preparing the bucket") from exc

    def _abort_stale_multipart_uploads(self) -> None:
        """Lifecycle rule: parts of interrupted uploads (a killed process) go after a day."""
        rule = Rule(
            rule_id="blo-vault-abort-incomplete-uploads",
            status=ENABLED,
            rule_filter=Filter(prefix=""),
            abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(
                days_after_initiation=1
            ),
        )
        try:
            self._client.set_bucket_lifecycle(
                bucket_name=self.bucket, config=LifecycleConfig([rule])
            )
        except S3Error as exc:
            # Some S3 implementations lack lifecycle support; the vault works without it.
            if exc.code not in ("NotImplemented", "MalformedXML"):
                raise

    def put(self, key: str, source: Readable) -> int:
        """Stream ``source`` to EOF into the object ``key``; return its size. Atomic."""
        check_key(key)
        upload = _UploadSource(source, limit=self.part_size * MAX_PARTS)
        retention = None
        if self.object_lock_days:
            until = dt.datetime.now(dt.UTC) + dt.timedelta(days=self.object_lock_days)
            retention = Retention(COMPLIANCE, until)
        try:
            self._client.put_object(
                bucket_name=self.bucket,
                object_name=key,
                data=cast(BinaryIO, upload),
                length=-1,
                content_type=CONTENT_TYPE,
                part_size=self.part_size,
                # One part at a time: minio's thread pool would leak its workers and could
                # race an upload against the abort when the source fails mid-stream.
                num_parallel_uploads=1,
                retention=retention,
            )
        except BaseException as exc:
            if upload.error is not None:
                # The source failed: minio has aborted the multipart upload (if one was
                # started) and nothing was completed. Surface the source's own error.
                if upload.error is exc:
                    raise
                raise upload.error from exc
            if isinstance(exc, _STORE_ERRORS):
                raise _unavailable(exc, "storing an object") from exc
            raise
        return upload.size

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[_ObjectReader]:
        """Stream the object; the HTTP response is closed and released on exit, always."""
        check_key(key)
        try:
            response = self._client.get_object(bucket_name=self.bucket, object_name=key)
        except S3Error as exc:
            if _is_not_found(exc):
                raise NotFound("object not found") from None
            raise _unavailable(exc, "opening an object") from exc
        except _STORE_ERRORS as exc:
            raise _unavailable(exc, "opening an object") from exc
        try:
            yield _ObjectReader(response)
        finally:
            try:
                with contextlib.suppress(*_STORE_ERRORS):
                    response.close()
            finally:
                response.release_conn()

    def _stat(self, key: str) -> Object:
        """The object's metadata; NotFound or StorageUnavailable as for every other call."""
        check_key(key)
        try:
            return self._client.stat_object(bucket_name=self.bucket, object_name=key)
        except S3Error as exc:
            if _is_not_found(exc):
                raise NotFound("object not found") from None
            raise _unavailable(exc, "reading object metadata") from exc
        except _STORE_ERRORS as exc:
            raise _unavailable(exc, "reading object metadata") from exc

    def size(self, key: str) -> int:
        """Stored size in bytes."""
        stat = self._stat(key)
        if stat.size is None:
            raise StorageUnavailable("object store returned no object size")
        return int(stat.size)

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is fine.

        In a versioned (object-locked) bucket this adds a delete marker: the object is gone
        from :meth:`open`, :meth:`size` and :meth:`keys`, its locked version stays.
        """
        check_key(key)
        try:
            self._client.remove_object(bucket_name=self.bucket, object_name=key)
        except S3Error as exc:
            if _is_not_found(exc):
                return
            raise _unavailable(exc, "deleting an object") from exc
        except _STORE_ERRORS as exc:
            raise _unavailable(exc, "deleting an object") from exc

    def keys(self) -> Iterator[str]:
        """Every object id in the bucket; names that are not vault ids are skipped."""
        try:
            for item in self._client.list_objects(bucket_name=self.bucket, recursive=True):
                name = item.object_name
                if name is None:
                    continue
                try:
                    check_key(name)
                except InvalidInput:
                    continue
                yield name
        except _STORE_ERRORS as exc:
            raise _unavailable(exc, "listing objects") from exc

    def modified(self, key: str) -> dt.datetime:
        """Last-modified time the store reports for the object."""
        stat = self._stat(key)
        if stat.last_modified is None:
            raise StorageUnavailable("object store returned no modification time")
        return stat.last_modified.astimezone(dt.UTC)

    def sweep_incomplete(self, older_than: dt.datetime) -> int:
        """Nothing to do here: an interrupted multipart upload never becomes an object, and the
        bucket's lifecycle rule (set by :meth:`ensure_bucket`) aborts its parts after a day."""
        return 0

    def check(self) -> None:
        """The endpoint must answer and the bucket must exist."""
        try:
            exists = self._client.bucket_exists(bucket_name=self.bucket)
        except _STORE_ERRORS as exc:
            raise _unavailable(exc, "checking the bucket") from exc
        if not exists:
            raise StorageUnavailable("object store bucket does not exist")
