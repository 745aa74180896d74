"""The auditors' ledger page with a filter: each request reads a bounded stretch of the ledger
(at most ledger_ops.SEARCH_BUDGET entries), newest first, and links to the search below it;
following the links finds exactly what a scan of the whole ledger in the auditor's scope finds.

Before, a filtered page decoded, and opened, every entry of the ledger on every request
(review "web", finding 1)."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from blo_vault.api.app import create_app
from tests.conftest import PASSWORD, World
from tests.ui.conftest import Browser
from vault.errors import NotFound
from vault.ledger import log as ledger
from vault.ledger.entry import Entry, decode
from vault.models import Classification, Role
from vault.schemas import NewPackage
from vault.service import IncomingFile, ledger_ops, local_operator

ROW = re.compile(
    r'<tr class="decision-([a-z]+)">\s*<td>(\d+)</td>\s*<td>[^<]*</td>\s*<td>([^<]*)</td>'
)
OLDER = re.compile(r'rel="next" href="([^"]+)"')


def add_entries(world: World, count: int, **fields: str) -> None:
    """Append ``count`` committed entries at once (one transaction), by uz.officer unless
    ``fields`` say otherwise: far faster than as many operations."""
    core = world.vault.core
    fields = {"action": "read", "decision": "allow", "reason": "ok", **fields}
    actor = ledger.Actor(user="uz.officer", agency="UZ-CUSTOMS", country="UZ")
    with core.tx() as session:
        records = [core.entry(actor=actor, **fields) for _ in range(count)]
        ledger.append_many(session, records, sink=core.openings)


def rows(page: str) -> list[tuple[int, str, str]]:
    """(seq, decision, actor cell) of each row of a ledger page."""
    return [(int(seq), decision, html.unescape(who)) for decision, seq, who in ROW.findall(page)]


def search(browser: Browser, query: str) -> Iterator[str]:
    """The pages of a filtered search, following each page's link to the older entries."""
    path: str | None = "/ui/audit/ledger?" + query
    while path is not None:
        answer = browser.client.get(path)
        assert answer.status_code == 200, answer.text
        yield answer.text
        link = OLDER.search(answer.text)
        path = "/ui/audit/ledger" + html.unescape(link.group(1)) if link else None


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch, world: World) -> dict[str, int]:
    """How many entries the ledger service decoded, opened and unsealed (the real functions,
    called through)."""
    counts = {"decoded": 0, "opened": 0, "unsealed": 0}

    def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return real(*args, **kwargs)

        return call

    # The service's own name for it: vault.ledger.entry.decode, imported.
    monkeypatch.setattr("vault.service.ledger_ops.decode", counting("decoded", decode))
    monkeypatch.setattr(ledger_ops, "_opened", counting("opened", ledger_ops._opened))
    openings = world.vault.core.openings
    monkeypatch.setattr(openings, "open_row", counting("unsealed", openings.open_row))
    return counts


def test_a_filtered_page_reads_at_most_the_search_budget(
    world: World, browser: Browser, counted: dict[str, int]
) -> None:
    budget = ledger_ops.SEARCH_BUDGET
    add_entries(world, 3 * budget)
    browser.sign_in("uz.auditor")
    size = world.vault.ledger_size()
    for query, found in (("actor=nobody", 0), ("decision=allow", 25)):
        counted.update(dict.fromkeys(counted, 0))
        page = browser.client.get(f"/ui/audit/ledger?{query}&upto={size}").text
        assert len(rows(page)) == found
        # Every entry here concerns UZ, so each one read is also unsealed and opened.
        assert 0 < counted["decoded"] + counted["opened"] <= budget
        assert 0 < counted["unsealed"] <= budget
        link = OLDER.search(page)
        assert link, "no link to the older entries"
        if not found:  # the whole budget searched in vain: the link goes on below it
            assert f"Searched entries {size - budget} to {size - 1}." in page
            assert f"upto={size - budget}" in html.unescape(link.group(1))


def test_a_filtered_search_reaches_matches_older_than_its_budget(
    world: World, browser: Browser
) -> None:
    add_entries(world, 3, decision="deny", reason="not_found", subject="the old ones")
    add_entries(world, 2 * ledger_ops.SEARCH_BUDGET + 10)
    browser.sign_in("uz.auditor")
    pages = list(search(browser, "decision=deny&actor=uz.officer"))
    assert len(pages) == 3  # the budget, the budget again, and the rest down to entry 0
    assert rows(pages[0]) == []
    assert "Search older entries" not in pages[-1]
    found = [seq for page in pages for seq, _, _ in rows(page)]
    assert len(found) == 3
    assert found == sorted(found, reverse=True)
    for page in pages[:-1]:
        assert "Search older entries" in page


