"""The server's process takes its start-up objects out of the cyclic collector's sight and
collects the young generation less often (api/memory.py, settle_startup_objects), where
uvicorn and ``blovault serve`` load the app; processes that build apps as they go don't."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

from blo_vault.api import memory
from vault.config import Settings
from vault.service import Vault

PROBE = (
    "import gc, json\n"
    "from blo_vault.api import asgi\n"
    "print(json.dumps({'frozen': gc.get_freeze_count(), 'young': gc.get_threshold()[0],"
    " 'routes': len(asgi.app.routes)}))\n"
)


def test_the_server_entry_point_settles_its_startup_objects(settings: Settings) -> None:
    Vault.open(settings).close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env["VAULT_DATA_DIR"] = str(settings.data_dir)
    if settings.database_url:
        env["VAULT_DATABASE_URL"] = settings.database_url
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found["routes"] > 10
    assert found["young"] == memory.GC_YOUNG_THRESHOLD
    # Everything alive once the app was built: tens of thousands of objects, not a handful.
    assert found["frozen"] > 10_000


def test_building_an_app_leaves_the_collector_alone(settings: Settings) -> None:
    from blo_vault.api.app import create_app

    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    vault = Vault.open(settings)
    try:
        create_app(vault=vault)
    finally:
        vault.close()
    assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)
