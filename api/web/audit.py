"""The auditors' pages (ledger, latest checkpoint, explain, a package's audit view: never a
title, filename or content) and the administrators' page, which points to the CLI."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Query, Response

from blo_vault.api.web.context import PREFIX, SignedIn, Visit
from blo_vault.api.web.forms import PAGE_SIZE, day_start, optional
from vault.authz import ACTIONS
from vault.ledger import commit
from vault.ledger.entry import Entry, decode, opened
from vault.service.ledger_ops import LedgerSearch

router = APIRouter(include_in_schema=False)
DECISIONS = ("allow", "deny", "error")


@router.get(PREFIX + "/audit/ledger")
def ledger(
    current: SignedIn,
    decision: Annotated[str, Query(max_length=8)] = "",
    actor: Annotated[str, Query(max_length=64)] = "",
    package: Annotated[str, Query(max_length=32)] = "",
    since: Annotated[str, Query(max_length=10)] = "",
    until: Annotated[str, Query(max_length=10)] = "",
    page: Annotated[int, Query(ge=1, le=10**6)] = 1,
    upto: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> Response:
    """Ledger entries, newest first, filtered by decision, actor, package and day; pages count
    back from ``upto`` (the ledger's size when page 1 was shown), so the entries recorded
    meanwhile, such as these reads, don't shift them. With a filter there are no page
    numbers: each request searches a bounded stretch below ``upto`` and links to the search
    below the oldest entry it looked at (``page`` is then ignored)."""
    start, end = day_start(since, current.zone), day_start(until, current.zone, after=True)
    wanted_actor, wanted_package = optional(actor), optional(package)

    def keep(entry: Entry) -> bool:
        return (
            (not decision or entry.decision == decision)
            and (wanted_actor is None or entry.actor_user == wanted_actor)
            and (wanted_package is None or entry.package == wanted_package)
            and (start is None or entry.time >= start)
            and (end is None or entry.time < end)
        )

    first = (page - 1) * PAGE_SIZE
    if not any((decision, wanted_actor, wanted_package, start, end)):
        # Unfiltered: read just this page's entries, newest first, not the whole ledger.
        size = upto or current.vault.ledger_size()
        stop = max(0, size - first)
        got = current.vault.ledger_entries(current.user, max(0, stop - PAGE_SIZE), stop)
        # Committed entries the caller may see come with their openings (issue 18).
        openings = {o.seq: o for o in map(commit.Opening.from_json, got.openings)}
        entries = [
            _entry(base64.b64decode(raw), got.start + i, openings.get(got.start + i))
            for i, raw in enumerate(got.entries)
        ]
        return _ledger_page(current, entries[::-1], size, page, first + PAGE_SIZE < size, size)
    # Filtered: the service records the read and searches a bounded stretch of the ledger,
    # newest first, below ``upto``; the filter is ours. What it did not reach, the page links
    # to: the same search below the oldest entry it looked at (a cursor, not a page number,
    # so no request reads more than a bounded number of entries however old the matches).
    # Called on the ledger service itself: the Vault facade has no room left for a wrapper.
    found = current.vault.ledger.ledger_search(
        current.user, keep, limit=PAGE_SIZE, below=upto or None
    )
    more = found.low > 0
    return _ledger_page(current, found.entries, len(found.entries), 1, more, found.low, found)


def _entry(data: bytes, seq: int, opening: commit.Opening | None) -> Entry:
    return decode(data, seq_hint=seq) if opening is None else opened(data, opening)


def _ledger_page(
    current: Visit,
    entries: list[Entry],
    total: int,
    page: int,
    more: bool,
    upto: int,
    search: LedgerSearch | None = None,
) -> Response:
    query = current.request.query_params
    names = ("decision", "actor", "package", "since", "until")
    wanted = {name: query.get(name, "") for name in names} | {"upto": str(upto)}
    return current.render(
        "ledger.html",
        entries=entries,
        total=total,
        page=page,
        more=more,
        query=wanted,
        decisions=DECISIONS,
        search=search,
    )


@router.get(PREFIX + "/audit/checkpoint")
def checkpoint(current: SignedIn) -> Response:
    """The latest signed checkpoint: size, root, the signed note and the verifier key."""
    info = current.vault.latest_checkpoint(current.user)
    return current.render("checkpoint.html", info=info)


@router.get(PREFIX + "/audit/explain")
def explain(
    current: SignedIn,
    user: Annotated[str, Query(max_length=64)] = "",
    package: Annotated[str, Query(max_length=32)] = "",
    action: Annotated[str, Query(max_length=32)] = "",
) -> Response:
    """Why a user may or may not do an action to a package (the form, then the answer)."""
    answer = receipt = None
    if user or package or action:
        answer, receipt = current.vault.explain(
            current.user, username=user.strip(), package_id=package.strip(), action=action
        )
    return current.render(
        "explain.html",
        answer=answer,
        receipt=receipt,
        actions=ACTIONS,
        query={"user": user, "package": package, "action": action},
    )


@router.get(PREFIX + "/audit/packages/{package_id}")
def audit_package(package_id: str, current: SignedIn) -> Response:
    """A package's audit view: who, when, how sensitive, to whom; never content."""
    view, receipt = current.vault.audit_package(current.user, package_id)
    return current.render(
        "audit_package.html", classification=view.classification, view=view, receipt=receipt
    )


@router.get(PREFIX + "/admin")
def admin(current: SignedIn) -> Response:
    """Administration is done with the CLI; this page says so."""
    return current.render("admin.html")