def test_a_full_page_continues_below_its_last_row(world: World, browser: Browser) -> None:
    add_entries(world, 60)
    browser.sign_in("uz.auditor")
    first, second = list(search(browser, "decision=allow&actor=uz.officer"))[:2]
    newer, older = [seq for seq, _, _ in rows(first)], [seq for seq, _, _ in rows(second)]
    assert len(newer) == len(older) == 25
    assert older[0] == newer[-1] - 1  # the filler is contiguous: nothing skipped or repeated


def test_search_finds_what_a_full_scan_finds_in_each_auditors_scope(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Following the links of a filtered search gives the entries, and the fields of each,
    that the whole ledger filtered gives the same auditor (``ledger_show``): a counterpart's
    auditor sees no more of another country's exchange than before."""
    vault = world.vault
    vault.add_user(
        local_operator(), username="tj.auditor", agency="TJ-CUSTOMS", role=Role.AUDITOR,
        password=PASSWORD, clearance=Classification.SECRET,
    )  # fmt: skip
    meta = NewPackage(title="Seizure at Oybek", classification=Classification.RESTRICTED)
    up = vault.upload(world["uz.officer"], meta, [IncomingFile("n.txt", io.BytesIO(b"x"))])
    package = up.package.id
    vault.release(world["uz.officer"], package, country="KZ", agency="KZ-BORDER")
    vault.get_package(world["kz.officer"], package)
    with pytest.raises(NotFound):
        vault.get_package(world["tj.officer"], package)
    add_entries(world, 30)
    # A small budget, so that this small ledger takes several requests to search.
    monkeypatch.setattr(ledger_ops, "SEARCH_BUDGET", 40)
    size = vault.ledger_size()
    principal = vault.authenticate(vault.login("tj.auditor", PASSWORD).access_token)
    filters: dict[str, Callable[[Entry], bool]] = {
        "decision=allow": lambda e: e.decision == "allow",
        "decision=deny": lambda e: e.decision == "deny",
        "actor=kz.officer": lambda e: e.actor_user == "kz.officer",
        "actor=tj.officer": lambda e: e.actor_user == "tj.officer",
        f"package={package}": lambda e: e.package == package,
        "until=2999-12-31": lambda e: True,
    }
    results = {}
    for user in ("uz.auditor", "tj.auditor"):
        who = world["uz.auditor"] if user == "uz.auditor" else principal
        everything = [e for e in vault.ledger_show(who) if e.seq < size]
        with TestClient(create_app(vault=vault)) as client:
            browser = Browser(client)
            browser.sign_in(user)
            for query, keep in filters.items():
                shown = [r for page in search(browser, f"{query}&upto={size}") for r in rows(page)]
                expected = [
                    (
                        e.seq,
                        e.decision,
                        e.actor_user + f" · {e.actor_agency}" * bool(e.actor_agency),
                    )
                    for e in reversed(everything)
                    if keep(e)
                ]
                assert shown == expected, (user, query)
                results[user, query] = len(shown)
    # The comparisons were not all of empty lists: UZ opens the exchange's entries, TJ only
    # its own officer's refusal (it concerns TJ and UZ).
    assert results["uz.auditor", "actor=kz.officer"] > 0
    assert results["tj.auditor", "actor=kz.officer"] == 0
    assert results["tj.auditor", "actor=tj.officer"] > 0
    assert results["uz.auditor", f"package={package}"] > results["tj.auditor", f"package={package}"]


def test_each_filtered_page_is_a_recorded_search(world: World, browser: Browser) -> None:
    add_entries(world, 10)
    browser.sign_in("uz.auditor")
    size = world.vault.ledger_size()
    browser.client.get(f"/ui/audit/ledger?decision=deny&upto={size}")
    recorded = [
        e
        for e in world.vault.unscoped_entries(size)
        if e.action == "ledger" and e.actor_user == "uz.auditor"
    ]
    assert [(e.decision, e.subject) for e in recorded] == [("allow", f"search:0-{size}")]
