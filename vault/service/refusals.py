"""How refusals reach the ledger: every refusal of an operation (:func:`records_refusals`),
and, for callers not authenticated, within a budget (:class:`Refusals`).

Every refusal is in the ledger, and the ledger keeps everything forever: an entry per refused
request let anyone who could reach the port grow it without bound. A client sending a junk
bearer token in a loop wrote 835 entries a second (about 730 bytes each in SQLite: some
50 GB a day) into a log that can't be pruned, that every auditor verifies in full and that
witnesses cosign. The doors open to callers who have not proved who they are (bearer-token
authentication, refresh and login) therefore write one entry per refusal only within a
budget: a token bucket per client address and one for the whole process. Beyond it the
answer is the same (401, 429), but the refusal is counted instead, and its count goes into
the ledger as one summary entry per actor, action and reason a little later: nothing is lost,
only the time of each refusal. Refusals of authenticated callers are never summarised: they
are attributable to an account, which an administrator can disable.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from vault.errors import AccessDenied, Conflict, InvalidInput, NotFound, VaultError
from vault.ledger.log import Actor
from vault.schemas import is_id

if TYPE_CHECKING:
    from vault.service._core import Core
    from vault.service.principal import Principal

__all__ = [
    "PENDING",
    "REFUSALS",
    "SUMMARY_PREFIX",
    "RefusalBudget",
    "Refusals",
    "Suppressed",
    "client_key",
    "records_refusals",
]

logger = logging.getLogger(__name__)

# On a refusal raised inside a transaction: its entry, to write once the transaction has
# rolled back (Core.record_refusal, Core.tx).
PENDING = "_vault_pending_refusal"

# What an authenticated caller did wrong or may not do: each is a refusal and goes in the
# ledger. Failures of ours (IntegrityError, StorageUnavailable, ...) are not refusals; the
# operations that meet them record them as errors where they happen.
REFUSALS = (InvalidInput, NotFound, Conflict, AccessDenied)
# Arguments of an operation that name what it was about, and the ledger field for each.
_TARGET_ARGUMENTS = (("package_id", "package"), ("release_id", "release"), ("file_id", "file"))
_Operation = TypeVar("_Operation", bound=Callable[..., Any])
# A summary entry's subject: "suppressed:COUNT" (vault.ledger.entry documents it).
SUMMARY_PREFIX = "suppressed:"
# Client addresses whose buckets are remembered; the least recently seen is forgotten first.
# An attacker cycling through more addresses than this gets a fresh bucket for each, which is
# what the process-wide bucket is for.
MAX_ADDRESSES = 10_000
# Distinct (actor, action, reason) counted between two summaries; beyond it, refusals are
# counted under the anonymous actor, so the summaries of one interval stay few.
MAX_SUMMARIES = 64
_ANONYMOUS = Actor(user="")


class _HasCore(Protocol):
    core: Core


def records_refusals(action: str) -> Callable[[_Operation], _Operation]:
    """Make a service operation (principal first) record each refusal it raises that nothing
    recorded yet: a ``deny`` entry for ``action``, the error's code as reason, and its receipt
    on the error. One place, so no 409 or 422 of an operation can go unrecorded, and refusals
    recorded with a finer reason where they were raised are not recorded twice.

    Only ids that are well-formed go into the entry: whatever else a caller typed there (a
    password, a title) must not land in an append-only log.
    """

    def decorate(operation: _Operation) -> _Operation:
        signature = inspect.signature(operation)

        @functools.wraps(operation)
        def run(self: _HasCore, principal: Principal, /, *args: Any, **kwargs: Any) -> Any:
            try:
                return operation(self, principal, *args, **kwargs)
            except REFUSALS as exc:
                if exc.receipt is None and getattr(exc, PENDING, None) is None:
                    arguments = signature.bind_partial(self, principal, *args, **kwargs).arguments
                    target = {
                        field: arguments[name]
                        for name, field in _TARGET_ARGUMENTS
                        if is_id(arguments.get(name))
                    }
                    self.core.record_refusal(exc, principal.actor, action, exc.code, **target)
                raise

        return cast(_Operation, run)

    return decorate


def client_key(client: str) -> str:
    """The bucket a client address draws from: an IPv6 address by its /64 (one host's
    share of most networks: it can use any address in it), anything else as given."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 client a.b.c.d
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Bucket:
    """A token bucket: ``tokens`` left of ``capacity``, refilled at ``rate`` a second."""

    tokens: float
    stamp: float

    def take(self, now: float, capacity: float, rate: float) -> bool:
        self.tokens = min(capacity, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class RefusalBudget:
    """Which refusals of unauthenticated requests may have an entry of their own: at most
    ``per_address`` a minute from one client address (all at once, then one every 60 /
    ``per_address`` s) and ``total`` a minute from all of them, in this process."""

    def __init__(
        self, *, per_address: int, total: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._per_address = float(per_address)
        self._total = float(total)
        self._clock = clock
        self._lock = threading.Lock()
        self._addresses: OrderedDict[str, _Bucket] = OrderedDict()
        self._all = _Bucket(tokens=self._total, stamp=clock())

    def admit(self, client: str) -> bool:
        """Whether a refusal from ``client`` gets its own entry (taking from both buckets)."""
        key = client_key(client)
        with self._lock:
            now = self._clock()
            bucket = self._addresses.pop(key, None) or _Bucket(self._per_address, now)
            self._addresses[key] = bucket
            if len(self._addresses) > MAX_ADDRESSES:
                self._addresses.popitem(last=False)
            # The address's bucket first: a client over its own budget must not drain the
            # process's, which other clients' refusals still need.
            if not bucket.take(now, self._per_address, self._per_address / 60):
                return False
            if not self._all.take(now, self._total, self._total / 60):
                bucket.tokens += 1  # not spent: its entry was not written
                return False
            return True


# Writes a summary entry: (actor, action, reason, subject); raises if it could not.
Write = Callable[[Actor, str, str, str], object]


class Suppressed:
    """Refusals counted instead of recorded, and their summary entries: written through
    ``write`` ``interval`` seconds after the first refusal counted since the last summary
    (on a timer thread), and on :meth:`close` for whatever is still counted."""

    def __init__(self, write: Write, *, interval: float) -> None:
        self._write = write
        self._interval = interval
        self._lock = threading.Lock()
        # Held through a whole flush: close() waits for the timer's flush to be written before
        # the vault closes the ledger under it.
        self._flushing = threading.Lock()
        self._counts: dict[tuple[Actor, str, str], int] = {}
        self._timer: threading.Timer | None = None
        self._closed = False
        self.total = 0  # refusals counted by this process since it started (for metrics)

    def count(self, actor: Actor, action: str, reason: str) -> None:
        """Count one refusal for the next summary."""
        with self._lock:
            key = (actor, action, reason)
            if key not in self._counts and len(self._counts) >= MAX_SUMMARIES:
                key = (_ANONYMOUS, action, reason)
            self._counts[key] = self._counts.get(key, 0) + 1
            self.total += 1
            self._arm()

    def _arm(self) -> None:
        """Start the timer of the next summary, unless one runs or the vault closed (under
        the lock)."""
        if self._timer is None and not self._closed:
            self._timer = threading.Timer(self._interval, self.flush)
            self._timer.name = "vault-refusal-summary"
            self._timer.daemon = True
            self._timer.start()

    def pending(self) -> int:
        """Refusals counted and not yet in a summary entry."""
        with self._lock:
            return sum(self._counts.values())

    def flush(self) -> None:
        """Write a summary entry for each actor, action and reason counted so far. Counts
        whose entry could not be written (the database down) are kept for the next one."""
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
            self._timer = None
        unwritten: dict[tuple[Actor, str, str], int] = {}
        for (actor, action, reason), n in counts.items():
            try:
                self._write(actor, action, reason, f"{SUMMARY_PREFIX}{n}")
            except Exception:
                logger.exception("could not record a summary of %d refused %s requests", n, action)
                unwritten[(actor, action, reason)] = n
        if unwritten:
            with self._lock:
                for key, n in unwritten.items():
                    self._counts[key] = self._counts.get(key, 0) + n
                self._arm()

    def close(self) -> None:
        """Write what is still counted; no timer is started after this."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.flush()


class Refusals:
    """The budget and the counts of one process (Core.refusals): :meth:`refuse` records a
    refusal of a caller not authenticated through ``record`` (Core.record_refusal), or counts
    it when over budget; summaries are written through ``write``."""

    def __init__(
        self,
        *,
        per_address: int,
        total: int,
        interval: float,
        record: Callable[..., VaultError],
        write: Write,
    ) -> None:
        self.budget = RefusalBudget(per_address=per_address, total=total)
        self.suppressed = Suppressed(write, interval=interval)
        self._record = record

    def refuse(
        self,
        exc: VaultError,
        actor: Actor,
        action: str,
        reason: str,
        *,
        client: str,
        **target: str,
    ) -> VaultError:
        """``exc``, recorded if ``client`` (the caller's address) is within budget, else
        counted for a summary (and then without a receipt)."""
        if self.budget.admit(client):
            return self._record(exc, actor, action, reason, **target)
        self.suppressed.count(actor, action, reason)
        return exc

    def close(self) -> None:
        """Write the summary of what is still counted."""
        self.suppressed.close()
