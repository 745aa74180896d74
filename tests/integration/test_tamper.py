"""Tampered stored objects: every download is refused with an integrity error, nothing partial
is kept, and the failure is in the ledger.

The objects are changed on disk under the local store (``root/ab/cd/<id>``), exactly as an
attacker with access to the object folder could. Checked through the service (IntegrityError
while iterating ``download(...).chunks``) and through the CLI against a live server (exit code
6, and the output folder gains no file, not even a temp file).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from tests.conftest import FAST_ARGON2, CliRunner, World
from vault.config import load_settings
from vault.crypto import HEADER_SIZE, SEGMENT_SIZE, TAG_SIZE, sealed_size
from vault.errors import IntegrityError
from vault.ledger.entry import Entry, decode
from vault.models import LedgerEntry
from vault.schemas import NewPackage
from vault.service import IncomingFile, Principal, Vault

S = SEGMENT_SIZE
SEALED_SEGMENT = S + TAG_SIZE
BIG = 3 * S + 123  # four segments, the last one short
LoggedIn = Callable[[str], None]
Tamper = Callable[[World, list[str], list[str]], None]


def content(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def upload(world: World, user: str, files: dict[str, bytes], title: str = "Report") -> tuple[str, list[str]]:
    """Upload through the service; return the package id and its file ids in order."""
    result = world.vault.upload(
        world[user],
        NewPackage(title=title),
        [IncomingFile(name=name, reader=io.BytesIO(data)) for name, data in files.items()],
    )
    return result.package.id, [f.id for f in result.package.files]


def object_path(world: World, file_id: str) -> Path:
    path = world.settings.resolved_store_dir / file_id[:2] / file_id[2:4] / file_id
    assert path.is_file(), path
    return path


def rewrite(world: World, file_id: str, change: Callable[[bytes], bytes]) -> None:
    path = object_path(world, file_id)
    before = path.read_bytes()
    after = change(before)
    assert after != before
    path.write_bytes(after)


def flip_at(offset: int) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        out = bytearray(data)
        out[offset] ^= 0x10
        return bytes(out)

    return change


def segments_of(data: bytes) -> tuple[bytes, list[bytes]]:
    body = data[HEADER_SIZE:]
    return data[:HEADER_SIZE], [body[i : i + SEALED_SEGMENT] for i in range(0, len(body), SEALED_SEGMENT)]


# --- the tampers (each gets the world, the victim package's file ids, another package's) -------


def flip_first_segment(world: World, files: list[str], _other: list[str]) -> None:
    rewrite(world, files[-1], flip_at(HEADER_SIZE + 100))


def flip_later_segment(world: World, files: list[str], _other: list[str]) -> None:
    rewrite(world, files[-1], flip_at(HEADER_SIZE + 2 * SEALED_SEGMENT + 100))


def flip_last_tag(world: World, files: list[str], _other: list[str]) -> None:
    rewrite(world, files[-1], lambda d: d[:-1] + bytes([d[-1] ^ 1]))


def flip_header(world: World, files: list[str], _other: list[str]) -> None:
    rewrite(world, files[-1], flip_at(12))


def truncate_mid_segment(world: World, files: list[str], _other: list[str]) -> None:
    rewrite(world, files[-1], lambda d: d[: HEADER_SIZE + 2 * SEALED_SEGMENT + 500])


def truncate_at_segment_boundary(world: World, files: list[str], _other: list[str]) -> None:
    rewrite(world, files[-1], lambda d: d[: HEADER_SIZE + 3 * SEALED_SEGMENT])


def append_garbage(world: World, files: list[str], _other: list[str]) -> None:
    rewrite(world, files[-1], lambda d: d + b"\x00" * 32)


def swap_segments(world: World, files: list[str], _other: list[str]) -> None:
    def change(data: bytes) -> bytes:
        header, parts = segments_of(data)
        parts[1], parts[2] = parts[2], parts[1]
        return header + b"".join(parts)

    rewrite(world, files[-1], change)


def swap_objects_between_packages(world: World, files: list[str], other: list[str]) -> None:
    mine, theirs = object_path(world, files[-1]), object_path(world, other[-1])
    a, b = mine.read_bytes(), theirs.read_bytes()
    assert len(a) == len(b) and a != b
    mine.write_bytes(b)
    theirs.write_bytes(a)


def swap_objects_within_package(world: World, files: list[str], _other: list[str]) -> None:
    first, last = object_path(world, files[0]), object_path(world, files[-1])
    a, b = first.read_bytes(), last.read_bytes()
    first.write_bytes(b)
    last.write_bytes(a)


def delete_object(world: World, files: list[str], _other: list[str]) -> None:
    object_path(world, files[-1]).unlink()


def reasons_for(tamper: Tamper) -> tuple[str, ...]:
    """The ledger reason of the failure: a missing object may be recorded as not found."""
    return ("integrity_error", "not_found") if tamper is delete_object else ("integrity_error",)


TAMPERS: dict[str, Tamper] = {
    "flip-first-segment": flip_first_segment,
    "flip-later-segment": flip_later_segment,
    "flip-last-tag": flip_last_tag,
    "flip-header": flip_header,
    "truncate-mid-segment": truncate_mid_segment,
    "truncate-at-segment-boundary": truncate_at_segment_boundary,
    "append-garbage": append_garbage,
    "swap-segments": swap_segments,
    "swap-objects-between-packages": swap_objects_between_packages,
    "swap-objects-within-package": swap_objects_within_package,
    "delete-object": delete_object,
}


@pytest.fixture
def victim(world: World) -> tuple[str, list[str], list[str], dict[str, bytes]]:
    """A two-file package (a small good file, then a four-segment one) and a look-alike.

    Returns the package id, its file ids, the other package's file ids, and the plaintexts.
    """
    files = {"good.txt": content(BIG, seed=1), "big.bin": content(BIG, seed=2)}
    package_id, file_ids = upload(world, "uz.officer", files)
    _, other_ids = upload(
        world, "uz.officer", {"a.txt": content(BIG, seed=3), "b.bin": content(BIG, seed=4)}
    )
    for file_id in file_ids + other_ids:
        assert object_path(world, file_id).stat().st_size == sealed_size(BIG)
    return package_id, file_ids, other_ids, files


def ledger_entries(world: World) -> list[Entry]:
    with Session(world.vault.engine) as session:
        rows = session.exec(select(LedgerEntry).order_by(col(LedgerEntry.seq))).all()
        return [decode(row.entry, seq_hint=row.seq) for row in rows]


def assert_error_recorded(
    world: World, user: str, package_id: str, file_id: str, after: int,
    reasons: tuple[str, ...] = ("integrity_error",),
) -> None:
    """The ledger holds, after seq ``after``, an 'error' entry for this download."""
    errors = [
        e for e in ledger_entries(world)[after:]
        if e.action == "download" and e.decision == "error"
    ]
    assert errors, "no error entry was recorded for the failed download"
    entry = errors[-1]
    assert (entry.package, entry.file, entry.actor_user) == (package_id, file_id, user)
    assert entry.reason in reasons


def drain(vault: Vault, principal: Principal, package_id: str, file_id: str) -> list[bytes]:
    """Iterate a download to the end, keeping what came out (IntegrityError propagates)."""
    got: list[bytes] = []
    for chunk in vault.download(principal, package_id, file_id).chunks:
        got.append(chunk)
    return got


# --- through the service ------------------------------------------------------------------------


def test_untampered_downloads_succeed(
    world: World, victim: tuple[str, list[str], list[str], dict[str, bytes]]
) -> None:
    """The baseline the tamper cases depart from."""
    package_id, file_ids, _, files = victim
    principal = world["uz.officer"]
    for file_id, data in zip(file_ids, files.values(), strict=True):
        assert b"".join(drain(world.vault, principal, package_id, file_id)) == data


@pytest.mark.parametrize("tamper", TAMPERS.values(), ids=TAMPERS.keys())
def test_service_download_refused(
    tamper: Tamper, world: World, victim: tuple[str, list[str], list[str], dict[str, bytes]]
) -> None:
    package_id, file_ids, other_ids, files = victim
    tamper(world, file_ids, other_ids)
    principal = world["uz.officer"]
    seq_before = len(ledger_entries(world))

    download = world.vault.download(principal, package_id, file_ids[-1])
    got: list[bytes] = []
    with pytest.raises(IntegrityError):
        for chunk in download.chunks:
            got.append(chunk)
    # Whatever came out before the failure was authentic, but never the whole file.
    received = b"".join(got)
    assert len(received) < BIG
    assert files["big.bin"].startswith(received)
    assert_error_recorded(
        world, "uz.officer", package_id, file_ids[-1], seq_before, reasons_for(tamper)
    )


def test_service_download_refused_for_the_other_side_of_a_swap(
    world: World, victim: tuple[str, list[str], list[str], dict[str, bytes]]
) -> None:
    package_id, file_ids, other_ids, _ = victim
    swap_objects_between_packages(world, file_ids, other_ids)
    with pytest.raises(IntegrityError):
        drain(world.vault, world["uz.officer"], package_id, file_ids[-1])
    other_package = world.vault.get_package(world["uz.officer"], package_id)[0]
    assert other_package.id == package_id
    with Session(world.vault.engine) as session:
        from vault.models import PackageFile

        row = session.get(PackageFile, other_ids[-1])
        assert row is not None
        other_pkg_id = row.package_id
    with pytest.raises(IntegrityError):
        drain(world.vault, world["uz.officer"], other_pkg_id, other_ids[-1])


def test_tampered_file_does_not_spoil_its_neighbour(
    world: World, victim: tuple[str, list[str], list[str], dict[str, bytes]]
) -> None:
    package_id, file_ids, other_ids, files = victim
    flip_later_segment(world, file_ids, other_ids)
    assert b"".join(drain(world.vault, world["uz.officer"], package_id, file_ids[0])) == files["good.txt"]


def write_kek(path: Path) -> Path:
    path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    path.chmod(0o600)
    return path


def test_wrong_kek_refuses_download(
    world: World, victim: tuple[str, list[str], list[str], dict[str, bytes]], tmp_path: Path
) -> None:
    package_id, file_ids, _, _ = victim
    settings = load_settings(
        data_dir=world.settings.data_dir,
        database_url=world.settings.database_url,
        kek_file=write_kek(tmp_path / "other-kek.b64"),
        **FAST_ARGON2,
    )
    other = Vault.open(settings)
    try:
        assert other.keys.keyring.current.id != world.vault.keys.keyring.current.id
        with pytest.raises(IntegrityError):
            drain(other, world["uz.officer"], package_id, file_ids[-1])
    finally:
        other.close()
    # The right KEK still opens it: nothing was damaged by the failed attempt.
    assert len(b"".join(drain(world.vault, world["uz.officer"], package_id, file_ids[-1]))) == BIG


def test_wrong_kek_failure_is_recorded_as_error(
    world: World, victim: tuple[str, list[str], list[str], dict[str, bytes]], tmp_path: Path
) -> None:
    """A download that fails because the data key can't be unwrapped is a failed download too:
    the ledger must not end with an 'allow' for it and no 'error'."""
    package_id, file_ids, _, _ = victim
    settings = load_settings(
        data_dir=world.settings.data_dir,
        database_url=world.settings.database_url,
        kek_file=write_kek(tmp_path / "other-kek.b64"),
        **FAST_ARGON2,
    )
    seq_before = len(ledger_entries(world))
    other = Vault.open(settings)
    try:
        with pytest.raises(IntegrityError):
            drain(other, world["uz.officer"], package_id, file_ids[-1])
    finally:
        other.close()
    assert_error_recorded(world, "uz.officer", package_id, file_ids[-1], seq_before)


# --- through the CLI and the live server --------------------------------------------------------


@pytest.fixture
def server_logs_off_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server runs in this process: send uvicorn's records to pytest's log capture instead
    of the stderr the CLI's output is read from, so only the CLI's own lines are judged."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", [])
        monkeypatch.setattr(logger, "propagate", True)


@pytest.mark.parametrize("tamper", TAMPERS.values(), ids=TAMPERS.keys())
def test_cli_download_refused_and_nothing_kept(
    tamper: Tamper,
    world: World,
    victim: tuple[str, list[str], list[str], dict[str, bytes]],
    cli: CliRunner,
    logged_in: LoggedIn,
    tmp_path: Path,
    server_logs_off_stderr: None,
) -> None:
    package_id, file_ids, other_ids, _ = victim
    tamper(world, file_ids, other_ids)
    logged_in("uz.officer")
    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    (out_dir / "already-here.txt").write_bytes(b"untouched")
    seq_before = len(ledger_entries(world))

    result = cli("package", "download", package_id, "-o", out_dir, user="uz.officer")

    assert result.code == 6, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    # Not the good first file, not the bad one, no temp file: only what was there before.
    assert [p.name for p in out_dir.iterdir()] == ["already-here.txt"]
    assert (out_dir / "already-here.txt").read_bytes() == b"untouched"
    assert_error_recorded(
        world, "uz.officer", package_id, file_ids[-1], seq_before, reasons_for(tamper)
    )


def test_cli_download_into_new_folder_leaves_it_empty(
    world: World,
    victim: tuple[str, list[str], list[str], dict[str, bytes]],
    cli: CliRunner,
    logged_in: LoggedIn,
    tmp_path: Path,
    server_logs_off_stderr: None,
) -> None:
    package_id, file_ids, other_ids, _ = victim
    flip_later_segment(world, file_ids, other_ids)
    logged_in("uz.officer")
    out_dir = tmp_path / "fresh"
    result = cli("package", "download", package_id, "-o", out_dir, "--json", user="uz.officer")
    assert result.code == 6, result.stderr
    assert result.stdout == ""
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_cli_force_does_not_destroy_existing_file_on_failure(
    world: World,
    victim: tuple[str, list[str], list[str], dict[str, bytes]],
    cli: CliRunner,
    logged_in: LoggedIn,
    tmp_path: Path,
    server_logs_off_stderr: None,
) -> None:
    """With --force, a failed download must still leave the old files as they were."""
    package_id, file_ids, other_ids, _ = victim
    logged_in("uz.officer")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "good.txt").write_bytes(b"old good")
    (out_dir / "big.bin").write_bytes(b"old big")
    flip_later_segment(world, file_ids, other_ids)
    result = cli("package", "download", package_id, "-o", out_dir, "--force", user="uz.officer")
    assert result.code == 6, result.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["big.bin", "good.txt"]
    assert (out_dir / "good.txt").read_bytes() == b"old good"
    assert (out_dir / "big.bin").read_bytes() == b"old big"
