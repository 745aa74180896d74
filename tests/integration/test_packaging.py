"""The wheel: what it installs into site-packages, and that `blovault` runs from it.

The wheel must not claim generic top-level names (``api``, ``cli``) where any other
distribution may install its own: api/ ships as ``blo_vault.api`` and cli/ as ``blo_vault.cli``
(setup.py). The wheel is built once, offline, from a copy of the sources (the build backend is
in the test extras), then installed without its dependencies into a new venv that borrows
them from this one, so the check runs in seconds.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import vault

ROOT = Path(__file__).resolve().parents[2]
# source folder -> where its files land in the wheel
SHIPPED = {"vault": "vault", "api": "blo_vault/api", "cli": "blo_vault/cli"}
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "vault", "api", "cli", "policies")


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--no-index", "--wheel-dir", out, ".",
        cwd=src,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = out.glob("blo_vault-*.whl")
    return found


def test_the_wheel_installs_no_generic_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"vault", "blo_vault", f"blo_vault-{vault.__version__}.dist-info"}


def test_every_source_file_ships_under_its_package_name(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, target in SHIPPED.items():
        sources = [
            p.relative_to(ROOT / folder).as_posix()
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
        assert f"{folder}/py.typed" in {f"{folder}/{s}" for s in sources}
        missing = [s for s in sources if f"{target}/{s}" not in names]
        assert not missing, f"{folder}/ files missing from the wheel: {missing}"
    policies = {p.name for p in (ROOT / "policies").iterdir()}
    assert {f"vault/_policies/{name}" for name in policies} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_wheel_metadata_names_the_version_and_the_command(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    info = f"blo_vault-{vault.__version__}.dist-info"
    metadata = email.message_from_bytes(archive.read(f"{info}/METADATA"))
    assert metadata["Name"] == "blo-vault"
    assert metadata["Version"] == vault.__version__
    entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert "blovault = blo_vault.cli.main:main" in entry_points


def test_blovault_runs_from_a_plain_install_in_a_new_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        wheel,
        cwd=tmp_path,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    site = Path(
        _run(
            python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path
        ).stdout.strip()
    )
    assert not {"api", "cli"} & {p.name for p in site.iterdir()}
    # The dependencies come from this venv's site-packages, appended after the new one's own.
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    where = _run(
        python, "-c", "import blo_vault.cli.main, vault; print(blo_vault.cli.main.__file__)",
        cwd=tmp_path,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(site)
    for generic in ("api", "cli"):
        assert _run(python, "-c", f"import {generic}", cwd=tmp_path).returncode != 0

    helped = _run(venv / "bin" / "blovault", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    for command in ("serve", "package", "ledger", "admin"):
        assert command in helped.stdout
