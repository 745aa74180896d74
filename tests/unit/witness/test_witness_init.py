"""``init_witness`` stopped part way: the folder is either no witness (init finishes it) or a
whole one, never a key without its state (which neither init nor open would take)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

import vault.witness.core as core
from tests.witness_log import LogOperator, tree_of
from vault.errors import Conflict, VaultMissing
from vault.witness.core import KEY_FILE, STATE_FILE, Witness, init_witness

NAME = "witness.kz.example/blo"


class Crash(BaseException):
    """The process dying at this point (BaseException: nothing on the way catches it)."""


def _crash(*args: object, **kwargs: object) -> None:
    raise Crash


@pytest.fixture
def log() -> LogOperator:
    return LogOperator()


def _works(directory: Path, log: LogOperator) -> None:
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / KEY_FILE).stat().st_mode) == 0o600
    names = {p.name for p in directory.iterdir() if not p.name.endswith(("-wal", "-shm"))}
    assert names == {KEY_FILE, STATE_FILE}
    witness = Witness.open(directory)
    assert witness.add_checkpoint(log.body(0, tree_of(5)))


@pytest.mark.parametrize(
    "where",
    [
        "_connect",  # before the state database exists
        "os.fsync",  # while writing the key (after the state, in the order init keeps now)
        "os.link",  # the key written under its temporary name, not yet in place
    ],
)
def test_init_stopped_anywhere_is_finished_by_init_again(
    tmp_path: Path, log: LogOperator, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "w"
    target = os if where.startswith("os.") else core
    with monkeypatch.context() as patch:
        patch.setattr(target, where.removeprefix("os."), _crash)
        with pytest.raises(Crash):
            init_witness(directory, name=NAME, log_vkeys=[log.vkey])
    # What the crash left is no witness: open says so and points to init ...
    with pytest.raises(VaultMissing, match="init"):
        Witness.open(directory)
    # ... and init finishes it.
    cosigner = init_witness(directory, name=NAME, log_vkeys=[log.vkey])
    _works(directory, log)
    assert Witness.open(directory).cosigner.vkey() == cosigner.vkey()


def test_init_finishes_what_a_killed_init_left(tmp_path: Path, log: LogOperator) -> None:
    # A kill leaves what no exception handler tidied: a state, half a temporary key, SQLite's
    # write-ahead files.
    directory = tmp_path / "w"
    directory.mkdir(mode=0o700)
    with sqlite3.connect(directory / STATE_FILE) as conn:
        conn.execute("CREATE TABLE logs (origin TEXT PRIMARY KEY, vkey TEXT NOT NULL)")
    (directory / (KEY_FILE + ".tmp")).write_text("half a ke")
    (directory / (STATE_FILE + "-wal")).write_bytes(b"")
    init_witness(directory, name=NAME, log_vkeys=[log.vkey])
    _works(directory, log)


def test_a_state_that_cosigned_is_never_thrown_away(tmp_path: Path, log: LogOperator) -> None:
    directory = tmp_path / "w"
    init_witness(directory, name=NAME, log_vkeys=[log.vkey])
    Witness.open(directory).add_checkpoint(log.body(0, tree_of(5)))
    os.rename(directory / KEY_FILE, tmp_path / "key.bak")  # the key is lost, the state isn't
    with pytest.raises(Conflict, match=r"restore witness\.key"):
        init_witness(directory, name=NAME, log_vkeys=[log.vkey])
    with pytest.raises(VaultMissing, match="restore it from its backup"):
        Witness.open(directory)
    os.rename(tmp_path / "key.bak", directory / KEY_FILE)
    assert Witness.open(directory).heads()[0].size == 5


def test_a_key_without_its_state_is_refused_with_what_to_do(
    tmp_path: Path, log: LogOperator
) -> None:
    # Init never leaves this any more (the key comes last): the state was lost, and a fresh
    # one would let the key cosign a log rolled back behind what it cosigned before.
    directory = tmp_path / "w"
    init_witness(directory, name=NAME, log_vkeys=[log.vkey])
    for path in directory.glob(STATE_FILE + "*"):
        path.unlink()
    with pytest.raises(Conflict, match=r"restore witness\.db"):
        init_witness(directory, name=NAME, log_vkeys=[log.vkey])
    with pytest.raises(VaultMissing, match=r"restore witness\.db"):
        Witness.open(directory)
