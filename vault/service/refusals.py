"""How refusals reach the ledger: every refusal of an operation (:func:`records_refusals`),
and, for callers not authenticated, within a budget (:class:`Refusals`).

Every refusal is in the ledger, and the ledger keeps everything forever: an entry per
refused request let anyone who could reach the port grow it without bound. A client sending
a junk bearer token in a loop wrote 797 entries a second (722 bytes each in SQLite: 50 GB a
day; ``python -m bench.refusal_flood --no-budget``) into a log that can't be pruned, that
every auditor verifies in full and that witnesses cosign. The doors open to callers who have
not proved who they are (bearer-token authentication, refresh and login) therefore write one
entry per refusal only within a budget: a token bucket per client address and one for the
whole process. Beyond it the answer is the same (401, 429), but the refusal is counted
instead, and its count goes into the ledger a little later, in one summary entry per actor,
action, reason and ended session (:class:`Suppressed`): what is lost is the time of each
refusal. Refusals of authenticated callers are never summarised: they are attributable to an
account, which an administrator can disable.
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
from concurrent import futures
from concurrent.futures import Future
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


# Queues a summary entry, (actor, action, reason, subject), for group commit: the future
# fails if it could not be written. May raise at once (the ledger closed).
Submit = Callable[[Actor, str, str, str], "Future[int]"]
# What a summary is counted under: actor, action, reason and subject.
_Key = tuple[Actor, str, str, str]


def _named(actor: Actor) -> bool:
    """Whether ``actor`` is an account of this vault (not empty, not the pseudonym of a name
    no account has): such actors are few, as many as the accounts, so each keeps its own
    summary; the others, as many as an attacker cares to invent, are capped."""
    return bool(actor.user) and not actor.user.startswith("unknown:")


class Suppressed:
    """Refusals counted instead of recorded, and their summary entries: queued through
    ``submit`` ``interval`` seconds after the first refusal counted since the last summary
    (on a timer thread), and on :meth:`close` for whatever is still counted.

    A summary names what the refusals it counts had in common: the actor, action and reason,
    and for an account of this vault the subject too (the session, for a token whose session
    ended). Anonymous and pseudonymous actors share at most MAX_SUMMARIES summaries an
    interval (the rest under the empty actor). A summary that fails to commit is counted
    again for the next one; one that only commits late is not, so nothing is counted twice.
    """

    def __init__(self, submit: Submit, *, interval: float) -> None:
        self._submit = submit
        self._interval = interval
        self._lock = threading.Lock()
        # Held through a whole flush: close() waits for the timer's flush to have queued its
        # summaries before the vault closes the ledger under it.
        self._flushing = threading.Lock()
        self._counts: dict[_Key, int] = {}
        self._unnamed = 0  # keys in _counts whose actor is not an account
        self._timer: threading.Timer | None = None
        self._closed = False
        self.total = 0  # refusals counted by this process since it started (for metrics)

    def count(self, actor: Actor, action: str, reason: str, subject: str = "") -> None:
        """Count one refusal for the next summary."""
        key = (actor, action, reason, subject)
        with self._lock:
            self.total += 1
            if not self._closed:
                self._add(key, 1)
                self._arm()
                return
        self._failed(key, 1, RuntimeError("the vault closed"))  # logged: no summary follows

    def _add(self, key: _Key, n: int) -> None:
        """Count ``n`` under ``key``, or under the empty actor past the cap (under the lock)."""
        actor, action, reason, _ = key
        if not _named(actor):
            key = (actor, action, reason, "")  # an invented session id is no one's
            if key not in self._counts:
                if self._unnamed >= MAX_SUMMARIES:
                    key = (_ANONYMOUS, action, reason, "")
                self._unnamed += key not in self._counts
        self._counts[key] = self._counts.get(key, 0) + n

    def _arm(self) -> None:
        """Start the timer of the next summary, unless one runs or the vault closed (under
        the lock)."""
        if self._timer is None and not self._closed and self._counts:
            self._timer = threading.Timer(self._interval, self.flush)
            self._timer.name = "vault-refusal-summary"
            self._timer.daemon = True
            self._timer.start()

    def pending(self) -> int:
        """Refusals counted and not yet queued in a summary entry."""
        with self._lock:
            return sum(self._counts.values())

    def flush(self) -> list[Future[int]]:
        """Queue a summary entry for each key counted so far; their futures."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> list[Future[int]]:
        with self._lock:
            counts, self._counts, self._unnamed = self._counts, {}, 0
            timer, self._timer = self._timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()  # flushed early (close, tests): its timer has nothing left to do
        queued = []
        for key, n in counts.items():
            actor, action, reason, subject = key
            summary = f"{SUMMARY_PREFIX}{n}" + (f" {subject}" if subject else "")
            try:
                future = self._submit(actor, action, reason, summary)
            except VaultError as exc:  # the ledger closed
                self._failed(key, n, exc)
            else:
                future.add_done_callback(functools.partial(self._settled, key, n))
                queued.append(future)
        return queued

    def _settled(self, key: _Key, n: int, future: Future[int]) -> None:
        if (exc := future.exception()) is not None:
            self._failed(key, n, exc)

    def _failed(self, key: _Key, n: int, exc: BaseException) -> None:
        """A summary that could not be written: counted again for the next one, or, once the
        vault has closed, logged (the only record left of those refusals)."""
        actor, action, reason, _ = key
        with self._lock:
            if not self._closed:
                self._add(key, n)
                self._arm()
                return
        logger.error(
            "%d refused %s requests (%s, actor %r) could not be recorded: %s",
            n,
            action,
            reason,
            actor.user,
            exc,
        )

    def close(self, timeout: float = 60.0) -> None:
        """Write what is still counted, waiting up to ``timeout`` s for it to be committed;
        no timer is started after this. What could not be written is logged."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        futures.wait(self.flush(), timeout=timeout)
        with self._lock:
            self._closed = True
            late, self._counts = self._counts, {}
        for key, n in late.items():  # counted by a flush that failed in between
            self._failed(key, n, RuntimeError("the vault closed"))


class Refusals:
    """The budget and the counts of one process (Core.refusals): :meth:`refuse` records a
    refusal of a caller not authenticated through ``record`` (Core.record_refusal), or counts
    it when over budget; summaries are queued through ``submit``."""

    def __init__(
        self,
        *,
        per_address: int,
        total: int,
        interval: float,
        record: Callable[..., VaultError],
        submit: Submit,
    ) -> None:
        self.budget = RefusalBudget(per_address=per_address, total=total)
        self.suppressed = Suppressed(submit, interval=interval)
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
        self.suppressed.count(actor, action, reason, target.get("subject", ""))
        return exc

    def close(self) -> None:
        """Write the summary of what is still counted."""
        self.suppressed.close()
