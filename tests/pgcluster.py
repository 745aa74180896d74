"""A private PostgreSQL cluster for tests that stop the database: initdb into a fresh folder,
``pg_ctl`` on a free loopback port. Never the shared server on 5432, which other tests use.

PostgreSQL refuses to run as root: as root, the cluster runs as the ``postgres`` system user
(``runuser``), in a folder of its own outside pytest's root-only temp tree.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def missing_reason() -> str | None:
    """Why a private cluster can't be started here, or None if it can."""
    if binaries() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root without runuser"
    return None


@dataclass
class Cluster:
    """A running private cluster: its URL, and stop/start."""

    bin: Path
    data: Path
    port: int
    as_user: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        """Start (or restart) the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.data.parent}"
        )
        log = str(self.data.parent / "server.log")
        self._pg_ctl("-w", "-l", log, "-o", options, "start")

    def crash(self) -> None:
        """Stop the server at once, as a crash would (``immediate``: no checkpoint, clients cut
        off mid-transaction; what was committed survives in the WAL)."""
        self._pg_ctl("-w", "-m", "immediate", "stop")

    def stop(self) -> None:
        """Stop the server if it runs (for ``finally``)."""
        with contextlib.suppress(subprocess.SubprocessError):
            self._pg_ctl("-w", "-m", "fast", "stop")


@contextlib.contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A fresh cluster on a free loopback port (trust authentication, user ``postgres``),
    running; stopped and deleted afterwards whatever happened."""
    bin_dir = binaries()
    assert bin_dir is not None, missing_reason()
    root = Path(tempfile.mkdtemp(prefix="blo-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    cluster = Cluster(bin=bin_dir, data=root / "data", port=free_port(), as_user=as_user)
    try:
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "initdb"),
                "-D",
                str(cluster.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",  # speed only: the test crashes the server, never the machine
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
