"""Witness benchmark: durable appends with three witnesses publishing vs none, and the
publication lag, in one run.

Run::

    python -m bench.bench_witness [--seconds S] [--rounds R] [--cadence C] [--out FILE]
    python -m bench.bench_witness --quick    # 1 s phases, one round: seconds (CI)

One SQLite vault ledger (the vault's engine: WAL, ``synchronous=FULL``) under a temp folder;
three real witness processes (``blovault witness serve``) on 127.0.0.1 under a 2-of-3 policy.
Each round runs, for ``S`` seconds each, appends without witnesses, then appends while a
:class:`vault.witness.publisher.Publisher` thread publishes every ``C`` seconds (as ``blovault
witness publish`` does; appends never wait for it). Phases alternate so both see the same
machine load. Reported: appends/s of each, the witnessed/unwitnessed ratio (target >= 0.95),
and the publication lag of every entry appended while witnessed: from its commit to the
first checkpoint at quorum that includes it (target p99 <= 2 cadences).

Results: a table on stdout, JSON in ``bench/out/witness.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine

from bench.harness import (
    BLOVAULT,
    LIST_RECORD,
    ORIGIN,
    CpuMeter,
    add_common_arguments,
    command_line,
    free_port,
    ledger_engine,
    machine_info,
    machine_line,
    parse_arguments,
    percentile,
    print_table,
    workdir,
    write_json,
)
from vault import crypto, db
from vault.ledger import log, note
from vault.witness.core import init_witness
from vault.witness.ledger_source import LedgerSource
from vault.witness.policy import Policy, parse_policy
from vault.witness.publisher import Publisher, http_post

QUICK = {"seconds": 1.0, "rounds": 1, "cadence": 0.25}


def wait_healthy(proc: subprocess.Popen[bytes], url: str) -> None:
    """Wait (30 s at most) until the server at ``url`` answers /healthz."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"witness at {url} did not start")


def append_for(engine: Engine, seconds: float, stamps: list[float] | None) -> tuple[int, float]:
    """Append for ``seconds``; each append is its own durable transaction. (count, rate)"""
    began = time.perf_counter()
    count = 0
    while time.perf_counter() - began < seconds:
        with db.session_scope(engine) as session:
            log.append(session, **LIST_RECORD)
        count += 1
        if stamps is not None:
            stamps.append(time.monotonic())
    return count, count / (time.perf_counter() - began)


def start_witnesses(work: Path, vkey: str, procs: list[subprocess.Popen[bytes]]) -> Policy:
    """Three witness servers (appended to ``procs``, for the caller to stop) under a 2-of-3
    policy; the policy naming them."""
    lines = [f"log {vkey}"]
    started = []
    for c in ("KZ", "TJ", "KG"):  # all three start at once: a server takes seconds to import
        directory = work / c
        cosigner = init_witness(directory, name=f"witness.{c.lower()}.bench/blo", log_vkeys=[vkey])
        port = free_port()
        procs.append(
            subprocess.Popen(
                [BLOVAULT, "witness", "serve", "--dir", str(directory), "--port", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        url = f"http://127.0.0.1:{port}"
        started.append((procs[-1], url))
        lines.append(f"witness {c} {cosigner.vkey()} {url}")
    for proc, url in started:
        wait_healthy(proc, url)
    return parse_policy("\n".join([*lines, "group g 2 KZ TJ KG", "quorum g", ""]))


def witnessed_round(
    engine: Engine, publisher: Publisher, args: argparse.Namespace, lags: list[float]
) -> float:
    """Append for ``--seconds`` while a thread publishes every ``--cadence`` seconds; each
    entry's lag (commit to the first quorum checkpoint including it) goes into ``lags``.
    Returns the append rate."""
    publications: list[tuple[float, int]] = []  # (monotonic time, published size)

    def publish_loop(stop: threading.Event) -> None:
        while not stop.is_set():
            if publisher.publish_once() is not None:
                assert publisher.published_size is not None
                publications.append((time.monotonic(), publisher.published_size))
            stop.wait(args.cadence)

    with db.session_scope(engine, readonly=True) as session:
        first_seq = log.size(session)
    stamps: list[float] = []
    stop = threading.Event()
    thread = threading.Thread(target=publish_loop, args=(stop,))
    thread.start()
    try:
        _, rate = append_for(engine, args.seconds, stamps)
        last_seq = first_seq + len(stamps)
        deadline = time.monotonic() + 10 * args.cadence + 30
        while (not publications or publications[-1][1] < last_seq) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    for i, t in enumerate(stamps):
        seq = first_seq + i
        when = next((pt for pt, size in publications if size > seq and pt >= t), None)
        lags.append(float("inf") if when is None else when - t)
    return rate


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Alternate unwitnessed and witnessed append phases; the result document."""
    engine = ledger_engine(work / "ledger.db")
    key = crypto.new_ed25519_private_key()
    vkey = note.format_verifier_key(ORIGIN, key.public_key())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        policy = start_witnesses(work, vkey, procs)
        source = LedgerSource(engine=engine, origin=ORIGIN, key=key)
        publisher = Publisher(policy=policy, source=source, post=http_post(5.0))
        append_for(engine, min(1.0, args.seconds), None)  # warm-up
        plain_rates: list[float] = []
        witnessed_rates: list[float] = []
        lags: list[float] = []
        with CpuMeter() as meter:
            for _ in range(args.rounds):
                plain_rates.append(append_for(engine, args.seconds, None)[1])
                witnessed_rates.append(witnessed_round(engine, publisher, args, lags))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=15)
        engine.dispose()
    plain = sum(plain_rates) / len(plain_rates)
    witnessed = sum(witnessed_rates) / len(witnessed_rates)
    return {
        "machine": machine_info(work),
        "contention": meter.as_dict(),
        "seconds_per_phase": args.seconds,
        "rounds": args.rounds,
        "cadence_s": args.cadence,
        "appends_per_s_unwitnessed": round(plain, 1),
        "appends_per_s_witnessed": round(witnessed, 1),
        "ratio": round(witnessed / plain, 3),
        "lag_s": {
            "median": round(percentile(lags, 50), 3),
            "p99": round(percentile(lags, 99), 3),
            "max": round(max(lags), 3),
        },
        "lag_p99_in_cadences": round(percentile(lags, 99) / args.cadence, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per phase (15)")
    parser.add_argument("--rounds", type=int, default=2, help="unwitnessed/witnessed pairs (2)")
    parser.add_argument("--cadence", type=float, default=1.0, help="seconds between publications")
    add_common_arguments(parser, out="witness.json")
    args = parse_arguments(parser, argv, QUICK)
    with workdir("bench-witness-") as work:
        result = run(args, work)
    result["command"] = command_line("bench.bench_witness", argv)
    print(machine_line(result["machine"]))
    print_table(
        ("measure", "value", "target"),
        [
            ("appends/s unwitnessed", result["appends_per_s_unwitnessed"], ""),
            ("appends/s witnessed", result["appends_per_s_witnessed"], ""),
            ("witnessed / unwitnessed", result["ratio"], ">= 0.95"),
            ("publication lag median s", result["lag_s"]["median"], ""),
            ("publication lag p99 s", result["lag_s"]["p99"], ""),
            ("publication lag p99 in cadences", result["lag_p99_in_cadences"], "<= 2"),
            ("others' CPU (cores)", result["contention"]["others_cores"], ""),
        ],
    )
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
