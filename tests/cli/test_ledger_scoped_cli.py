"""`blovault ledger export --scoped` and `ledger verify --export` with openings (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FAST_ARGON2, METRICS_TOKEN, CliRunner, World
from vault.config import Settings, load_settings


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return load_settings(
        data_dir=tmp_path / "vault-data",
        database_url=database_url,
        metrics_token=METRICS_TOKEN,
        ledger_entry_version=2,
        **FAST_ARGON2,
    )


def test_scoped_export_verifies_and_a_changed_opening_fails(
    cli: CliRunner, world: World, tmp_path: Path
) -> None:
    public, scoped = tmp_path / "public.json", tmp_path / "scoped.json"
    assert cli("ledger", "export", "-o", public).code == 0
    assert cli("ledger", "export", "-o", scoped, "--scoped").code == 0
    document = json.loads(scoped.read_text())
    assert "openings" not in json.loads(public.read_text())
    # The local operator is an admin: the seeding (user and agency management) opens for it.
    assert document["openings"]
    vkey = world.vault.ledger_vkey
    for path in (public, scoped):
        result = cli("ledger", "verify", "--export", path, "--vkey", vkey)
        assert result.code == 0, result.stdout + result.stderr
    document["openings"][0]["fields"]["subject"][1] = "agency:XX-FORGED"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(document))
    result = cli("ledger", "verify", "--export", forged, "--vkey", vkey)
    assert result.code == 1
    assert "opening" in result.stdout + result.stderr
