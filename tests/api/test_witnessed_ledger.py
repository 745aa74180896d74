"""The vault's own ledger published through witnesses: LedgerSource + Publisher against two
witness servers (the real witness app on uvicorn, 127.0.0.1) under a 2-of-2 policy, and under
a 2-of-3 policy whose third witness answers badly."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from blo_vault.api.witness import create_witness_app
from tests.conftest import World, serving
from vault.ledger.note import open_checkpoint, parse_note
from vault.service import Vault
from vault.witness.core import Witness, init_witness
from vault.witness.cosignature import MAX_TIMESTAMP, Cosigner
from vault.witness.ledger_source import LedgerSource
from vault.witness.policy import parse_policy, verify_witnessed
from vault.witness.publisher import Publisher, http_post
from vault.witness.running import PublishingThread

FAR_FUTURE = 2**40
Reply = tuple[int, str, str]


def ledger_source(vault: Vault) -> LedgerSource:
    """What the vault's publisher reads checkpoints and proofs from."""
    return LedgerSource(
        engine=vault.engine, origin=vault.settings.ledger_origin, key=vault.keys.ledger_key
    )


@contextlib.contextmanager
def witness_server(witness: Witness) -> Iterator[str]:
    """Serve ``witness`` on 127.0.0.1 in a thread; stop it on exit."""
    with serving(create_witness_app(witness)) as url:
        yield url


def test_vault_ledger_is_published_only_with_both_cosignatures(
    world: World, tmp_path: Path
) -> None:
    vault = world.vault
    auditor = world["uz.auditor"]
    log_vkey = vault.ledger_vkey
    witnesses = []
    for country in ("kz", "tj"):
        init_witness(
            tmp_path / country, name=f"witness.{country}.example/blo", log_vkeys=[log_vkey]
        )
        witnesses.append(Witness.open(tmp_path / country))
    source = ledger_source(vault)
    with witness_server(witnesses[0]) as kz_url, witness_server(witnesses[1]) as tj_url:
        policy = parse_policy(
            f"log {log_vkey}\n"
            f"witness KZ {witnesses[0].cosigner.vkey()} {kz_url}\n"
            f"witness TJ {witnesses[1].cosigner.vkey()} {tj_url}\n"
            "group both all KZ TJ\nquorum both\n"
        )
        publisher = Publisher(
            policy=policy, source=source, post=http_post(10.0), clock=lambda: FAR_FUTURE
        )
        first = publisher.publish_once()
        assert first is not None
        size_before = verify_witnessed(first, policy, now=FAR_FUTURE).checkpoint.size
        for _ in range(5):
            vault.latest_checkpoint(auditor)  # each read is recorded: the ledger grows
        second = publisher.publish_once()
        assert second is not None
        witnessed = verify_witnessed(second, policy, now=FAR_FUTURE)
        assert witnessed.checkpoint.size > size_before
        assert set(witnessed.cosigned_at) == {"KZ", "TJ"}
        # The witnessed head is the vault's own tree, and the publisher's reads added nothing.
        own = open_checkpoint(vault.checkpoint().note, [vault.ledger_verifier])
        assert (own.size, own.root_hash) == (
            witnessed.checkpoint.size,
            witnessed.checkpoint.root_hash,
        )
        assert witnesses[0].heads()[0].size == own.size
    # Both witnesses gone: the ledger still grows, nothing is published below quorum.
    vault.latest_checkpoint(auditor)
    assert publisher.publish_once() is None
    assert publisher.published == second


def test_appends_never_wait_for_a_witness_that_hangs(world: World) -> None:
    """A witness that takes the connection and never answers holds up only its round: the
    ledger takes appends (recorded reads) meanwhile, and nothing is published."""
    vault, auditor = world.vault, world["uz.auditor"]
    hanging = Cosigner.generate("witness.hang.example/blo")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        connected: list[socket.socket] = []
        accepted = threading.Event()

        def accept() -> None:
            conn, _ = listener.accept()
            connected.append(conn)
            accepted.set()

        threading.Thread(target=accept, daemon=True).start()
        policy = parse_policy(
            f"log {vault.ledger_vkey}\n"
            f"witness HANG {hanging.vkey()} http://127.0.0.1:{port}\nquorum HANG\n"
        )
        source = ledger_source(vault)
        with httpx.Client(timeout=120) as client:
            publishing = PublishingThread(
                engine=vault.engine,
                publisher=Publisher(policy=policy, source=source, post=http_post(client=client)),
                cadence=1.0,
            )
            round_thread = threading.Thread(target=publishing.round)
            round_thread.start()
            assert accepted.wait(60), "the round never reached the witness"
            before = vault.ledger_size()
            for _ in range(20):
                vault.latest_checkpoint(auditor)
            assert vault.ledger_size() == before + 20
            assert round_thread.is_alive()  # the round is still waiting for the witness
            for conn in connected:
                conn.close()  # the witness goes away: its round ends with an error
            round_thread.join(timeout=60)
            assert not round_thread.is_alive()
    status = vault.witness_status()
    assert status.witnessed_size is None
    (lag,) = status.witnesses
    assert lag.name == "HANG"
    assert lag.error is not None


