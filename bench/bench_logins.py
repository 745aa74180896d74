"""Parallel wrong passwords: memory and time with argon2 bounded as the vault runs it, against
the same checks unbounded.

Run::

    python -m bench.bench_logins [--clients 40] [--repeat 3]
    python -m bench.bench_logins --quick    # tiny argon2 cost, 2 repeats (CI)

In one process, with the vault's default argon2id cost (``Settings``: 3 passes, 64 MiB, 4
lanes), ``--clients`` threads (the server answers requests on up to 40) each check one wrong
password against a real hash at the same moment, through ``vault.passwords.Passwords``:

    bounded    at most ``argon2_max_concurrent`` checks at once (the setting's default)
    unbounded  the same object with ``max_concurrent = clients``: what the vault did before

alternating which runs first. Each phase reports its wall time and its peak RSS growth
(``bench.bench_transfer.RssMonitor``: VmHWM reset, plus 5 ms sampling).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from bench.bench_transfer import RssMonitor, _settle
from vault.config import Settings
from vault.passwords import Passwords

WRONG = "not the right password at all"


def phase(passwords: Passwords, stored: str, clients: int) -> dict[str, Any]:
    """``clients`` threads check ``WRONG`` at once; time from the start signal to the last."""
    start = threading.Barrier(clients + 1)
    results: list[bool] = []

    def check() -> None:
        start.wait()
        results.append(passwords.verify(stored, WRONG))

    threads = [threading.Thread(target=check) for _ in range(clients)]
    for thread in threads:
        thread.start()
    _settle()
    with RssMonitor() as rss:
        began = time.perf_counter()
        start.wait()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - began
    if len(results) != clients or any(results):
        raise RuntimeError("a wrong password was accepted, or a check did not finish")
    return {"seconds": round(seconds, 3), **rss.as_dict()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    defaults = Settings.model_fields
    cost: dict[str, int] = {
        "time_cost": defaults["argon2_time_cost"].default,
        "memory_kib": defaults["argon2_memory_kib"].default,
        "parallelism": defaults["argon2_parallelism"].default,
    }
    if args.quick:
        cost = {"time_cost": 1, "memory_kib": 1024, "parallelism": 1}
    limit = defaults["argon2_max_concurrent"].default
    kinds = {
        "bounded": Passwords(**cost, max_concurrent=limit),
        "unbounded": Passwords(**cost, max_concurrent=args.clients),
    }
    stored = kinds["bounded"].hash("the officer's real password")
    runs: list[dict[str, Any]] = []
    for i in range(args.repeat):
        order = list(kinds) if i % 2 == 0 else list(reversed(kinds))
        runs.append({kind: phase(kinds[kind], stored, args.clients) for kind in order})
    return {"clients": args.clients, "max_concurrent": limit, "argon2": cost, "runs": runs}


def print_report(result: dict[str, Any]) -> None:
    cost = result["argon2"]
    print(
        f"{result['clients']} parallel wrong passwords; argon2id t={cost['time_cost']} "
        f"m={cost['memory_kib']} KiB p={cost['parallelism']}; "
        f"bounded = at most {result['max_concurrent']} at once"
    )
    for i, pair in enumerate(result["runs"], 1):
        cells = "   ".join(
            f"{kind} {pair[kind]['seconds']:.2f} s, peak RSS growth "
            f"{pair[kind]['growth_mib']:.0f} MiB"
            for kind in ("bounded", "unbounded")
        )
        print(f"run {i}: {cells}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=40, help="parallel checks (40)")
    parser.add_argument("--repeat", type=int, default=3, help="bounded/unbounded pairs (3)")
    parser.add_argument("--quick", action="store_true", help="tiny argon2 cost, 2 repeats")
    parser.add_argument("--out", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = 2
    result = run(args)
    print_report(result)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
