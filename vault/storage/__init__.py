"""Object stores for sealed content: one interface, two backends, one contract suite.

Keys are opaque ids chosen by the vault (never titles, filenames or country codes). A ``put``
is all-or-nothing: a reader never sees a partly written object, and a failed or interrupted
``put`` leaves no object under the key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from vault.errors import InvalidInput

__all__ = [
    "ObjectReader",
    "ObjectStore",
    "check_key",
    "open_store",
]

if TYPE_CHECKING:
    from vault.config import Settings
    from vault.crypto import Readable

# Opaque ids only: lowercase hex, 32 to 64 characters. Nothing a user typed can match this
# except an id, so no key can name a path or carry a title.
_KEY = re.compile(r"[0-9a-f]{32,64}")


def check_key(key: str) -> str:
    """Return ``key`` if it is an opaque object id; InvalidInput otherwise."""
    if not _KEY.fullmatch(key):
        raise InvalidInput("object keys must be opaque hex ids")
    return key


class ObjectReader(Protocol):
    """An open stored object: read it in chunks, then close it (a context manager)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class ObjectStore(Protocol):
    """What every backend provides. Missing keys raise NotFound; outages StorageUnavailable."""

    def put(self, key: str, source: Readable) -> int:
        """Stream ``source`` to EOF into a new object; return its size. Atomic."""
        ...

    def open(self, key: str) -> AbstractContextManager[ObjectReader]:
        """Open an object for streamed reading."""
        ...

    def size(self, key: str) -> int:
        """Stored size in bytes."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; removing a missing object is not an error."""
        ...

    def keys(self) -> Iterator[str]:
        """Every key in the store (for garbage collection)."""
        ...

    def modified(self, key: str) -> datetime:
        """When the object was last written (aware UTC), so garbage collection can spare
        objects of uploads still in flight."""
        ...

    def sweep_incomplete(self, older_than: datetime) -> int:
        """Remove leftovers of writes interrupted before ``older_than``; return how many."""
        ...

    def check(self) -> None:
        """Raise StorageUnavailable unless the store is reachable and writable."""
        ...


def open_store(settings: Settings) -> ObjectStore:
    """The store the settings name (local folder by default, MinIO/S3 in production)."""
    if settings.store == "minio":
        from vault.storage.minio import MinioStore

        return MinioStore.from_settings(settings)
    from vault.storage.local import LocalDiskStore

    return LocalDiskStore(root=settings.resolved_store_dir)
