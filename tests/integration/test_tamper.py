"""Tampered stored objects: every download is refused with an integrity error, nothing partial
is kept, and the failure is in the ledger.

The objects are changed on disk under the local store (``root/ab/cd/<id>``), as an attacker
with access to the object folder could. Checked through the service (IntegrityError while
iterating ``download(...).chunks``) and through the ``blovault`` CLI against a live server
(exit code 6, and the output folder gains no file, not even a temp file).

To stay fast, the tests share one seeded vault and server per module; each test uploads its
own victim packages and only looks at those (and at ledger entries after its start).
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import (
    FAST_ARGON2,
    ON_POSTGRES,
    PASSWORD,
    CliResult,
    CliRunner,
    World,
    postgres_schema_url,
    running_server,
    seed,
)
from vault.config import load_settings
from vault.crypto import HEADER_SIZE, SEGMENT_SIZE, TAG_SIZE, sealed_size
from vault.errors import IntegrityError
from vault.schemas import NewPackage
from vault.service import IncomingFile, Principal, Vault

S = SEGMENT_SIZE
SEALED_SEGMENT = S + TAG_SIZE
SIZE = 3 * S + 123  # four segments, the last one short
USER = "uz.officer"


# --- a shared world -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, str]]:
    """One seeded vault (PostgreSQL when the suite runs on it) and its live server."""
    base = tmp_path_factory.mktemp("tamper")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_schema_url()) if ON_POSTGRES else None
        settings = load_settings(data_dir=base / "vault-data", database_url=url, **FAST_ARGON2)
        vault = Vault.open(settings)
        stack.callback(vault.close)
        world = World(vault=vault, settings=settings, users=seed(vault))
        yield world, stack.enter_context(running_server(vault))


@pytest.fixture
def world(shared: tuple[World, str]) -> World:
    """The module's shared world (overrides the per-test one of conftest)."""
    return shared[0]


# --- victims and tampers ------------------------------------------------------------------------


