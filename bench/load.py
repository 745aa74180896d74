"""Sustained-load driver: N concurrent clients against a running vault on 127.0.0.1.

Starts its own servers on a fresh data folder -- ``--servers`` separate ``blovault serve``
processes on their own ports, as behind a load balancer (uvicorn's ``--workers`` share one
socket, and long-lived client connections then pile onto whichever worker accepted first) --
seeds a small world, then runs ``--clients`` asyncio clients, spread over the servers, for
``--seconds``, each looping over a weighted mix of list, show, download and upload. Prints and
writes (bench/out/load.json) requests per second, p50/p99 latency per kind, errors, CPU per
request of the servers and of the driver, and the servers' RSS over time.

Before the mix, the same clients hammer ``/healthz`` (no authentication, no database) for
``--baseline-seconds``: the ceiling of the HTTP stack and the driver on this machine, which the
mix's figures are read against.

The clients use aiohttp (its C HTTP parser costs a third of httpx's CPU per request, and the
driver shares the machine's cores with the servers); seeding uses httpx.

    python -m bench.load --clients 50 --seconds 300 --servers 2

Loopback only; the server is stopped at the end. Bounded in time and request count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

PASSWORD = "correct horse battery staple"
ROOT = Path(__file__).resolve().parent.parent
BLOVAULT = str(Path(sys.executable).with_name("blovault"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    subprocess.run(
        [BLOVAULT, *args], env=env, input=stdin, text=True, check=True, capture_output=True
    )


def seed(env: dict[str, str]) -> None:
    run(env, "admin", "init")
    for code, name in (("UZ", "Uzbekistan"), ("KZ", "Kazakhstan")):
        run(env, "admin", "add-country", code, "--name", name)
    run(env, "admin", "add-agency", "UZ-CUSTOMS", "--country", "UZ", "--name", "Customs")
    run(env, "admin", "add-agency", "KZ-BORDER", "--country", "KZ", "--name", "Border guard")
    for user, agency in (("uz.officer", "UZ-CUSTOMS"), ("kz.officer", "KZ-BORDER")):
        run(
            env,
            "admin",
            "add-user",
            user,
            "--agency",
            agency,
            "--role",
            "officer",
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def server_pids(root_pid: int) -> list[int]:
    pids = [root_pid]
    for child in Path("/proc").iterdir():
        if child.name.isdigit():
            try:
                stat = (child / "stat").read_text().split()
            except OSError:
                continue
            if int(stat[3]) == root_pid:
                pids.append(int(child.name))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def driver_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def percentiles(values: list[float]) -> dict[str, float]:
    values.sort()
    return {
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p99_ms": round(values[max(0, int(len(values) * 0.99) - 1)] * 1000, 2),
    }


async def client_loop(
    idx: int,
    bases: list[str],
    tokens: dict[str, str],
    package_ids: list[tuple[str, str]],
    deadline: float,
    results: dict[str, list[float]],
    errors: list[str],
    mix: list[str],
) -> None:
    rng = random.Random(idx)
    base = bases[idx % len(bases)]
    user = "kz.officer" if idx % 2 else "uz.officer"
    headers = {"Authorization": f"Bearer {tokens[user]}"}
    payload = os.urandom(64 * 1024)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base_url=base, headers=headers, timeout=timeout) as http:
        while time.monotonic() < deadline:
            kind = rng.choice(mix)
            pid, fid = rng.choice(package_ids)
            started = time.perf_counter()
            try:
                if kind == "list":
                    request = http.get("/packages", params={"limit": 50})
                elif kind == "show":
                    request = http.get(f"/packages/{pid}")
                elif kind == "download":
                    request = http.get(f"/packages/{pid}/files/{fid}")
                else:
                    form = aiohttp.FormData()
                    form.add_field(
                        "metadata",
                        json.dumps({"title": f"load {idx}"}),
                        content_type="application/json",
                    )
                    form.add_field(
                        "file",
                        payload,
                        filename="load.bin",
                        content_type="application/octet-stream",
                    )
                    request = http.post("/packages", data=form)
                async with request as reply:
                    await reply.read()  # the whole body, as a client would
                    status = reply.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"{kind}: {type(exc).__name__}")
                continue
            elapsed = time.perf_counter() - started
            if status in (200, 201):
                results[kind].append(elapsed)
            else:
                errors.append(f"{kind}: HTTP {status}")


async def baseline_loop(
    idx: int, bases: list[str], deadline: float, latencies: list[float], errors: list[str]
) -> None:
    """The no-work route with the same clients: what the stack itself can answer."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base_url=bases[idx % len(bases)], timeout=timeout) as http:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                async with http.get("/healthz") as reply:
                    await reply.read()
                    status = reply.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"healthz: {type(exc).__name__}")
                continue
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors.append(f"healthz: HTTP {status}")


