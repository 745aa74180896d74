"""The cross-border walkthrough through the ``blovault`` command line against a live server."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliResult, CliRunner, World
from vault.crypto import SEGMENT_SIZE

MiB = 1024**2
S = SEGMENT_SIZE
LoggedIn = Callable[[str], None]

SIZES = {"empty.bin": 0, "one.bin": 1, "segment.bin": S, "segment-plus-one.bin": S + 1}
BIG = ("big.bin", 50 * MiB)


def make_file(path: Path, size: int, seed: int) -> str:
    """Write ``size`` deterministic pseudo-random bytes to ``path``; return their SHA-256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            block = rng.randbytes(min(left, MiB))
            out.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def ok_json(result: CliResult) -> Any:
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result: CliResult, code: int) -> None:
    assert result.code == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")


def upload(cli: CliRunner, user: str, paths: list[Path], title: str = "Seizure at Oybek") -> str:
    data = ok_json(cli("package", "upload", *paths, "--title", title, "--json", user=user))
    package_id: str = data["id"]
    assert package_id == data["package"]["id"]
    assert len(package_id) == 32
    assert all(c in "0123456789abcdef" for c in package_id)
    assert isinstance(data["receipt"], int)
    return package_id


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """The small files of the walkthrough: name -> (path, sha256)."""
    folder = tmp_path / "src"
    folder.mkdir()
    out = {}
    for i, (name, size) in enumerate(SIZES.items()):
        path = folder / name
        out[name] = (path, make_file(path, size, seed=i))
    return out


def test_cross_border_walkthrough(
    cli: CliRunner,
    logged_in: LoggedIn,
    world: World,
    tmp_path: Path,
    sources: dict[str, tuple[Path, str]],
) -> None:
    big_path = tmp_path / "src" / BIG[0]
    big_sha = make_file(big_path, BIG[1], seed=99)
    expected = {name: sha for name, (_, sha) in sources.items()} | {BIG[0]: big_sha}
    paths = [p for p, _ in sources.values()] + [big_path]

    logged_in("uz.officer")
    package_id = upload(cli, "uz.officer", paths)
    release = ok_json(
        cli("package", "release", package_id, "--country", "KZ", "--json", user="uz.officer")
    )
    assert release["id"] == release["release"]["id"]
    assert release["release"]["country"] == "KZ"
    assert release["release"]["package_id"] == package_id
    assert release["release"]["status"] == "active"

    logged_in("kz.officer")
    out_dir = tmp_path / "kz-downloads"
    downloaded = ok_json(
        cli("package", "download", package_id, "-o", out_dir, "--json", user="kz.officer")
    )
    assert downloaded["id"] == package_id
    assert sorted(Path(p).name for p in downloaded["files"]) == sorted(expected)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(expected)  # no temp files left
    for name, sha in expected.items():
        assert sha256_of(out_dir / name) == sha, name
    assert (out_dir / "empty.bin").stat().st_size == 0
    assert (out_dir / BIG[0]).stat().st_size == BIG[1]

    logged_in("tj.officer")
    tj_dir = tmp_path / "tj-downloads"
    for args in (
        ("package", "download", package_id, "-o", tj_dir),
        ("package", "show", package_id),
        ("package", "download", package_id, "-o", tj_dir, "--json"),
    ):
        result = cli(*args, user="tj.officer")
        assert_one_line_error(result, 4)
        assert "not found" in result.stderr
        assert result.stdout == ""
    assert not tj_dir.exists() or list(tj_dir.iterdir()) == []
    listed = ok_json(cli("package", "list", "--json", user="tj.officer"))
    assert listed["items"] == []

    verify = cli("ledger", "verify")
    assert verify.code == 0, verify.stderr
    report = ok_json(cli("ledger", "verify", "--json"))
    assert report["ok"] is True
    assert report["size"] > 0


