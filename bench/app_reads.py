"""CPU per request of the ASGI app alone: `/healthz`, show and list, without an HTTP server.

What the app costs a read on top of the bare route, away from uvicorn's parsing and the
machine's noise in `bench.load`: each request is one call of the app (its middleware,
routing, dependencies, the service and its ledger entry through group commit) with a
prepared ASGI scope, one after another in one event loop. CPU is the whole process's (the
thread pool and the ledger's committer included); the committer's share is shown apart, since
requests one at a time give it batches of one, which it never has under load.

    python -m bench.app_reads [--requests 600] [--packages 30]
    python -m bench.app_reads --quick    # 50 requests (CI)

Writes bench/out/app_reads.json. SQLite only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message

from bench.harness import (
    PASSWORD,
    add_common_arguments,
    command_line,
    machine_info,
    machine_line,
    open_world,
    parse_arguments,
    print_table,
    seed_packages,
    workdir,
    write_json,
)
from blo_vault.api.app import create_app

# The ledger's group-commit thread (vault.ledger.log.GroupAppender).
COMMITTER = "ledger-group-commit"
QUICK = {"requests": 50, "packages": 5}
WARM = 50


async def call(app: ASGIApp, path: str, query: bytes, token: str | None) -> None:
    """One GET through the app; RuntimeError unless it answers 200."""
    headers = [(b"host", b"127.0.0.1")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "extensions": {},
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = sent[0]["status"] if sent else None
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}")


def committer_cpu() -> float:
    """CPU seconds the ledger's group-commit thread has used (0 before it started): a
    request's own CPU is the process's less this, which requests one at a time can't batch."""
    for thread in threading.enumerate():
        if thread.name == COMMITTER and thread.ident is not None:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return 0.0


async def timed(
    app: ASGIApp, path: str, query: bytes, token: str | None, count: int
) -> dict[str, float]:
    """``count`` requests one after another, after a warm-up; CPU (of the process, and of it
    the ledger committer's) and wall time per request."""
    for _ in range(WARM):
        await call(app, path, query, token)
    cpu, wall, ledger = time.process_time(), time.perf_counter(), committer_cpu()
    for _ in range(count):
        await call(app, path, query, token)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    ledger = committer_cpu() - ledger
    return {
        "requests": count,
        "cpu_ms_per_request": round(cpu / count * 1000, 3),
        "committer_cpu_ms_per_request": round(ledger / count * 1000, 3),
        "wall_ms_per_request": round(wall / count * 1000, 3),
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Seed a vault, build the app over it, and time the three routes."""
    vault, officer = open_world(work / "vault-data")
    try:
        token = vault.login("uz.officer", PASSWORD).access_token
        ids = seed_packages(vault, officer, args.packages)
        app = create_app(vault=vault)
        routes = {
            "healthz": ("/healthz", b"", None),
            "show": (f"/packages/{ids[len(ids) // 2]}", b"", token),
            "list": ("/packages", b"limit=50", token),
        }
        result: dict[str, Any] = {"machine": machine_info(work), "packages": len(ids)}
        for name, (path, query, bearer) in routes.items():
            result[name] = asyncio.run(timed(app, path, query, bearer, args.requests))
    finally:
        vault.close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600, help="per route (600)")
    parser.add_argument("--packages", type=int, default=30, help="packages seeded (30)")
    add_common_arguments(parser, out="app_reads.json")
    args = parse_arguments(parser, argv, QUICK)
    with workdir("blo-app-reads-") as work:
        result = run(args, work)
    result["command"] = command_line("bench.app_reads", argv)
    print(machine_line(result["machine"]))
    rows = [
        (
            name,
            f["requests"],
            f["cpu_ms_per_request"],
            f["committer_cpu_ms_per_request"],
            f["wall_ms_per_request"],
        )
        for name, f in result.items()
        if isinstance(f, dict) and "cpu_ms_per_request" in f
    ]
    print_table(("route", "requests", "CPU ms/request", "of it committer", "wall ms/request"), rows)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