def _cosigned_in(hours: float) -> Callable[[Cosigner, str], Reply]:
    def reply(cosigner: Cosigner, text: str) -> Reply:
        return 200, "text/plain", cosigner.cosign(text, int(time.time() + hours * 3600)).line()

    return reply


def _cosigned_at(timestamp: int) -> Callable[[Cosigner, str], Reply]:
    def reply(cosigner: Cosigner, text: str) -> Reply:
        return 200, "text/plain", cosigner.cosign(text, timestamp).line()

    return reply


def _size_conflict(size: str) -> Callable[[Cosigner, str], Reply]:
    def reply(cosigner: Cosigner, text: str) -> Reply:
        return 409, "text/x.tlog.size", size + "\n"

    return reply


def _breaks(cosigner: Cosigner, text: str) -> Reply:
    raise RuntimeError("the transport broke its contract")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        # A valid cosignature of its own, dated an hour ahead (a lie, or a clock far off):
        # verify_witnessed would reject the whole checkpoint for it.
        (_cosigned_in(1), "cosignature dated in the future"),
        # The latest a cosignature may be dated: past what a datetime holds.
        (_cosigned_at(MAX_TIMESTAMP), "cosignature dated in the future"),
        # A size no tree has: no proof can start there, and no column holds the second.
        (_size_conflict("-1"), "bad size in 409 reply: -1"),
        (_size_conflict("1" + "0" * 30), "bad size in 409 reply: 1000"),
        # A size above the log's: a rollback, a split view, or a lie; not taken as its size.
        (_size_conflict("1" + "0" * 15), "witness is ahead, at size 1000000000000000 (log"),
        # Whatever else goes wrong asking one witness stays that witness's failure.
        (_breaks, "internal error: RuntimeError: the transport broke its contract"),
    ],
    ids=["future", "max-timestamp", "size-negative", "size-huge", "size-ahead", "raises"],
)
def test_one_bad_witness_only_loses_its_own_cosignature(
    world: World, tmp_path: Path, answer: Callable[[Cosigner, str], Reply], error: str
) -> None:
    """2 of 3: two real witnesses cosign, the third answers badly. The honest quorum's
    checkpoint is stored in that same round, and ``ledger status`` names the bad witness."""
    vault = world.vault
    honest = []
    for country in ("kz", "tj"):
        init_witness(
            tmp_path / country, name=f"witness.{country}.example/blo", log_vkeys=[vault.ledger_vkey]
        )
        honest.append(Witness.open(tmp_path / country))
    bad = Cosigner.generate("witness.kg.example/blo")
    bad_url = "http://witness.kg.invalid"
    real = http_post(10.0)

    def post(url: str, body: bytes) -> Reply:
        if not url.startswith(bad_url):
            return real(url, body)
        # The bad witness's answer to this very checkpoint, as its HTTP reply would arrive.
        return answer(bad, parse_note(body.decode().split("\n\n", 1)[1]).text)

    source = ledger_source(vault)
    with witness_server(honest[0]) as kz_url, witness_server(honest[1]) as tj_url:
        policy = parse_policy(
            f"log {vault.ledger_vkey}\n"
            f"witness KZ {honest[0].cosigner.vkey()} {kz_url}\n"
            f"witness TJ {honest[1].cosigner.vkey()} {tj_url}\n"
            f"witness KG {bad.vkey()} {bad_url}\n"
            "group countries 2 KZ TJ KG\nquorum countries\n"
        )
        publishing = PublishingThread(
            engine=vault.engine,
            publisher=Publisher(policy=policy, source=source, post=post),
            cadence=1.0,
        )
        published = publishing.round()
    assert published is not None
    witnessed = verify_witnessed(published, policy, now=int(time.time()))
    assert set(witnessed.cosigned_at) == {"KZ", "TJ"}
    status = vault.witness_status()
    assert status.witnessed_size == witnessed.checkpoint.size
    lags = {lag.name: lag for lag in status.witnesses}
    assert lags["KZ"].error is None
    assert lags["TJ"].error is None
    assert lags["KG"].error is not None
    assert lags["KG"].error.startswith(error)
    assert (lags["KG"].size, lags["KG"].cosigned_at) == (0, None)
