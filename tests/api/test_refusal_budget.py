"""The budget of refusals' entries through HTTP, on a real server on 127.0.0.1.

A client that is not authenticated gets the same answers over its budget as within it (401,
and 429 once a login is locked out), without a receipt: its refusals are counted into one
summary entry per actor, action and reason, written when the server stops (or a minute after
the first). The metrics show how many were counted. Every refusal is accounted for: entries
plus the counts of the summaries equal the requests refused.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_brute_force import WRONG, served
from tests.conftest import (
    FAST_ARGON2,
    METRICS_AUTH,
    METRICS_TOKEN,
    ON_POSTGRES,
    postgres_schema_url,
)
from tests.servers import spawn, wait_healthy
from vault.config import load_settings
from vault.service import Vault

BUDGET = 5


def test_junk_credentials_over_budget_get_the_same_answers_and_a_summary(
    tmp_path: Path,
) -> None:
    with served(
        tmp_path,
        refusal_entries_per_address=BUDGET,
        refusal_summary_seconds=3600,
        metrics_token=METRICS_TOKEN,
    ) as s:
        vault = s.world.vault
        start = vault.ledger_size()
        junk = {"Authorization": "Bearer not.a.token"}
        package = "0" * 32
        sends: list[Callable[[], httpx.Response]] = [
            lambda: s.client.get("/packages", headers=junk),  # the read routes' own check
            lambda: s.client.get(f"/packages/{package}", headers=junk),
            lambda: s.client.get("/ledger/checkpoint", headers=junk),  # other routes: a dependency
            lambda: s.client.post("/auth/refresh", json={"refresh_token": "junk"}),
            lambda: s.login("nobody.here", WRONG),
        ]
        requests = sends * 4
        replies = [send() for send in requests]
        assert [r.status_code for r in replies] == [401] * len(requests)
        receipts = [r.json()["error"]["receipt"] for r in replies]
        assert all(isinstance(r, int) for r in receipts[:BUDGET])
        assert receipts[BUDGET:] == [None] * (len(requests) - BUDGET)
        assert ["X-Vault-Receipt" in r.headers for r in replies] == [True] * BUDGET + [False] * (
            len(requests) - BUDGET
        )
        # Over budget or not, a refusal reads the same but for its receipt.
        for first, later in zip(replies, replies[BUDGET:], strict=False):
            if first.request.url.path == later.request.url.path:
                assert first.json()["error"]["code"] == later.json()["error"]["code"]

        scraped = s.client.get("/metrics", headers=METRICS_AUTH)
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(scraped.text)
            for sample in family.samples
        }
        assert values["vault_refusals_summarised"] == len(requests) - BUDGET

        # The budget spent was the peer's address's, as the server saw it, not everyone's.
        budget = vault.core.refusals.budget
        assert not budget.admit("127.0.0.1")
        assert budget.admit("")

        vault.core.refusals.close()  # what stopping the server does first
        entries = vault.unscoped_entries(start)
        singles = [e for e in entries if not e.subject.startswith("suppressed:")]
        summaries = [e for e in entries if e.subject.startswith("suppressed:")]
        assert len(singles) == BUDGET
        assert {(e.action, e.reason) for e in summaries} == {
            ("authenticate", "bad_token"),
            ("refresh", "bad_refresh_token"),
            ("login", "bad_credentials"),
        }
        assert all(e.decision == "deny" for e in summaries)
        counted = sum(int(e.subject.split(":")[1]) for e in summaries)
        assert len(singles) + counted == len(requests)


def test_a_server_that_stops_writes_its_summaries(tmp_path: Path) -> None:
    """``blovault serve`` stopped with SIGTERM (as docker stops it) writes what it counted."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_schema_url()) if ON_POSTGRES else None
        settings = load_settings(data_dir=tmp_path / "vault-data", database_url=url)
        Vault.open(settings).close()  # the schema and development keys
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        env.update({f"VAULT_{k.upper()}": str(v) for k, v in FAST_ARGON2.items()})
        env["VAULT_DATA_DIR"] = str(settings.data_dir)
        if url:
            env["VAULT_DATABASE_URL"] = url
        env["VAULT_REFUSAL_ENTRIES_PER_ADDRESS"] = "3"
        server = spawn(env, tmp_path / "server.log")
        try:
            wait_healthy(server)
            with httpx.Client(base_url=server.url, timeout=60) as client:
                for _ in range(10):
                    reply = client.get("/packages", headers={"Authorization": "Bearer junk"})
                    assert reply.status_code == 401
        finally:
            server.process.terminate()
            try:
                # uvicorn shuts the app down, then re-raises the signal it got.
                assert server.process.wait(timeout=30) in (0, -15), server.log.read_text()
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(timeout=10)
                raise
        vault = Vault.open(settings)
        stack.callback(vault.close)
        entries = [e for e in vault.unscoped_entries() if e.action == "authenticate"]
        assert [(e.reason, e.subject) for e in entries] == [("bad_token", "")] * 3 + [
            ("bad_token", "suppressed:7")
        ]
