"""How fast a client that holds no credential can grow the ledger: concurrent clients send
requests the vault refuses without knowing who asks (a junk bearer token, or a wrong password
for a name no account has) to one ``blovault serve`` on 127.0.0.1, on a fresh data folder.

Reports the refusals answered a second, the ledger entries they left (counted in the database,
after the server has stopped and written its summaries), how many refusals those entries
account for (an entry each, plus the counts of the summary entries), and the database's
growth in bytes (SQLite's file and write-ahead log). Before the budget of refusals' entries
(vault.service.refusals) every refusal was an entry; after it, one client's entries are
bounded by the budget, whatever it sends. ``--no-budget`` gives the server a budget no client
reaches: every refusal an entry, the baseline, in the same code and run.

    python -m bench.refusal_flood --seconds 20 [--no-budget]
    python -m bench.refusal_flood --seconds 20 --kind login [--no-budget]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import (
    add_common_arguments,
    command_line,
    machine_info,
    machine_line,
    parse_arguments,
    workdir,
    write_json,
)
from bench.load import seed, start_servers, stop_servers
from vault.config import load_settings
from vault.service import Vault


async def flood(base: str, kind: str, clients: int, seconds: float) -> dict[int, int]:
    """``clients`` loops sending refused requests for ``seconds``; answers by status."""
    statuses: dict[int, int] = {}
    junk = {"Authorization": "Bearer not.a.token"}
    guess = {"username": "nobody.here", "password": "not the password"}

    async def loop(session: aiohttp.ClientSession, stop: float) -> None:
        while time.monotonic() < stop:
            if kind == "token":
                request = session.get(f"{base}/packages", headers=junk)
            else:
                request = session.post(f"{base}/auth/login", json=guess)
            async with request as reply:
                await reply.read()
                statuses[reply.status] = statuses.get(reply.status, 0) + 1

    async with aiohttp.ClientSession() as session:
        stop = time.monotonic() + seconds
        await asyncio.gather(*(loop(session, stop) for _ in range(clients)))
    return statuses


def ledger_tally(data_dir: Path) -> dict[str, int]:
    """Entries in the ledger, and the refusals they account for (summaries by their count)."""
    vault = Vault.open(load_settings(data_dir=data_dir), create=False)
    try:
        entries = vault.unscoped_entries()
    finally:
        vault.close()
    summaries = [e for e in entries if e.subject.startswith("suppressed:")]
    counted = sum(int(e.subject.split()[0].split(":")[1]) for e in summaries)
    refusals = [e for e in entries if e.decision == "deny"]
    return {
        "entries": len(entries),
        "refusal_entries": len(refusals) - len(summaries),
        "summary_entries": len(summaries),
        "refusals_accounted": len(refusals) - len(summaries) + counted,
    }


def database_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("vault.db*"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    with workdir("bench-refusal-flood") as folder:
        data_dir = folder / "vault-data"
        seed(data_dir, None)
        before = ledger_tally(data_dir)
        size_before = database_bytes(data_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        env["VAULT_DATA_DIR"] = str(data_dir)
        if args.no_budget:  # every refusal an entry, as before the budget
            env["VAULT_REFUSAL_ENTRIES_PER_ADDRESS"] = str(10**9)
            env["VAULT_REFUSAL_ENTRIES_TOTAL"] = str(10**9)
        servers = start_servers(argparse.Namespace(servers=1, workers=1), env)
        try:
            started = time.monotonic()
            statuses = asyncio.run(flood(servers[0][1], args.kind, args.clients, args.seconds))
            elapsed = time.monotonic() - started
        finally:
            stop_servers(servers)  # SIGTERM: the server writes its summaries as it stops
        after = ledger_tally(data_dir)
        answered = sum(statuses.values())
        return {
            "command": command_line("bench.refusal_flood"),
            "machine": machine_info(folder),
            "kind": args.kind,
            "budget": not args.no_budget,
            "clients": args.clients,
            "seconds": round(elapsed, 2),
            "statuses": statuses,
            "refusals_per_second": round(answered / elapsed, 1),
            "new_entries": after["entries"] - before["entries"],
            "new_refusal_entries": after["refusal_entries"] - before["refusal_entries"],
            "new_summary_entries": after["summary_entries"] - before["summary_entries"],
            "refusals_accounted": after["refusals_accounted"] - before["refusals_accounted"],
            "refusals_answered": answered,
            "database_growth_bytes": database_bytes(data_dir) - size_before,
        }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.refusal_flood", description=__doc__)
    parser.add_argument("--kind", choices=("token", "login"), default="token")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--no-budget",
        action="store_true",
        help="a budget no client reaches: every refusal an entry (the baseline)",
    )
    add_common_arguments(parser, out="refusal_flood.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(build_parser(), argv, {"seconds": 2.0, "clients": 4})
    result = run(args)
    print(machine_line(result["machine"]))
    for key in (
        "kind",
        "budget",
        "refusals_answered",
        "refusals_per_second",
        "new_entries",
        "new_refusal_entries",
        "new_summary_entries",
        "refusals_accounted",
        "database_growth_bytes",
    ):
        print(f"{key}: {result[key]}")
    write_json(args.out, result)
    # Every refusal answered must be accounted for in the ledger, and none twice.
    return 0 if result["refusals_accounted"] == result["refusals_answered"] else 1


if __name__ == "__main__":
    sys.exit(main())
