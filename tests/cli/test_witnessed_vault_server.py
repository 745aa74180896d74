"""The vault server's own witness publisher (VAULT_WITNESS_POLICY), end to end: a real
``blovault serve`` process and three ``blovault witness serve`` processes on 127.0.0.1 under a
2-of-3 policy. The server publishes while one witness is stopped, never below the quorum,
catches the stopped ones up when they return, shows each witness's lag in ``/metrics`` and
``blovault ledger status``, and stops its publisher cleanly with the server.

Runs on the suite's backend: on PostgreSQL the server process shares the test's schema.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from tests.cli.test_witness_server import _stop, start_witness  # noqa: F401  (fixture)
from tests.conftest import FAST_ARGON2, METRICS_AUTH, METRICS_TOKEN, CliRunner, World
from tests.servers import Served, spawn, wait_healthy
from vault.schemas import WitnessStatus
from vault.service import Vault
from vault.witness.core import Witness, init_witness
from vault.witness.policy import Policy, parse_policy, verify_witnessed
from vault.witness.published import latest_witnessed

COUNTRIES = ("KZ", "TJ", "KG")
# The witnesses stamp cosignatures with the real clock; checks here run moments later.
WAIT_S = 60.0


def cosigners(note: str, policy: Policy) -> set[str]:
    return set(verify_witnessed(note, policy, now=int(time.time())).cosigned_at)


def witnessed_note(vault: Vault) -> str | None:
    with Session(vault.engine) as session:
        row = latest_witnessed(session)
        return None if row is None else row.note


def wait_for(what: str, vault: Vault, ok: Callable[[WitnessStatus], bool]) -> WitnessStatus:
    """Poll the vault's witness record until ``ok``; fail naming ``what`` after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        status = vault.witness_status()
        if ok(status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S} s: {what}; last status {status}")
        time.sleep(0.1)


def lag_of(status: WitnessStatus, name: str) -> tuple[int, str | None]:
    (lag,) = [w for w in status.witnesses if w.name == name]
    return lag.size, lag.error


@pytest.fixture
def vault_server(world: World, tmp_path: Path) -> Iterator[Callable[[Path], Served]]:
    """Start ``blovault serve`` on the world's database with a witness policy; stopped after."""
    started: list[Served] = []

    def start(policy: Path) -> Served:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        env |= {f"VAULT_{k.upper()}": str(v) for k, v in FAST_ARGON2.items()}
        env |= {
            "VAULT_DATA_DIR": str(world.settings.data_dir),
            "VAULT_WITNESS_POLICY": str(policy),
            "VAULT_WITNESS_CADENCE_SECONDS": "0.2",
            "VAULT_METRICS_TOKEN": METRICS_TOKEN,
        }
        if world.settings.database_url:
            env["VAULT_DATABASE_URL"] = world.settings.database_url
        served = spawn(env, tmp_path / "server.log")
        started.append(served)
        wait_healthy(served)
        return served

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait(timeout=15)


def test_server_publishes_at_quorum_catches_up_and_never_below(
    world: World,
    tmp_path: Path,
    start_witness: Callable[..., Served],  # noqa: F811
    vault_server: Callable[[Path], Served],
    cli: CliRunner,
) -> None:
    vault, auditor = world.vault, world["uz.auditor"]
    dirs, served, vkeys = {}, {}, {}
    for c in COUNTRIES:
        dirs[c] = tmp_path / f"{c.lower()}-witness"
        cosigner = init_witness(
            dirs[c], name=f"witness.{c.lower()}.example/blo", log_vkeys=[vault.ledger_vkey]
        )
        vkeys[c] = cosigner.vkey()
        served[c] = start_witness(dirs[c])
    policy_file = tmp_path / "policy"
    policy_file.write_text(
        f"log {vault.ledger_vkey}\n"
        + "".join(f"witness {c} {vkeys[c]} {served[c].url}\n" for c in COUNTRIES)
        + "group countries 2 KZ TJ KG\nquorum countries\n"
    )
    policy = parse_policy(policy_file.read_bytes())
    server = vault_server(policy_file)

    # All three up: the server publishes the ledger as it stands, cosigned by all three.
    size = vault.ledger_size()
    wait_for("all three cosign", vault, lambda s: all(w.size >= size for w in s.witnesses))
    status = wait_for("a witnessed checkpoint", vault, lambda s: (s.witnessed_size or 0) >= size)
    note = witnessed_note(vault)
    assert note is not None
    assert cosigners(note, policy) >= {"KZ", "TJ"}

    # KG stops; the ledger grows (each auditor read is an entry): 2 of 3 still publish.
    _stop(served["KG"])
    for _ in range(3):
        vault.latest_checkpoint(auditor)
    grown = vault.ledger_size()
    status = wait_for("publication without KG", vault, lambda s: (s.witnessed_size or 0) >= grown)
    note = witnessed_note(vault)
    assert note is not None
    assert cosigners(note, policy) == {"KZ", "TJ"}
    kg_size, kg_error = lag_of(status, "KG")
    assert kg_size < grown
    assert kg_error is not None
    assert "unreachable" in kg_error
    before_tj_stops = status.witnessed_size

    # TJ stops too: KZ alone cosigns the new head, but 1 of 3 is never published.
    _stop(served["TJ"])
    for _ in range(3):
        vault.latest_checkpoint(auditor)
    alone = vault.ledger_size()
    status = wait_for(
        "KZ cosigns alone and TJ is seen down",
        vault,
        lambda s: lag_of(s, "KZ")[0] >= alone and lag_of(s, "TJ")[1] is not None,
    )
    assert status.witnessed_size == before_tj_stops
    assert Witness.open(dirs["KZ"]).heads()[0].size >= alone
    note = witnessed_note(vault)
    assert note is not None
    assert cosigners(note, policy) == {"KZ", "TJ"}  # still the last quorum-met checkpoint

    # Lag in /metrics (read from the database the server's publisher writes).
    metrics = httpx.get(server.url + "/metrics", headers=METRICS_AUTH, timeout=30)
    assert metrics.status_code == 200
    assert f'vault_witness_cosigned_size{{witness="KG"}} {float(kg_size)}' in metrics.text
    assert 'vault_witness_up{witness="TJ"} 0.0' in metrics.text
    assert 'vault_witness_up{witness="KZ"} 1.0' in metrics.text

    # Both return on their old ports: caught up (KG from its old size), published by all three.
    for c in ("TJ", "KG"):
        served[c] = start_witness(dirs[c], int(served[c].url.rsplit(":", 1)[1]))
    status = wait_for(
        "all three caught up",
        vault,
        lambda s: (
            (s.witnessed_size or 0) >= alone
            and all(w.size >= alone and w.error is None for w in s.witnesses)
        ),
    )
    note = witnessed_note(vault)
    assert note is not None
    assert cosigners(note, policy) == {"KZ", "TJ", "KG"}

    shown = cli("ledger", "status")
    assert shown.code == 0, shown.stderr
    assert "witness KG: size" in shown.stdout
    assert "witnessed  " in shown.stdout

    # The server stops cleanly, its publisher with it.
    server.process.send_signal(signal.SIGTERM)
    try:
        # uvicorn re-raises the signal it handled once shut down: exit by SIGTERM, not a kill.
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    except subprocess.TimeoutExpired:
        pytest.fail("the server did not stop within 30 s")
    log = server.log.read_text(errors="replace")
    assert "Application shutdown complete" in log
    assert "Traceback" not in log
    assert "publishing round failed" not in log
