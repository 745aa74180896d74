"""A KEK rotation racing a purge, on PostgreSQL.

Under READ COMMITTED the rotation read a batch of keys (or ledger openings), re-wrapped them
in Python and wrote them back by id: a purge committing in between had its destroyed keys
written back, re-wrapped under the new KEK, and a copy of the ciphertext opened again; the
destroyed openings came back too, no longer tied to their package. The rotation now locks
the rows it reads, so the purge waits and then destroys what the rotation wrote. SQLite's
writers are serial, so only PostgreSQL is tested here.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from tests.conftest import World, requires_postgres
from vault import crypto
from vault.models import LedgerEntry, Package, PackageFile
from vault.schemas import NewPackage
from vault.service import IncomingFile, Vault, local_operator

pytestmark = requires_postgres

# How long the purge is given to get in while the rotation holds its batch: ample for it to
# commit, had nothing locked the rows.
PURGE_SECONDS = 1.0

# Wraps a step of the rotation so that it holds the rotation's batch open.
Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def _upload(world: World, title: str) -> str:
    return world.vault.upload(
        world["uz.officer"],
        NewPackage(title=title),
        [IncomingFile("report.txt", io.BytesIO(b"informant's name and number"))],
    ).package.id


def _rotating(world: World, tmp_path: Path) -> Vault:
    """The same vault opened on a new KEK, the old one kept for re-wrapping."""
    old_kek = next(world.settings.data_dir.rglob("kek.b64"))
    new_kek = tmp_path / "kek-new.b64"
    new_kek.write_bytes(base64.b64encode(crypto.new_data_key()) + b"\n")
    new_kek.chmod(0o600)
    rotated = world.settings.model_copy(update={"kek_file": new_kek, "kek_old_files": [old_kek]})
    return Vault.open(rotated, create=False)


def _race(
    rotating: Vault,
    purger: Vault,
    package_id: str,
    hold: Callable[[Wrap], None],
) -> int:
    """Rotate on ``rotating`` while ``purger`` purges ``package_id``; ``hold`` wraps the step
    inside the rotation's batch that waits (its rows read, not yet written) for the purge to
    have had its chance. The purge's receipt."""
    paused = threading.Event()
    outcome: dict[str, object] = {}

    def rotate() -> None:
        outcome["rotated"] = rotating.rotate_kek(local_operator())

    def purge() -> None:
        outcome["purged"] = purger.purge(local_operator(), package_id).receipt

    hold_calls = {"n": 0}

    def holding(original: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            if hold_calls["n"] == 0:
                hold_calls["n"] += 1
                paused.set()
                time.sleep(PURGE_SECONDS)
            return original(*args, **kwargs)

        return step

    hold(holding)
    rotation = threading.Thread(target=rotate)
    rotation.start()
    assert paused.wait(30)
    purging = threading.Thread(target=purge)
    purging.start()
    rotation.join(60)
    purging.join(60)
    assert not rotation.is_alive()
    assert not purging.is_alive()
    receipt = outcome.get("purged")
    assert isinstance(outcome.get("rotated"), int)
    assert isinstance(receipt, int)
    return receipt


def test_a_purge_during_the_rotation_of_file_keys_stays_purged(
    pg_world: World, tmp_path: Path
) -> None:
    target = _upload(pg_world, "case A")
    _upload(pg_world, "case B")
    rotating = _rotating(pg_world, tmp_path)
    try:
        keyring = rotating.core.keys.keyring
        original = keyring.rewrap

        def hold(wrap: Wrap) -> None:
            held = wrap(original)

            def rewrap(wrapped: crypto.WrappedKey, *, context: bytes) -> crypto.WrappedKey:
                # The packages' batch is done by the first file key: hold that one.
                step = held if b"file" in context else original
                result: crypto.WrappedKey = step(wrapped, context=context)
                return result

            keyring.rewrap = rewrap  # type: ignore[method-assign]

        _race(rotating, pg_world.vault, target, hold)
        current = keyring.current.id
    finally:
        rotating.close()
    with Session(pg_world.vault.engine) as session:
        package = session.get(Package, target)
        assert package is not None
        assert package.purged_at is not None
        assert package.wrapped_key == b""
        files = session.exec(select(PackageFile).where(PackageFile.package_id == target)).all()
        assert files
        assert all(f.wrapped_key == b"" for f in files)
        others = session.exec(select(PackageFile).where(PackageFile.package_id != target)).all()
        assert others
        assert {f.kek_id for f in others} == {current}


def test_a_purge_during_the_resealing_of_openings_stays_purged(
    pg_world: World, tmp_path: Path
) -> None:
    target = _upload(pg_world, "case A")
    pg_world.vault.get_package(pg_world["uz.officer"], target)  # one more entry about it
    rotating = _rotating(pg_world, tmp_path)
    try:
        openings = rotating.core.openings

        def hold(wrap: Wrap) -> None:
            openings.open_row = wrap(openings.open_row)  # type: ignore[method-assign]

        receipt = _race(rotating, pg_world.vault, target, hold)
        with Session(rotating.engine) as session:
            sealed = session.exec(
                select(LedgerEntry).where(col(LedgerEntry.opening_sealed).is_not(None))
            ).all()
            about = [
                row.seq for row in sealed if openings.open_row(row).fields()["package"] == target
            ]
    finally:
        rotating.close()
    assert sealed
    # Only the purge's own entry still says what it was about (README "What the log reveals").
    assert about == [receipt]
