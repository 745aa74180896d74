"""The vault's witnessed-checkpoint record and the server publisher's configuration."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from tests.conftest import World
from vault.config import load_settings
from vault.db import session_scope
from vault.errors import ConfigError
from vault.models import utcnow
from vault.service import Vault
from vault.witness.core import MAX_SIZE
from vault.witness.cosignature import MAX_TIMESTAMP, Cosigner
from vault.witness.published import latest_witnessed, record_lags, store_witnessed, witness_status
from vault.witness.publisher import WitnessLag


def test_the_witnessed_checkpoint_never_moves_backwards(world: World) -> None:
    engine = world.vault.engine
    now = utcnow()
    with session_scope(engine) as session:
        assert latest_witnessed(session) is None
        assert store_witnessed(session, "note at 10", 10, now=now)
    with session_scope(engine) as session:
        assert store_witnessed(session, "note at 12", 12, now=now + timedelta(seconds=1))
    with session_scope(engine) as session:
        # An older publisher's smaller checkpoint arrives late: kept out.
        assert not store_witnessed(session, "note at 11", 11, now=now + timedelta(seconds=2))
    with session_scope(engine) as session:
        # The same size again (a witness caught up: more cosignatures) replaces it.
        assert store_witnessed(session, "note at 12, three", 12, now=now + timedelta(seconds=3))
    with Session(engine) as session:
        row = latest_witnessed(session)
        assert row is not None
        assert (row.size, row.note) == (12, "note at 12, three")


def test_lags_no_column_holds_are_stored_within_range(world: World) -> None:
    """Sizes and times come from witnesses: one out of range must not fail the round's
    transaction, which holds the witnessed checkpoint too."""
    engine = world.vault.engine
    now = utcnow()
    lags = [
        WitnessLag("HUGE", size=10**30, cosigned_at=MAX_TIMESTAMP, error="x" * 1000),
        WitnessLag("NEGATIVE", size=-1, cosigned_at=-(10**30)),
        WitnessLag("FINE", size=7, cosigned_at=1_700_000_000),
    ]
    with session_scope(engine) as session:
        assert store_witnessed(session, "note at 7", 7, now=now)
        record_lags(session, lags, now=now)
    with Session(engine) as session:
        assert latest_witnessed(session) is not None
        stored = {lag.name: lag for lag in witness_status(session, now=now).witnesses}
    assert (stored["HUGE"].size, stored["HUGE"].cosigned_at) == (MAX_SIZE, None)
    assert stored["HUGE"].error == "x" * 300
    assert (stored["NEGATIVE"].size, stored["NEGATIVE"].cosigned_at) == (0, None)
    assert stored["FINE"].size == 7
    assert stored["FINE"].cosigned_at is not None
    assert stored["FINE"].cosigned_at.timestamp() == 1_700_000_000


def test_cadence_defaults_to_ten_seconds() -> None:
    settings = load_settings()
    assert settings.witness_policy is None
    assert settings.witness_cadence_seconds == 10.0


def _open_with(world: World, policy: Path) -> Vault:
    return Vault.open(world.settings.model_copy(update={"witness_policy": policy}), create=False)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (None, "cannot read witness policy"),
        ("witness KZ {witness} http://127.0.0.1:1\nquorum KZ\n", "does not list this vault's log"),
        ("log {log}\nwitness KZ {witness}\nquorum KZ\n", "no witness with a URL"),
        ("log {log}\nquorum nobody\n", "quorum 'nobody' is not defined"),
    ],
)
def test_a_policy_the_publisher_cannot_use_stops_the_start(
    world: World, tmp_path: Path, policy: str | None, message: str
) -> None:
    path = tmp_path / "policy"
    if policy is not None:
        witness = Cosigner.generate("witness.kz.example/blo").vkey()
        path.write_text(policy.format(log=world.vault.ledger_vkey, witness=witness))
    vault = _open_with(world, path)
    try:
        with pytest.raises(ConfigError, match=message):
            vault.witness_publisher()
    finally:
        vault.close()


def test_no_policy_no_publisher(world: World) -> None:
    assert world.vault.witness_publisher() is None