async def seed_packages(base: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Log both officers in; upload 20 packages as the Uzbek officer, released to Kazakhstan."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        tokens = {}
        for user in ("uz.officer", "kz.officer"):
            r = await http.post("/auth/login", json={"username": user, "password": PASSWORD})
            r.raise_for_status()
            tokens[user] = r.json()["access_token"]
        uz = {"Authorization": f"Bearer {tokens['uz.officer']}"}
        package_ids = []
        for i in range(20):
            files: list[tuple[str, tuple[str | None, str | bytes, str]]] = [
                ("metadata", (None, json.dumps({"title": f"seed {i}"}), "application/json")),
                ("file", ("seed.bin", os.urandom(256 * 1024), "application/octet-stream")),
            ]
            r = await http.post("/packages", files=files, headers=uz)
            r.raise_for_status()
            package = r.json()["package"]
            r = await http.post(
                f"/packages/{package['id']}/releases", json={"country": "KZ"}, headers=uz
            )
            r.raise_for_status()
            package_ids.append((package["id"], package["files"][0]["id"]))
    return tokens, package_ids


async def drive(args: argparse.Namespace, bases: list[str], pids: list[int]) -> dict[str, object]:
    every = [p for pid in pids for p in server_pids(pid)]
    summary: dict[str, object] = {
        "clients": args.clients,
        "servers": args.servers,
        "workers_per_server": args.workers,
        "database": "postgresql" if args.database_url else "sqlite",
        "driver": f"aiohttp {aiohttp.__version__}",
    }
    if args.baseline_seconds > 0:
        latencies: list[float] = []
        base_errors: list[str] = []
        server_cpu, driver_cpu = cpu_seconds(every), driver_cpu_seconds()
        started = time.monotonic()
        deadline = started + args.baseline_seconds
        await asyncio.gather(
            *(
                baseline_loop(i, bases, deadline, latencies, base_errors)
                for i in range(args.clients)
            )
        )
        wall = time.monotonic() - started
        count = len(latencies)
        summary["baseline_healthz"] = {
            "seconds": round(wall, 1),
            "count": count,
            "per_second": round(count / wall, 1),
            **percentiles(latencies),
            "errors": len(base_errors),
            "server_cpu_ms_per_request": round(
                (cpu_seconds(every) - server_cpu) / max(count, 1) * 1000, 3
            ),
            "driver_cpu_ms_per_request": round(
                (driver_cpu_seconds() - driver_cpu) / max(count, 1) * 1000, 3
            ),
        }

    tokens, package_ids = await seed_packages(bases[0])
    mix = (
        ["list"] * args.w_list
        + ["show"] * args.w_show
        + ["download"] * args.w_download
        + ["upload"] * args.w_upload
    )
    results: dict[str, list[float]] = {k: [] for k in ("list", "show", "download", "upload")}
    errors: list[str] = []
    memory: list[tuple[float, int]] = []
    server_cpu, driver_cpu = cpu_seconds(every), driver_cpu_seconds()
    started = time.monotonic()
    deadline = started + args.seconds

    async def sample_memory() -> None:
        while time.monotonic() < deadline:
            memory.append((round(time.monotonic() - started, 1), rss_kib(every)))
            await asyncio.sleep(5)

    await asyncio.gather(
        sample_memory(),
        *(
            client_loop(i, bases, tokens, package_ids, deadline, results, errors, mix)
            for i in range(args.clients)
        ),
    )
    wall = time.monotonic() - started
    server_cpu, driver_cpu = cpu_seconds(every) - server_cpu, driver_cpu_seconds() - driver_cpu
    summary |= {
        "seconds": round(wall, 1),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:20],
    }
    total = 0
    for kind, values in results.items():
        if not values:
            continue
        total += len(values)
        summary[kind] = {
            "count": len(values),
            "per_second": round(len(values) / wall, 1),
            **percentiles(values),
        }
    reads = [v for k in ("list", "show") for v in results[k]]
    summary["requests_per_second"] = round(total / wall, 1)
    summary["metadata_reads_per_second"] = round(len(reads) / wall, 1)
    if reads:
        summary["metadata_reads"] = percentiles(reads)
    summary["server_cpu_cores"] = round(server_cpu / wall, 2)
    summary["driver_cpu_cores"] = round(driver_cpu / wall, 2)
    summary["server_cpu_ms_per_request"] = round(server_cpu / max(total, 1) * 1000, 3)
    summary["server_rss_kib"] = memory
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=30,
        help="seconds of /healthz with the same clients first (0: skip)",
    )
    parser.add_argument("--servers", type=int, default=2, help="server processes, own ports")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers per server")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default SQLite)")
    parser.add_argument("--w-list", type=int, default=3)
    parser.add_argument("--w-show", type=int, default=5)
    parser.add_argument("--w-download", type=int, default=2)
    parser.add_argument("--w-upload", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "load.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vault-load-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        env |= {
            "VAULT_DATA_DIR": f"{tmp}/data",
            "VAULT_ARGON2_TIME_COST": "1",
            "VAULT_ARGON2_MEMORY_KIB": "1024",
            "VAULT_ARGON2_PARALLELISM": "1",
            "VAULT_LOGIN_FAILURES_PER_ADDRESS": "1000",
        }
        if args.database_url:
            env["VAULT_DATABASE_URL"] = args.database_url
        seed(env)
        servers, bases = [], []
        for _ in range(args.servers):
            port = free_port()
            command = [BLOVAULT, "serve", "--host", "127.0.0.1", "--port", str(port)]
            servers.append(
                subprocess.Popen(
                    [*command, "--workers", str(args.workers)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            bases.append(f"http://127.0.0.1:{port}")
        try:
            for base in bases:
                for _ in range(300):
                    try:
                        if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.1)
            summary = asyncio.run(drive(args, bases, [s.pid for s in servers]))
        finally:
            for server in servers:
                os.killpg(server.pid, signal.SIGTERM)
            for server in servers:
                server.wait(timeout=30)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    printable = {k: v for k, v in summary.items() if k != "server_rss_kib"}
    print(json.dumps(printable, indent=2))
    rss = summary["server_rss_kib"]
    if isinstance(rss, list) and rss:
        print(
            f"server RSS: first {rss[0][1] / 1024:.0f} MiB, last {rss[-1][1] / 1024:.0f} MiB, "
            f"max {max(r for _, r in rss) / 1024:.0f} MiB"
        )


if __name__ == "__main__":
    main()
