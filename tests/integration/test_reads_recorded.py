"""Every read writes its ledger entry before its answer is sent: under load, the database is
stopped (as a crash would stop it) and, once it is back, every read that was answered has its
entry, with the receipt the answer carried.

On a private PostgreSQL cluster (never the shared server, which other tests use); skipped with
the reason when the server binaries are missing.
"""

from __future__ import annotations

import io
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from tests import pgcluster
from tests.conftest import FAST_ARGON2, PASSWORD, running_server, seed
from vault.config import load_settings
from vault.db import make_engine
from vault.ledger import log as ledger
from vault.ledger.entry import Entry, decode, opened
from vault.schemas import NewPackage
from vault.service import IncomingFile, Vault

pytestmark = pytest.mark.skipif(
    pgcluster.missing_reason() is not None, reason=pgcluster.missing_reason() or ""
)

ACTION = {"list": "list", "show": "read", "download": "download"}
USERS = ("uz.officer", "kz.officer")


@dataclass
class Answers:
    """What the clients were answered: (kind, user, receipt) of each 200, and the others."""

    answered: list[tuple[str, str, int]] = field(default_factory=list)
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, user: str, receipt: int) -> None:
        with self.lock:
            self.answered.append((kind, user, receipt))

    def fail(self) -> None:
        with self.lock:
            self.failed += 1

    def count(self) -> int:
        with self.lock:
            return len(self.answered)


def client(
    url: str,
    tokens: dict[str, str],
    files: list[tuple[str, str]],
    seed_: int,
    stop: threading.Event,
    out: Answers,
) -> None:
    """Reads (list, show, download start) in a loop until ``stop`` is set, into ``out``."""
    rng = random.Random(seed_)
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set():
            kind, user = rng.choice(list(ACTION)), rng.choice(USERS)
            package, file = rng.choice(files)
            path = {
                "list": "/packages?limit=5",
                "show": f"/packages/{package}",
                "download": f"/packages/{package}/files/{file}",
            }[kind]
            try:
                with http.stream(
                    "GET", path, headers={"Authorization": f"Bearer {tokens[user]}"}
                ) as reply:
                    status, receipt = reply.status_code, reply.headers.get("X-Vault-Receipt")
                    if status == 200:
                        reply.read()
            except httpx.HTTPError:
                out.fail()
                continue
            if status == 200:
                assert receipt is not None
                out.add(kind, user, int(receipt))
            else:
                out.fail()


def ledger_entries(url: str, vault: Vault) -> dict[int, Entry]:
    """Every entry in the ledger, by sequence number, opened with the vault's keys (a fresh
    connection: the vault's own pool saw the crash)."""
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            found = vault.core.openings.unscoped(session, 0, None)
            return {
                seq: decode(data, seq_hint=seq)
                if (o := found.get(seq)) is None
                else opened(data, o)
                for seq, data in ledger.iter_entries(session)
            }
    finally:
        engine.dispose()


def loaded_vault(url: str, data: Path) -> tuple[Vault, dict[str, str], list[tuple[str, str]]]:
    """A seeded vault on ``url``: both officers' tokens, and three packages of the Uzbek
    officer released to Kazakhstan (package id, file id)."""
    vault = Vault.open(load_settings(data_dir=data, database_url=url, **FAST_ARGON2))
    users = seed(vault)
    files = []
    for i in range(3):
        package = vault.upload(
            users["uz.officer"],
            NewPackage(title=f"report {i}"),
            [IncomingFile(name="a.bin", reader=io.BytesIO(bytes(20_000)))],
        ).package
        vault.release(users["uz.officer"], package.id, country="KZ")
        files.append((package.id, package.files[0].id))
    tokens = {u: vault.login(u, PASSWORD).access_token for u in USERS}
    return vault, tokens, files


def test_no_read_is_answered_without_its_entry_when_the_database_stops(tmp_path: Path) -> None:
    with pgcluster.private_cluster() as cluster:
        vault, tokens, files = loaded_vault(cluster.url, tmp_path / "data")
        try:
            with running_server(vault) as url:
                stop, results = threading.Event(), Answers()
                threads = [
                    threading.Thread(target=client, args=(url, tokens, files, i, stop, results))
                    for i in range(4)
                ]
                for thread in threads:
                    thread.start()
                # Under load (answers coming), however slowly a busy machine serves them.
                deadline = time.monotonic() + 60
                while results.count() <= 20 and time.monotonic() < deadline:
                    time.sleep(0.05)
                cluster.crash()  # mid-load: requests are in flight, some mid-commit
                time.sleep(1.0)
                stop.set()
                for thread in threads:
                    thread.join(timeout=60)
            cluster.start()
            entries = ledger_entries(cluster.url, vault)
        finally:
            vault.close()
    answered, failed = results.answered, results.failed
    # The load ran on both sides of the stop: reads were answered, and reads failed.
    assert len(answered) > 20
    assert failed > 0
    for kind, user, receipt in answered:
        entry = entries.get(receipt)
        assert entry is not None, f"{kind} by {user} answered with receipt {receipt}: no entry"
        assert (entry.action, entry.actor_user, entry.decision) == (ACTION[kind], user, "allow")
    assert len({receipt for _, _, receipt in answered}) == len(answered)
