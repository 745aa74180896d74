"""Where the CLI keeps its session: ``session.json`` mode 0600 inside a 0700 folder, whatever
the umask, and a warning when a session file (or its folder) is open to other users.

The file holds a refresh token that keeps a shift's session alive; on a shared BLO workstation
anyone who can read it can act as the officer until the session ends.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from blo_vault.cli import session as stored


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 0: anything created without an explicit mode is world-readable and writable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def a_session() -> stored.StoredSession:
    return stored.StoredSession(server="http://127.0.0.1:1", username="uz.officer", token="t")


def test_saved_under_a_permissive_umask_the_file_is_0600_and_every_new_folder_0700(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, permissive_umask: None
) -> None:
    # Two folders that don't exist yet: the config base (like ~/.config) and ours.
    monkeypatch.delenv("VAULT_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = stored.save(a_session())
    assert path == tmp_path / "config" / "blovault" / "session.json"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert mode(path.parent.parent) == 0o700  # a parent we created is no wider
    # and nothing else was left behind (the temp file was renamed into place)
    assert sorted(p.name for p in path.parent.iterdir()) == ["session.json"]


def test_saving_over_a_world_readable_file_leaves_it_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, permissive_umask: None
) -> None:
    folder = tmp_path / "blovault"
    folder.mkdir(mode=0o700)
    (folder / "session.json").write_text("{}")
    os.chmod(folder / "session.json", 0o666)
    monkeypatch.setenv("VAULT_CONFIG_DIR", str(folder))
    assert mode(stored.save(a_session())) == 0o600


def test_an_existing_folder_open_to_others_is_warned_about_on_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o755)
    monkeypatch.setenv("VAULT_CONFIG_DIR", str(folder))
    stored.save(a_session())
    warning = capsys.readouterr().err
    assert "warning" in warning
    assert str(folder) in warning
    assert f"chmod 700 {folder}" in warning
    # a folder we did not create is not changed behind the user's back
    assert mode(folder) == 0o755


def test_loading_a_session_file_readable_by_others_warns_and_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "blovault"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)
    monkeypatch.setenv("VAULT_CONFIG_DIR", str(folder))
    path = stored.save(a_session())
    capsys.readouterr()
    assert stored.load().username == "uz.officer"
    assert capsys.readouterr().err == ""  # 0600 in 0700: nothing to say

    os.chmod(path, 0o644)
    assert stored.load().username == "uz.officer"  # still usable: a warning, not a refusal
    warning = capsys.readouterr().err
    assert "warning" in warning
    assert str(path) in warning
    assert f"chmod 600 {path}" in warning


def test_loading_from_a_folder_open_to_others_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "blovault"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("VAULT_CONFIG_DIR", str(folder))
    stored.save(a_session())
    os.chmod(folder, 0o777)
    capsys.readouterr()
    stored.load()
    warning = capsys.readouterr().err
    assert f"chmod 700 {folder}" in warning
