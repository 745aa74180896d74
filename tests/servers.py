"""Real ``blovault serve`` processes for tests: started on a free loopback port, waited on until
healthy, and stopped by whoever started them (``stop``)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

BLOVAULT = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "blovault"


@dataclass
class Served:
    """One server process: its base URL, the process and the file its output goes to."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path


def spawn(env: dict[str, str], log: Path) -> Served:
    """Start ``blovault serve`` on 127.0.0.1 with ``env``; output to ``log``. Not yet healthy."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BLOVAULT), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
        )
    return Served(f"http://127.0.0.1:{port}", process, log)


def wait_healthy(served: Served, name: str = "server", deadline: float | None = None) -> None:
    """Poll /healthz until 200; fail the test (with the log's tail) if the process exits or
    ``deadline`` (monotonic; default 30 s from now) passes."""
    deadline = time.monotonic() + 30 if deadline is None else deadline
    while True:
        if served.process.poll() is not None:
            pytest.fail(
                f"{name} exited {served.process.returncode}:\n"
                + served.log.read_text(errors="replace")[-3000:]
            )
        try:
            if httpx.get(served.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"{name} not healthy within 30 s:\n"
                + served.log.read_text(errors="replace")[-3000:]
            )
        time.sleep(0.1)
