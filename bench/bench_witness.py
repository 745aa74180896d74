"""Witness benchmark: durable appends with three witnesses publishing vs none, and the
publication lag, in one run.

Run::

    python -m bench.bench_witness [--seconds S] [--rounds R] [--cadence C] [--out FILE]

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
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.bench_ledger import RECORD, pct, schema, sqlite_url
from vault import crypto, db
from vault.ledger import log, note
from vault.witness.core import init_witness
from vault.witness.ledger_source import LedgerSource
from vault.witness.policy import parse_policy
from vault.witness.publisher import Publisher, http_post

ORIGIN = "bench.blo-vault.local/ledger"
OUT = Path(__file__).resolve().parent / "out" / "witness.json"
BLOVAULT = Path(sys.executable).parent / "blovault"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_witness(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(BLOVAULT), "witness", "serve", "--dir", str(directory), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("witness did not start")


def append_for(engine: object, seconds: float, stamps: list[float] | None) -> tuple[int, float]:
    """Append for ``seconds``; each append is its own durable transaction. (count, rate)"""
    began = time.perf_counter()
    count = 0
    while time.perf_counter() - began < seconds:
        with db.session_scope(engine) as session:  # type: ignore[arg-type]
            log.append(session, **RECORD)
        count += 1
        if stamps is not None:
            stamps.append(time.monotonic())
    return count, count / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cadence", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-witness-"))
    engine = db.make_engine(sqlite_url(work / "ledger.db"))
    schema(engine)
    key = crypto.new_ed25519_private_key()
    vkey = note.format_verifier_key(ORIGIN, key.public_key())
    procs: list[subprocess.Popen[bytes]] = []
    lines = [f"log {vkey}"]
    try:
        for c in ("KZ", "TJ", "KG"):
            directory = work / c
            cosigner = init_witness(
                directory, name=f"witness.{c.lower()}.bench/blo", log_vkeys=[vkey]
            )
            proc, url = start_witness(directory)
            procs.append(proc)
            lines.append(f"witness {c} {cosigner.vkey()} {url}")
        policy = parse_policy("\n".join([*lines, "group g 2 KZ TJ KG", "quorum g", ""]))
        source = LedgerSource(engine=engine, origin=ORIGIN, key=key)
        publisher = Publisher(policy=policy, source=source, post=http_post(5.0))
        publications: list[tuple[float, int]] = []  # (monotonic time, published size)

        def publish_loop(stop: threading.Event) -> None:
            while not stop.is_set():
                if publisher.publish_once() is not None:
                    assert publisher.published_size is not None
                    publications.append((time.monotonic(), publisher.published_size))
                stop.wait(args.cadence)

        append_for(engine, 1.0, None)  # warm-up
        plain_rates, witnessed_rates, lags = [], [], []
        for _ in range(args.rounds):
            _, rate = append_for(engine, args.seconds, None)
            plain_rates.append(rate)
            with db.session_scope(engine, readonly=True) as session:
                first_seq = log.size(session)
            stamps: list[float] = []
            stop = threading.Event()
            thread = threading.Thread(target=publish_loop, args=(stop,))
            thread.start()
            _, rate = append_for(engine, args.seconds, stamps)
            witnessed_rates.append(rate)
            last_seq = first_seq + len(stamps)
            deadline = time.monotonic() + 10 * args.cadence + 30
            while (not publications or publications[-1][1] < last_seq) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.05)
            stop.set()
            thread.join()
            for i, t in enumerate(stamps):
                seq = first_seq + i
                when = next((pt for pt, size in publications if size > seq and pt >= t), None)
                lags.append(float("inf") if when is None else when - t)
        plain = sum(plain_rates) / len(plain_rates)
        witnessed = sum(witnessed_rates) / len(witnessed_rates)
        result = {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "loadavg_1m_end": os.getloadavg()[0],
            "seconds_per_phase": args.seconds,
            "rounds": args.rounds,
            "cadence_s": args.cadence,
            "appends_per_s_unwitnessed": round(plain, 1),
            "appends_per_s_witnessed": round(witnessed, 1),
            "ratio": round(witnessed / plain, 3),
            "publications": len(publications),
            "lag_s": {
                "median": round(pct(lags, 50), 3),
                "p99": round(pct(lags, 99), 3),
                "max": round(max(lags), 3),
            },
            "lag_p99_in_cadences": round(pct(lags, 99) / args.cadence, 2),
        }
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=15)
        engine.dispose()
    print(f"appends/s unwitnessed {result['appends_per_s_unwitnessed']}")
    print(f"appends/s witnessed   {result['appends_per_s_witnessed']}  ratio {result['ratio']}")
    print(
        f"publication lag       {result['lag_s']}  p99 = {result['lag_p99_in_cadences']} cadences"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
