"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST_ARGON2, World, postgres_schema_url, seed
from vault.config import load_settings
from vault.service import Vault


@pytest.fixture
def pg_world(tmp_path: Path) -> Iterator[World]:
    """A seeded vault on a fresh PostgreSQL schema (for the tests that race transactions)."""
    with postgres_schema_url() as url:
        settings = load_settings(data_dir=tmp_path / "vault-data", database_url=url, **FAST_ARGON2)
        vault = Vault.open(settings)
        try:
            yield World(vault=vault, settings=settings, users=seed(vault))
        finally:
            vault.close()