def test_json_outputs_parse(
    cli: CliRunner, logged_in: LoggedIn, tmp_path: Path, sources: dict[str, tuple[Path, str]]
) -> None:
    logged_in("uz.officer")
    path, sha = sources["one.bin"]
    package_id = upload(cli, "uz.officer", [path], title="Сводка")

    listed = ok_json(cli("package", "list", "--json", user="uz.officer"))
    assert [p["id"] for p in listed["items"]] == [package_id]
    assert listed["items"][0]["title"] == "Сводка"
    assert isinstance(listed["receipt"], int)

    shown = ok_json(cli("package", "show", package_id, "--json", user="uz.officer"))
    assert shown["id"] == package_id
    assert [(f["name"], f["size"], f["sha256"]) for f in shown["files"]] == [("one.bin", 1, sha)]

    released = ok_json(
        cli("package", "release", package_id, "--country", "KZ", "--json", user="uz.officer")
    )
    shown = ok_json(cli("package", "show", package_id, "--json", user="uz.officer"))
    assert [r["id"] for r in shown["releases"]] == [released["id"]]

    got = ok_json(
        cli("package", "download", package_id, "-o", tmp_path / "out", "--json", user="uz.officer")
    )
    assert got["id"] == package_id
    assert got["files"] == [str(tmp_path / "out" / "one.bin")]

    report = ok_json(cli("ledger", "verify", "--json"))
    assert report["ok"] is True


def test_download_refuses_to_overwrite_without_force(
    cli: CliRunner, logged_in: LoggedIn, tmp_path: Path, sources: dict[str, tuple[Path, str]]
) -> None:
    logged_in("uz.officer")
    names = ["one.bin", "segment-plus-one.bin"]
    package_id = upload(cli, "uz.officer", [sources[n][0] for n in names])
    out_dir = tmp_path / "out"
    ok_json(cli("package", "download", package_id, "-o", out_dir, "--json", user="uz.officer"))

    local = out_dir / "segment-plus-one.bin"
    local.write_bytes(b"my local edits")
    (out_dir / "unrelated.txt").write_bytes(b"keep me")
    before = sorted(p.name for p in out_dir.iterdir())

    refused = cli("package", "download", package_id, "-o", out_dir, user="uz.officer")
    assert refused.code == 8, refused.stderr
    assert "Traceback" not in refused.stderr
    assert "--force" in refused.stderr
    assert local.read_bytes() == b"my local edits"
    assert sorted(p.name for p in out_dir.iterdir()) == before

    forced = ok_json(
        cli(
            "package",
            "download",
            package_id,
            "-o",
            out_dir,
            "--force",
            "--json",
            user="uz.officer",
        )
    )
    assert len(forced["files"]) == 2
    for name in names:
        assert sha256_of(out_dir / name) == sources[name][1]
    assert (out_dir / "unrelated.txt").read_bytes() == b"keep me"
    assert sorted(p.name for p in out_dir.iterdir()) == before


def test_long_error_messages_stay_on_one_line(
    cli: CliRunner, logged_in: LoggedIn, tmp_path: Path, sources: dict[str, tuple[Path, str]]
) -> None:
    """An error naming a long path is still one line (not wrapped at the console width)."""
    logged_in("uz.officer")
    package_id = upload(cli, "uz.officer", [sources["one.bin"][0]])
    out_dir = tmp_path / ("a-rather-long-folder-name-" * 4) / "downloads"
    out_dir.mkdir(parents=True)
    (out_dir / "one.bin").write_bytes(b"local")
    refused = cli("package", "download", package_id, "-o", out_dir, user="uz.officer")
    assert len(str(out_dir / "one.bin")) > 120
    assert_one_line_error(refused, 8)
    assert str(out_dir / "one.bin") in refused.stderr


def test_not_logged_in_is_one_line_error(cli: CliRunner, live_server: str) -> None:
    result = cli("package", "list", user="nobody")
    assert_one_line_error(result, 3)


def test_unknown_package_is_exit_4(cli: CliRunner, logged_in: LoggedIn, tmp_path: Path) -> None:
    logged_in("kz.officer")
    result = cli("package", "download", "0" * 32, "-o", tmp_path / "o", user="kz.officer")
    assert_one_line_error(result, 4)
    assert not (tmp_path / "o").exists()
