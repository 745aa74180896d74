"""The hot path of audited reads (a listing, a package's details, the start of a download):
the read on one thread, the wait for its ledger entry on an event loop.

Every read is recorded before it is answered, through group commit (vault.ledger.log): a
request waits for the one commit that carries its batch. A worker thread that waited for it
was blocked for the commit's fsync, and with a few dozen of them a server spent a fifth of its
CPU switching between threads that wanted the GIL back (``perf``: 46 context switches per read;
BENCHMARKS.md, "Issue 14, 2026-12-07 04:10"). Here the read part runs where the caller chooses
(:attr:`AuditedReads.inline`), returns a :class:`~vault.service.pending.PendingRead`, and the
event loop awaits the entry's commit holding no thread; only then is the answer built.
Refusals raised on the way are queued the same way and awaited before they are raised to the
client (:meth:`AuditedReads.settle`). What a caller receives is never ahead of its entry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from vault.errors import StorageUnavailable, VaultError
from vault.ledger.log import WAIT_SECONDS
from vault.service._core import UNCOMMITTED, Core, Principal
from vault.service.identity import IdentityService
from vault.service.packages import PackageService
from vault.service.pending import PendingRead

__all__ = ["AuditedReads"]

_T = TypeVar("_T")


class AuditedReads:
    """Reads as ``PendingRead``\\ s, and the awaiting of their entries (see the module)."""

    def __init__(self, core: Core, identity: IdentityService, packages: PackageService) -> None:
        self._core = core
        self._identity = identity
        self.listing = packages.listing
        self.package = packages.package
        self.start_download = packages.start_download

    @property
    def inline(self) -> bool:
        """Whether the read part may run on the event loop's own thread. On SQLite it may: a
        reader in WAL mode takes no lock and waits on no network, so it costs the loop only
        its CPU, which a worker thread would take from the loop through the GIL anyway. On
        PostgreSQL every statement waits for a round trip: that belongs on a worker thread."""
        return self._core.engine.dialect.name == "sqlite"

    def prepare(
        self,
        token: str,
        read: Callable[[Principal], PendingRead[_T]],
        caller: Callable[[Principal], None] = lambda _: None,
        *,
        client: str = "",
    ) -> PendingRead[_T]:
        """``read`` as the caller ``token`` speaks for (told to ``caller`` first), the lookup
        and the read in one read-only transaction. A refusal is raised with its entry queued,
        not committed: pass it to :meth:`settle` before answering. ``client`` is the caller's
        address (IdentityService.authenticate)."""
        core, identity = self._core, self._identity
        with core.deferring_refusals(), identity.reading_as(token, client=client) as principal:
            caller(principal)
            return read(principal)

    async def receipt(self, pending: PendingRead[Any]) -> int:
        """Queue ``pending``'s entry and wait, holding no thread, until it is committed."""
        return await _committed(self._core.submit(pending.record))

    async def finish(self, pending: PendingRead[_T]) -> _T:
        """``pending``'s answer, built once its entry is committed."""
        return pending.answer(await self.receipt(pending))

    async def settle(self, exc: VaultError) -> None:
        """Wait for the entry of a refusal raised by :meth:`prepare`, and put its receipt on
        it; StorageUnavailable instead if it could not be recorded."""
        future: Future[int] | None = getattr(exc, UNCOMMITTED, None)
        if future is not None:
            delattr(exc, UNCOMMITTED)
            exc.receipt = await _committed(future)


async def _committed(future: Future[int]) -> int:
    # The future can't be cancelled (GroupAppender.submit): a client that goes away stops
    # waiting here, and its entry is committed all the same.
    try:
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), WAIT_SECONDS)
    except TimeoutError:
        raise StorageUnavailable("the ledger did not answer in time") from None