def content(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Victim:
    """A two-file package (both four segments long) and a look-alike package."""

    package_id: str
    file_ids: list[str]
    plaintexts: list[bytes]
    other_package_id: str
    other_file_ids: list[str]


def upload(world: World, files: dict[str, bytes]) -> tuple[str, list[str]]:
    """Upload through the service as USER; return the package id and its file ids in order."""
    result = world.vault.upload(
        world[USER],
        NewPackage(title="Report"),
        [IncomingFile(name=name, reader=io.BytesIO(data)) for name, data in files.items()],
    )
    return result.package.id, [f.id for f in result.package.files]


@pytest.fixture
def victim(world: World) -> Victim:
    seed_base = random.SystemRandom().randrange(1 << 30)
    plaintexts = [content(SIZE, seed_base + i) for i in range(4)]
    package_id, file_ids = upload(world, {"good.txt": plaintexts[0], "big.bin": plaintexts[1]})
    other_id, other_ids = upload(world, {"a.txt": plaintexts[2], "b.bin": plaintexts[3]})
    for file_id in file_ids + other_ids:
        assert object_path(world, file_id).stat().st_size == sealed_size(SIZE)
    return Victim(package_id, file_ids, plaintexts[:2], other_id, other_ids)


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


def split(data: bytes) -> tuple[bytes, list[bytes]]:
    body = data[HEADER_SIZE:]
    parts = [body[i : i + SEALED_SEGMENT] for i in range(0, len(body), SEALED_SEGMENT)]
    return data[:HEADER_SIZE], parts


# Each tamper damages the victim's objects and returns the victim files that must now fail.
Tamper = Callable[[World, Victim], list[str]]


def flip_first_segment(world: World, v: Victim) -> list[str]:
    rewrite(world, v.file_ids[1], flip_at(HEADER_SIZE + 100))
    return [v.file_ids[1]]


def flip_later_segment(world: World, v: Victim) -> list[str]:
    rewrite(world, v.file_ids[1], flip_at(HEADER_SIZE + 2 * SEALED_SEGMENT + 100))
    return [v.file_ids[1]]


def flip_last_tag(world: World, v: Victim) -> list[str]:
    rewrite(world, v.file_ids[1], lambda d: d[:-1] + bytes([d[-1] ^ 1]))
    return [v.file_ids[1]]


def flip_header(world: World, v: Victim) -> list[str]:
    rewrite(world, v.file_ids[1], flip_at(12))
    return [v.file_ids[1]]


def truncate_mid_segment(world: World, v: Victim) -> list[str]:
    rewrite(world, v.file_ids[1], lambda d: d[: HEADER_SIZE + 2 * SEALED_SEGMENT + 500])
    return [v.file_ids[1]]


def truncate_at_segment_boundary(world: World, v: Victim) -> list[str]:
    """Drop the last segment entirely."""
    rewrite(world, v.file_ids[1], lambda d: d[: HEADER_SIZE + 3 * SEALED_SEGMENT])
    return [v.file_ids[1]]


def append_garbage(world: World, v: Victim) -> list[str]:
    rewrite(world, v.file_ids[1], lambda d: d + b"\x00" * 32)
    return [v.file_ids[1]]


def swap_segments(world: World, v: Victim) -> list[str]:
    def change(data: bytes) -> bytes:
        header, parts = split(data)
        parts[1], parts[2] = parts[2], parts[1]
        return header + b"".join(parts)

    rewrite(world, v.file_ids[1], change)
    return [v.file_ids[1]]


def swap_objects(world: World, a: str, b: str) -> None:
    first, second = object_path(world, a), object_path(world, b)
    data_a, data_b = first.read_bytes(), second.read_bytes()
    assert len(data_a) == len(data_b)
    assert data_a != data_b
    first.write_bytes(data_b)
    second.write_bytes(data_a)


def swap_objects_between_packages(world: World, v: Victim) -> list[str]:
    swap_objects(world, v.file_ids[1], v.other_file_ids[1])
    return [v.file_ids[1]]


def swap_objects_within_package(world: World, v: Victim) -> list[str]:
    swap_objects(world, v.file_ids[0], v.file_ids[1])
    return list(v.file_ids)


def delete_object(world: World, v: Victim) -> list[str]:
    object_path(world, v.file_ids[1]).unlink()
    return [v.file_ids[1]]


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


# --- checks -------------------------------------------------------------------------------------


def assert_error_recorded(
    world: World,
    package_id: str,
    file_ids: list[str],
    after: int,
    *,
    missing: bool = False,
    reader: Vault | None = None,
) -> None:
    """After seq ``after`` the ledger holds an 'error' download entry for one of ``file_ids``
    (opened by ``reader``: the vault whose KEK sealed those entries' openings)."""
    errors = [
        e
        for e in (reader or world.vault).unscoped_entries(after)
        if e.action == "download" and e.decision == "error" and e.package == package_id
    ]
    assert errors, "no error entry was recorded for the failed download"
    entry = errors[-1]
    assert entry.file in file_ids
    assert (entry.actor_user, entry.actor_agency, entry.actor_country) == (USER, "UZ-CUSTOMS", "UZ")
    # A deleted object may be recorded by its cause (not found); everything else is integrity.
    assert entry.reason in (("integrity_error", "not_found") if missing else ("integrity_error",))


def collect(chunks: Iterator[bytes], into: list[bytes]) -> None:
    """Append chunks to ``into`` as they come, so what arrived before a failure is kept."""
    for chunk in chunks:
        into.append(chunk)


def drain(vault: Vault, principal: Principal, package_id: str, file_id: str) -> bytes:
    """Iterate a whole download (IntegrityError propagates)."""
    return b"".join(vault.download(principal, package_id, file_id).chunks)


# --- through the service ------------------------------------------------------------------------


def test_untampered_downloads_succeed(world: World, victim: Victim) -> None:
    """The baseline every tamper case departs from."""
    for file_id, data in zip(victim.file_ids, victim.plaintexts, strict=True):
        assert drain(world.vault, world[USER], victim.package_id, file_id) == data


@pytest.mark.parametrize("tamper", TAMPERS.values(), ids=TAMPERS.keys())
def test_service_download_refused(tamper: Tamper, world: World, victim: Victim) -> None:
    damaged = tamper(world, victim)
    seq_before = world.vault.ledger_size()
    for file_id in damaged:
        download = world.vault.download(world[USER], victim.package_id, file_id)
        got: list[bytes] = []
        with pytest.raises(IntegrityError):
            collect(download.chunks, got)
        # What came out before the failure was authentic, but never the whole file.
        received = b"".join(got)
        plaintext = victim.plaintexts[victim.file_ids.index(file_id)]
        assert len(received) < len(plaintext)
        assert plaintext.startswith(received)
        assert_error_recorded(
            world, victim.package_id, [file_id], seq_before, missing=tamper is delete_object
        )


def test_a_recorded_size_that_differs_is_refused_after_the_data(
    world: World, victim: Victim
) -> None:
    """The check the service adds to the sealed stream's own: the plaintext's length against
    the size the database records (the Content-Length the answer promised). An edited size
    column gets a refused download and an error in the ledger, not a file of the wrong length."""
    file_id = victim.file_ids[1]
    with world.vault.engine.begin() as connection:
        connection.execute(
            text("UPDATE packagefile SET size = size + 1 WHERE id = :id"), {"id": file_id}
        )
    seq_before = world.vault.ledger_size()
    got: list[bytes] = []
    with pytest.raises(IntegrityError, match="recorded size"):
        collect(world.vault.download(world[USER], victim.package_id, file_id).chunks, got)
    # Every byte was authentic, but the download as a whole is refused: the caller discards it.
    assert b"".join(got) == victim.plaintexts[1]
    assert_error_recorded(world, victim.package_id, [file_id], seq_before)


def test_swapped_objects_fail_on_both_sides(world: World, victim: Victim) -> None:
    swap_objects_between_packages(world, victim)
    with pytest.raises(IntegrityError):
        drain(world.vault, world[USER], victim.package_id, victim.file_ids[1])
    with pytest.raises(IntegrityError):
        drain(world.vault, world[USER], victim.other_package_id, victim.other_file_ids[1])
    # The untouched neighbours still open.
    assert (
        drain(world.vault, world[USER], victim.package_id, victim.file_ids[0])
        == (victim.plaintexts[0])
    )


# --- the file rows: which files a package has -------------------------------------------------
# Plain database rows, unlike the blobs: their list, order and sizes are checked against the
# digest sealed with the package's metadata at upload.


def drop_second_file_row(world: World, v: Victim) -> None:
    with world.vault.engine.begin() as connection:
        connection.execute(text("DELETE FROM packagefile WHERE id = :id"), {"id": v.file_ids[1]})


def swap_file_positions(world: World, v: Victim) -> None:
    first, second = v.file_ids
    with world.vault.engine.begin() as connection:
        for file_id, position in ((first, 1000), (second, 0), (first, 1)):
            connection.execute(
                text("UPDATE packagefile SET position = :p WHERE id = :id"),
                {"p": position, "id": file_id},
            )


def grow_first_file_size(world: World, v: Victim) -> None:
    with world.vault.engine.begin() as connection:
        connection.execute(
            text("UPDATE packagefile SET size = size + 1 WHERE id = :id"), {"id": v.file_ids[0]}
        )


ROW_TAMPERS: dict[str, Callable[[World, Victim], None]] = {
    "drop-a-file-row": drop_second_file_row,
    "swap-file-positions": swap_file_positions,
    "grow-a-file-size": grow_first_file_size,
}


def read_error_entries(world: World, package_id: str, after: int) -> list[str]:
    """The reasons of 'error' read entries of ``package_id`` after seq ``after``, waiting a
    few seconds for them: the failure's entry is queued for group commit, not waited for."""
    deadline = time.monotonic() + 10
    while True:
        reasons = [
            e.reason
            for e in world.vault.unscoped_entries(after)
            if e.action == "read" and e.decision == "error" and e.package == package_id
        ]
        if reasons or time.monotonic() > deadline:
            return reasons
        time.sleep(0.05)


@pytest.mark.parametrize("tamper", ROW_TAMPERS.values(), ids=ROW_TAMPERS.keys())
def test_edited_file_rows_fail_the_details(
    tamper: Callable[[World, Victim], None], world: World, victim: Victim
) -> None:
    """Someone who can edit the database but holds no key drops, reorders or resizes a
    package's files (say, an exculpatory annex): its details are refused, not served short,
    and the failure is in the ledger after the read's own entry."""
    world.vault.get_package(world[USER], victim.package_id)  # untouched, it opens
    seq_before = world.vault.ledger_size()
    tamper(world, victim)
    with pytest.raises(IntegrityError, match="sealed digest"):
        world.vault.get_package(world[USER], victim.package_id)
    assert read_error_entries(world, victim.package_id, seq_before) == ["integrity_error"]
    # The neighbour is untouched.
    assert len(world.vault.get_package(world[USER], victim.other_package_id)[0].files) == 2


def test_cli_download_of_a_package_missing_a_file_row(
    world: World, victim: Victim, cli: CliRunner, tmp_path: Path
) -> None:
    """Through the server: the details are answered 500 integrity_error, the CLI exits 6 and
    keeps nothing, rather than downloading the files that are left as if they were all."""
    drop_second_file_row(world, victim)
    out_dir = tmp_path / "out"
    result = cli("package", "download", victim.package_id, "-o", out_dir, user=USER)
    assert_integrity_exit(result)
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def write_kek(path: Path) -> Path:
    path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def vault_with_other_kek(world: World, kek_dir: Path) -> Iterator[Vault]:
    """The same database and objects, opened with a freshly generated KEK file."""
    settings = load_settings(
        data_dir=world.settings.data_dir,
        database_url=world.settings.database_url,
        kek_file=write_kek(kek_dir / "other-kek.b64"),
        **FAST_ARGON2,
    )
    other = Vault.open(settings)
    try:
        assert other.keys.keyring.current.id != world.vault.keys.keyring.current.id
        yield other
    finally:
        other.close()


def test_wrong_kek_refuses_download(world: World, victim: Victim, tmp_path: Path) -> None:
    with vault_with_other_kek(world, tmp_path) as other:
        for file_id in victim.file_ids:
            with pytest.raises(IntegrityError):
                drain(other, world[USER], victim.package_id, file_id)
    # The right KEK still opens it: nothing was damaged by the failed attempts.
    assert (
        drain(world.vault, world[USER], victim.package_id, victim.file_ids[1])
        == (victim.plaintexts[1])
    )


def test_wrong_kek_failure_is_recorded_as_error(
    world: World, victim: Victim, tmp_path: Path
) -> None:
    """A download that fails because its keys can't be unwrapped is a failed download too: the
    ledger must not end with an 'allow' for it and no 'error'."""
    seq_before = world.vault.ledger_size()
    with vault_with_other_kek(world, tmp_path) as other:
        with pytest.raises(IntegrityError):
            drain(other, world[USER], victim.package_id, victim.file_ids[1])
        assert_error_recorded(
            world, victim.package_id, [victim.file_ids[1]], seq_before, reader=other
        )


# --- through the CLI and the live server --------------------------------------------------------


@pytest.fixture
def cli(
    shared: tuple[World, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> CliRunner:
    """``blovault`` in-process against the shared world (as conftest's ``cli`` does for its own)."""
    from blo_vault.cli.main import run

    world = shared[0]
    monkeypatch.setenv("VAULT_DATA_DIR", str(world.settings.data_dir))
    if world.settings.database_url:
        monkeypatch.setenv("VAULT_DATABASE_URL", world.settings.database_url)
    for key, value in FAST_ARGON2.items():
        monkeypatch.setenv(f"VAULT_{key.upper()}", str(value))
    # The server runs in this process: send uvicorn's records to pytest's log capture instead
    # of the stderr the CLI's output is read from, so only the CLI's own lines are judged.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)

    def invoke(*args: str | int | Path, user: str = "operator", stdin: str = "") -> CliResult:
        monkeypatch.setenv("VAULT_CONFIG_DIR", str(tmp_path / "config" / user))
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code=code, stdout=captured.out, stderr=captured.err)

    login = invoke(
        "login",
        "--server",
        shared[1],
        "--username",
        USER,
        "--password-stdin",
        user=USER,
        stdin=PASSWORD + "\n",
    )
    assert login.code == 0, login.stderr
    return invoke


def assert_integrity_exit(result: CliResult) -> None:
    assert result.code == 6, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr


@pytest.mark.parametrize("tamper", TAMPERS.values(), ids=TAMPERS.keys())
def test_cli_download_refused_and_nothing_kept(
    tamper: Tamper, world: World, victim: Victim, cli: CliRunner, tmp_path: Path
) -> None:
    damaged = tamper(world, victim)
    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    (out_dir / "already-here.txt").write_bytes(b"untouched")
    seq_before = world.vault.ledger_size()

    result = cli("package", "download", victim.package_id, "-o", out_dir, user=USER)

    assert_integrity_exit(result)
    # Not the good first file, not the bad one, no temp file: only what was there before.
    assert [p.name for p in out_dir.iterdir()] == ["already-here.txt"]
    assert (out_dir / "already-here.txt").read_bytes() == b"untouched"
    assert_error_recorded(
        world, victim.package_id, damaged, seq_before, missing=tamper is delete_object
    )


def test_cli_download_into_new_folder_leaves_it_empty(
    world: World, victim: Victim, cli: CliRunner, tmp_path: Path
) -> None:
    flip_later_segment(world, victim)
    out_dir = tmp_path / "fresh"
    result = cli("package", "download", victim.package_id, "-o", out_dir, "--json", user=USER)
    assert_integrity_exit(result)
    assert result.stdout == ""
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_cli_force_keeps_old_files_when_the_download_fails(
    world: World, victim: Victim, cli: CliRunner, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "good.txt").write_bytes(b"old good")
    (out_dir / "big.bin").write_bytes(b"old big")
    flip_later_segment(world, victim)
    result = cli("package", "download", victim.package_id, "-o", out_dir, "--force", user=USER)
    assert_integrity_exit(result)
    assert sorted(p.name for p in out_dir.iterdir()) == ["big.bin", "good.txt"]
    assert (out_dir / "good.txt").read_bytes() == b"old good"
    assert (out_dir / "big.bin").read_bytes() == b"old big"


def test_cli_download_of_untampered_package_works(
    world: World, victim: Victim, cli: CliRunner, tmp_path: Path
) -> None:
    """The CLI baseline: the same package, untouched, downloads whole."""
    out_dir = tmp_path / "ok"
    result = cli("package", "download", victim.package_id, "-o", out_dir, user=USER)
    assert result.code == 0, result.stderr
    assert (out_dir / "good.txt").read_bytes() == victim.plaintexts[0]
    assert (out_dir / "big.bin").read_bytes() == victim.plaintexts[1]
    assert sorted(p.name for p in out_dir.iterdir()) == ["big.bin", "good.txt"]
