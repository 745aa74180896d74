"""The auditors' pages (ledger, latest checkpoint, explain, a package's audit view: never a
title, filename or content) and the administrators' page, which points to the CLI."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.web.context import PREFIX, SignedIn
from api.web.forms import PAGE_SIZE, day_start, optional
from vault.authz import ACTIONS
from vault.ledger.entry import Entry

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
) -> Response:
    """Ledger entries, newest first, filtered by decision, actor, package and day."""
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

    # The service records the read, then streams the entries; filtering is the caller's.
    matching = [entry for entry in current.vault.ledger_show(current.user) if keep(entry)]
    matching.reverse()
    first = (page - 1) * PAGE_SIZE
    query = {
        "decision": decision,
        "actor": actor,
        "package": package,
        "since": since,
        "until": until,
    }
    return current.render(
        "ledger.html",
        entries=matching[first : first + PAGE_SIZE],
        total=len(matching),
        page=page,
        more=len(matching) > first + PAGE_SIZE,
        query=query,
        decisions=DECISIONS,
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
