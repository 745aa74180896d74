"""A read short of its ledger entry (the hot path of audited reads, vault.service.reads)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from vault.ledger.log import Record

_T = TypeVar("_T")


@dataclass(frozen=True)
class PendingRead(Generic[_T]):
    """A read that is authorised and done, short of its ledger entry: ``answer(receipt)``
    builds what the caller gets, and may only be called once ``record`` is committed
    (Core.finish, waiting on its thread; AuditedReads.finish, on an event loop).

    Split so that an event loop can wait for the commit without holding a thread: the
    database's answers are in ``answer``'s closure, the entry's receipt is not known before."""

    record: Record
    answer: Callable[[int], _T]
