"""Sustained-load driver: N concurrent clients against a running vault on 127.0.0.1.

Starts its own servers on a fresh data folder -- ``--servers`` separate ``blovault serve``
processes on their own ports, as behind a load balancer (uvicorn's ``--workers`` share one
socket, and long-lived client connections then pile onto whichever worker accepted first) --
seeds a small world, then runs ``--clients`` asyncio clients, spread over the servers, for
``--seconds``, each looping over a weighted mix of list, show, download and upload. Prints and
writes (bench/out/load.json) requests per second, p50/p99 latency per kind, errors, CPU per
request of the servers and of the driver, and the servers' RSS over time: in all, in its
anonymous, file and shared parts (with the SQLite database's, log's and index's sizes beside
them), and its growth over the last 4 minutes by kind of mapping (malloc heap, other
anonymous mappings, SQLite's files, libraries), which says where growth comes from. Beside the
servers' CPU it gives the whole machine's busy cores over the mix and, on PostgreSQL, the
sessions the servers opened: the database's own CPU is in the first, and a new session forks a
backend.

Before the mix, the same clients hammer ``/healthz`` (no authentication, no database) for
``--baseline-seconds``: the ceiling of the HTTP stack and the driver on this machine, which the
mix's figures are read against.

The clients use aiohttp (its C HTTP parser costs a third of httpx's CPU per request, and the
driver shares the machine's cores with the servers); uploading the seed packages uses httpx.

    python -m bench.load --clients 50 --seconds 300 --servers 2
    python -m bench.load --store minio-moto    # objects in S3: moto's server, own process
    python -m bench.load --quick    # 4 clients, 1 server, 2 s (CI)
    python -m bench.load --heap-snapshots    # explain RSS growth (api/heapdump.py)

With ``--store minio-moto`` the vault keeps its objects through the MinIO store in an S3
endpoint: ``moto_server`` started as its own process on loopback (so its CPU is counted apart
from the driver's), stopped at the end. Downloads then stream from S3 over HTTP.

Loopback only; the server is stopped at the end. Bounded in time and request count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench.harness import (
    BLOVAULT,
    PASSWORD,
    add_common_arguments,
    command_line,
    free_port,
    open_vault,
    parse_arguments,
    pg_schema,
    plain_pg_url,
    print_table,
    seconds_ms,
    workdir,
    write_json,
)
from bench.pg_analyze import AnalyzeAsAutovacuum
from blo_vault.api import heapdump
from vault.models import Classification, Role
from vault.service import local_operator

QUICK = {"clients": 4, "seconds": 2.0, "baseline_seconds": 0.5, "servers": 1, "packages": 5}


def seed(data_dir: Path, database_url: str | None, store: dict[str, Any] | None = None) -> None:
    """Two countries, an agency and an officer in each, through the service (in this
    process: seven CLI processes took longer than a quick run's load)."""
    vault = open_vault(data_dir, database_url=database_url, **(store or {}))
    try:
        op = local_operator()
        for code, name in (("UZ", "Uzbekistan"), ("KZ", "Kazakhstan")):
            vault.add_country(op, code, name)
        vault.add_agency(op, "UZ-CUSTOMS", "UZ", "Customs")
        vault.add_agency(op, "KZ-BORDER", "KZ", "Border guard")
        for user, agency in (("uz.officer", "UZ-CUSTOMS"), ("kz.officer", "KZ-BORDER")):
            vault.add_user(
                op,
                username=user,
                agency=agency,
                role=Role.OFFICER,
                password=PASSWORD,
                clearance=Classification.SECRET,
            )
    finally:
        vault.close()


# moto checks no signatures; any pair works (throw-away endpoint on loopback).
MOTO_KEYS = {"s3_access_key": "bench-access", "s3_secret_key": "bench-secret-not-a-secret"}


@contextlib.contextmanager
def moto_store() -> Iterator[dict[str, Any]]:
    """``moto_server`` on a free loopback port; the settings that point the vault at it."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield {
            "store": "minio",
            "s3_endpoint": f"127.0.0.1:{port}",
            "s3_secure": False,
            "s3_region": "us-east-1",
            "s3_bucket": "bench-load",
            **MOTO_KEYS,
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def store_env(settings: dict[str, Any]) -> dict[str, str]:
    """The same settings as VAULT_* variables, for the servers."""
    return {
        f"VAULT_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in settings.items()
    }


# What a process's resident memory is made of (/proc/PID/status): anonymous pages (the
# malloc heaps, Python's and SQLite's caches, thread stacks), pages of mapped files (code,
# shared libraries, SQLite's -shm index) and shared memory. Which of them grows says where to
# look for a run's RSS growth.
RSS_PARTS = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}


def rss_parts_kib(pids: list[int]) -> dict[str, int]:
    """The processes' resident memory in KiB: ``total`` and its anon, file and shmem parts."""
    parts = dict.fromkeys(("total", *RSS_PARTS.values()), 0)
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition("\t")
            if key == "VmRSS:":
                parts["total"] += int(value.split()[0])
            elif key in RSS_PARTS:
                parts[RSS_PARTS[key]] += int(value.split()[0])
    return parts


def sqlite_files_kib(data_dir: Path) -> dict[str, int]:
    """Sizes of the SQLite database, its write-ahead log and its -shm index (mapped by every
    connection, so resident in the servers as file pages), in KiB."""
    sizes = {}
    for database in data_dir.glob("*.db"):
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                sizes[f"sqlite{suffix}"] = database.with_name(database.name + suffix).stat().st_size
    return {name: size // 1024 for name, size in sizes.items()}


def mapped_kib(pids: list[int]) -> dict[str, int]:
    """The processes' resident KiB by kind of mapping (/proc/PID/smaps): the main malloc heap
    (``[heap]``), other anonymous mappings (glibc's per-thread arenas, large allocations,
    thread stacks), SQLite's files, shared libraries and other files."""
    kinds: dict[str, int] = {}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps").read_text()
        except OSError:
            continue
        kind = ""
        for line in text.splitlines():
            head = line.split(maxsplit=5)
            if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:  # a mapping's line
                kind = _mapping_kind(head[5] if len(head) == 6 else "")
            elif line.startswith("Rss:"):
                kinds[kind] = kinds.get(kind, 0) + int(line.split()[1])
    return kinds


def _mapping_kind(name: str) -> str:
    if not name:
        return "anonymous"
    if name.startswith("["):
        return name  # [heap], [stack], ...
    if ".db" in name:
        return "sqlite files"
    return "libraries" if ".so" in name else "other files"


class MemoryWatch:
    """The servers' memory through the mix: RSS and its parts every few seconds, and RSS by
    kind of mapping when the growth window opens."""

    def __init__(self, pids: list[int], data_dir: Path) -> None:
        self.pids, self.data_dir = pids, data_dir
        self.parts: list[dict[str, float]] = []
        self.mappings: dict[str, int] = {}

    async def sample(self, started: float, deadline: float, every: float) -> None:
        while time.monotonic() < deadline:
            at, parts = round(time.monotonic() - started, 1), rss_parts_kib(self.pids)
            self.parts.append(
                {
                    "at": at,
                    **parts,
                    **sqlite_files_kib(self.data_dir),
                    "sqlite_connections": sqlite_connections(self.pids),
                }
            )
            await asyncio.sleep(every)

    def window_opens(self) -> None:
        self.mappings = mapped_kib(self.pids)


def mapping_growth(first: dict[str, int], last: dict[str, int]) -> dict[str, int]:
    """Growth in KiB per kind of mapping, largest first (kinds that did not change left out)."""
    growth = {k: last.get(k, 0) - first.get(k, 0) for k in first.keys() | last.keys()}
    return dict(sorted(((k, v) for k, v in growth.items() if v), key=lambda kv: -abs(kv[1])))


def sqlite_connections(pids: list[int]) -> int:
    """SQLite connections the processes hold open: their descriptors on a ``*.db`` file (each
    connection keeps its own, and with it its page cache and prepared statements)."""
    count = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    count += os.readlink(fd).endswith(".db")
    return count


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


class OutsideServers:
    """What the servers' CPU figure leaves out, from a start to :meth:`figures`: the busy cores
    of the whole machine (``/proc/stat``), and for PostgreSQL the sessions it opened. Each new
    connection forks a backend, whose CPU no process left at the end shows: with a pool too
    small for the load, that was half a core in a read load, and reads/s 30 % lower
    (BENCHMARKS.md, issue 14)."""

    def __init__(self, database_url: str | None) -> None:
        self._url = plain_pg_url(database_url) if database_url else None
        self._ticks = self._machine_ticks()
        self._sessions = self._database_sessions()

    @staticmethod
    def _machine_ticks() -> tuple[int, int]:
        """(busy, all) ticks of every core so far: all but idle and iowait are busy."""
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        every = sum(fields[:8])  # guest time is already counted in user
        return every - fields[3] - fields[4], every

    def _database_sessions(self) -> int | None:
        if self._url is None:
            return None
        import psycopg

        with psycopg.connect(self._url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        return int(row[0]) if row else None

    def figures(self) -> dict[str, Any]:
        busy, every = self._machine_ticks()
        out: dict[str, Any] = {
            "machine_busy_cores": round(
                (busy - self._ticks[0]) / max(every - self._ticks[1], 1) * (os.cpu_count() or 1), 2
            )
        }
        sessions = self._database_sessions()
        if sessions is not None and self._sessions is not None:
            out["database_sessions_opened"] = sessions - self._sessions - 1  # not this probe's
        return out


def driver_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def percentiles(values: list[float]) -> dict[str, float]:
    """Median and p99 latency in milliseconds."""
    summary = seconds_ms(values)
    return {"p50_ms": summary.get("median_ms", 0.0), "p99_ms": summary.get("p99_ms", 0.0)}


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


async def seed_packages(base: str, count: int) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Log both officers in; upload ``count`` packages as the Uzbek officer, released to
    Kazakhstan."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        tokens = {}
        for user in ("uz.officer", "kz.officer"):
            r = await http.post("/auth/login", json={"username": user, "password": PASSWORD})
            r.raise_for_status()
            tokens[user] = r.json()["access_token"]
        uz = {"Authorization": f"Bearer {tokens['uz.officer']}"}
        package_ids = []
        for i in range(count):
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


async def healthz_baseline(
    args: argparse.Namespace, bases: list[str], every: list[int]
) -> dict[str, object]:
    """``/healthz`` from the same clients for ``--baseline-seconds``: the stack's ceiling."""
    latencies: list[float] = []
    errors: list[str] = []
    server_cpu, driver_cpu = cpu_seconds(every), driver_cpu_seconds()
    started = time.monotonic()
    deadline = started + args.baseline_seconds
    await asyncio.gather(
        *(baseline_loop(i, bases, deadline, latencies, errors) for i in range(args.clients))
    )
    wall = time.monotonic() - started
    count = len(latencies)
    return {
        "seconds": round(wall, 1),
        "count": count,
        "per_second": round(count / wall, 1),
        **percentiles(latencies),
        "errors": len(errors),
        "server_cpu_ms_per_request": round(
            (cpu_seconds(every) - server_cpu) / max(count, 1) * 1000, 3
        ),
        "driver_cpu_ms_per_request": round(
            (driver_cpu_seconds() - driver_cpu) / max(count, 1) * 1000, 3
        ),
    }


def weighted_mix(args: argparse.Namespace) -> list[str]:
    """One cycle of a client's requests, by the ``--w-*`` weights."""
    return (
        ["list"] * args.w_list
        + ["show"] * args.w_show
        + ["download"] * args.w_download
        + ["upload"] * args.w_upload
    )


async def drive(args: argparse.Namespace, bases: list[str], pids: list[int]) -> dict[str, Any]:
    """The baseline, then the weighted mix from every client; the summary document."""
    every = [p for pid in pids for p in server_pids(pid)]
    summary: dict[str, Any] = {
        "clients": args.clients,
        "servers": args.servers,
        "workers_per_server": args.workers,
        "database": "postgresql" if args.database_url else "sqlite",
        "store": args.store,
        "server_malloc": "glibc defaults" if args.default_malloc else SERVER_MALLOC,
        "server_malloc_trim_seconds": args.malloc_trim_seconds,
        "driver": f"aiohttp {aiohttp.__version__}",
    }
    if args.baseline_seconds > 0:
        summary["baseline_healthz"] = await healthz_baseline(args, bases, every)
    tokens, package_ids = await seed_packages(bases[0], args.packages)
    mix = weighted_mix(args)
    results: dict[str, list[float]] = {k: [] for k in ("list", "show", "download", "upload")}
    errors: list[str] = []
    watch = MemoryWatch(every, args.data_dir)
    outside = OutsideServers(args.database_url)
    analyzer = AnalyzeAsAutovacuum(args.database_url, stand_in=not args.no_analyze)
    server_cpu, driver_cpu = cpu_seconds(every), driver_cpu_seconds()
    started = time.monotonic()
    deadline = started + args.seconds

    async def first_heap_snapshot() -> None:
        # When the RSS growth figure's window opens.
        await asyncio.sleep(args.seconds - growth_window(args.seconds))
        watch.window_opens()
        if args.heap_dir is not None:
            await asyncio.to_thread(heap_snapshots, args.heap_dir, pids, 1)

    await asyncio.gather(
        watch.sample(started, deadline, min(5.0, args.seconds / 2)),
        first_heap_snapshot(),
        analyzer.run(deadline),
        *(
            client_loop(i, bases, tokens, package_ids, deadline, results, errors, mix)
            for i in range(args.clients)
        ),
    )
    wall = time.monotonic() - started
    server_cpu, driver_cpu = cpu_seconds(every) - server_cpu, driver_cpu_seconds() - driver_cpu
    summary |= outside.figures() | analyzer.figures()
    if watch.mappings:
        summary["rss_growth_by_mapping_kib"] = mapping_growth(watch.mappings, mapped_kib(every))
    if args.heap_dir is not None:
        summary["heap_growth"] = compare_heaps(heap_snapshots(args.heap_dir, pids, 2))
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
    summary["server_rss_kib"] = [(p["at"], p["total"]) for p in watch.parts]
    summary["server_rss_parts_kib"] = watch.parts
    summary |= against_baseline(summary)
    return summary


def against_baseline(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's figures (14): audited metadata reads/s over the same run's /healthz/s, their
    p99 over /healthz's p99, and server RSS growth over the last 4 minutes (or the last 80%
    of a shorter run), in percent."""
    out: dict[str, Any] = {}
    base, reads = summary.get("baseline_healthz"), summary.get("metadata_reads")
    if isinstance(base, dict) and isinstance(reads, dict) and base["per_second"]:
        out["reads_vs_healthz_rate"] = round(
            summary["metadata_reads_per_second"] / base["per_second"], 3
        )
        out["reads_vs_healthz_p99"] = round(reads["p99_ms"] / max(base["p99_ms"], 1e-6), 2)
    rss: list[tuple[float, int]] = summary["server_rss_kib"]
    if len(rss) >= 2:
        end = rss[-1][0]
        start = end - growth_window(end)
        first = next(kib for at, kib in rss if at >= start)
        out["rss_growth_last_minutes_percent"] = round((rss[-1][1] - first) / first * 100, 2)
        parts: list[dict[str, float]] = summary.get("server_rss_parts_kib", [])
        if parts:
            opened = next(p for p in parts if p["at"] >= start)
            out["rss_growth_last_minutes_kib"] = {
                k: parts[-1][k] - opened[k] for k in ("total", *RSS_PARTS.values())
            }
    return out


Server = tuple[subprocess.Popen[bytes], str]
# The servers run with the allocator settings the Dockerfile sets (see there and BENCHMARKS.md,
# "Memory under sustained load"); --default-malloc runs them with glibc's defaults instead.
SERVER_MALLOC = {"MALLOC_ARENA_MAX": "2"}


def growth_window(seconds: float) -> float:
    """The span RSS growth is judged over: the last 4 minutes, or the last 80 % of a shorter
    run."""
    return min(240.0, seconds * 0.8)


def heap_snapshots(folder: Path, pids: list[int], n: int) -> dict[int, Path]:
    """Ask every server process for its ``n``-th heap snapshot (api/heapdump.py: SIGUSR2) and
    wait until each is written; pid to file."""
    paths = {pid: folder / f"heap-{pid}-{n}.snapshot" for pid in pids}
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 120
    while not all(path.exists() for path in paths.values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no heap snapshot from the servers in {folder}")
        time.sleep(0.2)
    return paths


def compare_heaps(last: dict[int, Path]) -> dict[str, Any]:
    """Per server process: traced memory at the two snapshots and the source lines whose
    allocations grew most between them (what the RSS growth is made of: a bounded cache
    levels off, a leak keeps growing with requests served)."""
    out: dict[str, Any] = {}
    for pid, path in last.items():
        before = tracemalloc.Snapshot.load(str(path.with_name(f"heap-{pid}-1.snapshot")))
        after = tracemalloc.Snapshot.load(str(path))
        grew = after.compare_to(before, "lineno")
        native = [
            json.loads(path.with_name(f"heap-{pid}-{n}.native.json").read_text()) for n in (1, 2)
        ]
        out[str(pid)] = {
            # Outside the Python heap (api/heapdump.py): allocator totals and SQLite's memory.
            "native_first": native[0],
            "native_last": native[1],
            "traced_kib_first": sum(s.size for s in before.statistics("filename")) // 1024,
            "traced_kib_last": sum(s.size for s in after.statistics("filename")) // 1024,
            "top": [
                {
                    "where": str(stat.traceback),
                    "size_diff_kib": round(stat.size_diff / 1024, 1),
                    "count_diff": stat.count_diff,
                }
                for stat in grew[:12]
            ],
        }
    return out


@contextlib.contextmanager
def fresh_schema(url: str | None) -> Iterator[str | None]:
    """None for SQLite; for a PostgreSQL server, the URL of a fresh schema on it (dropped
    afterwards), so a run never meets another's tables."""
    if url is None:
        yield None
        return
    with pg_schema(url) as (schema_url, _):
        yield schema_url


def start_servers(args: argparse.Namespace, env: dict[str, str]) -> list[Server]:
    """``--servers`` servers on their own loopback ports, answering; (process group, URL)."""
    servers: list[Server] = []
    for _ in range(args.servers):
        port = free_port()
        command = [BLOVAULT, "serve", "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(
            [*command, "--workers", str(args.workers)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        servers.append((proc, f"http://127.0.0.1:{port}"))
    for _, base in servers:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
    return servers


def stop_servers(servers: list[Server]) -> None:
    """Stop every server's process group (uvicorn and its workers) and reap it."""
    for proc, _ in servers:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc, _ in servers:
        proc.wait(timeout=30)


def print_report(summary: dict[str, Any]) -> None:
    """One row per request kind, then the CPU and memory figures."""
    rows = []
    for kind in ("baseline_healthz", "list", "show", "download", "upload", "metadata_reads"):
        if isinstance(figures := summary.get(kind), dict):
            per_second = figures.get("per_second", summary["metadata_reads_per_second"])
            rows.append((kind, per_second, figures["p50_ms"], figures["p99_ms"]))
    print_table(("requests", "per second", "p50 ms", "p99 ms"), rows)
    print(
        f"{summary['requests_per_second']} requests/s over {summary['seconds']} s, "
        f"{summary['errors']} errors {summary['error_kinds']}; server CPU "
        f"{summary['server_cpu_cores']} cores, {summary['server_cpu_ms_per_request']} ms/request;"
        f" driver CPU {summary['driver_cpu_cores']} cores; machine busy"
        f" {summary['machine_busy_cores']} of {os.cpu_count()} cores"
    )
    if "database_sessions_opened" in summary:
        print(f"PostgreSQL sessions opened during the mix: {summary['database_sessions_opened']}")
    if summary.get("postgresql_autovacuum") == "off":
        analyses = summary["analyses_in_autovacuums_stead"]
        print(
            "PostgreSQL's autovacuum is off: "
            + (
                "nothing ANALYZEd (--no-analyze)"
                if analyses is None
                else f"{analyses} ANALYZEs run in its stead"
            )
        )
    for key in (
        "reads_vs_healthz_rate",
        "reads_vs_healthz_p99",
        "rss_growth_last_minutes_percent",
        "rss_growth_last_minutes_kib",
        "rss_growth_by_mapping_kib",
    ):
        if key in summary:
            print(f"{key}: {summary[key]}")
    for pid, heap in summary.get("heap_growth", {}).items():
        print(f"server {pid}: traced {heap['traced_kib_first']} -> {heap['traced_kib_last']} KiB")
        for key, first in heap["native_first"].items():
            last = heap["native_last"].get(key, first)
            print(f"  {key}: {first / 2**20:.1f} -> {last / 2**20:.1f} MiB")
        for stat in heap["top"][:5]:
            print(f"  {stat['size_diff_kib']:+10.1f} KiB {stat['count_diff']:+7d}  {stat['where']}")
    rss = summary["server_rss_kib"]
    if rss:
        print(
            f"server RSS: first {rss[0][1] / 1024:.0f} MiB, last {rss[-1][1] / 1024:.0f} MiB, "
            f"max {max(r for _, r in rss) / 1024:.0f} MiB"
        )


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
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
    parser.add_argument(
        "--database",
        "--database-url",
        dest="database_url",
        default=None,
        help="PostgreSQL server URL (default SQLite); the run gets a fresh schema on it, "
        "dropped afterwards",
    )
    parser.add_argument("--packages", type=int, default=20, help="packages seeded (20)")
    parser.add_argument(
        "--store",
        choices=("local", "minio-moto"),
        default="local",
        help="object store: the local folder, or the MinIO store on moto_server (S3)",
    )
    parser.add_argument(
        "--heap-snapshots",
        action="store_true",
        help="trace the servers' allocations and compare heap snapshots taken when the RSS "
        "growth window opens and at the end (slows the servers: explain with it, measure "
        "without)",
    )
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="on a PostgreSQL server with autovacuum off, don't ANALYZE in its stead "
        "(bench.pg_analyze): the server as it is set",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="run the servers with glibc's default allocator settings, not the Dockerfile's",
    )
    parser.add_argument(
        "--malloc-trim-seconds",
        type=float,
        default=None,
        help="the servers' VAULT_MALLOC_TRIM_SECONDS (default: the server's own, 10; 0: never)",
    )
    parser.add_argument("--w-list", type=int, default=3)
    parser.add_argument("--w-show", type=int, default=5)
    parser.add_argument("--w-download", type=int, default=2)
    parser.add_argument("--w-upload", type=int, default=1)
    add_common_arguments(parser, out="load.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load test from the command line."""
    parser = build_parser()
    args = parse_arguments(parser, argv, QUICK)
    if args.heap_snapshots and args.workers != 1:
        # Only the processes serving the app answer SIGUSR2 with a snapshot; for any other
        # (uvicorn's supervisor, multiprocessing's helpers) the signal's default is to exit.
        parser.error("--heap-snapshots needs --workers 1")
    with (
        workdir("vault-load-") as tmp,
        fresh_schema(args.database_url) as database_url,
        contextlib.ExitStack() as stack,
    ):
        args.database_url = database_url
        store = stack.enter_context(moto_store()) if args.store == "minio-moto" else None
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        if not args.default_malloc:
            env |= SERVER_MALLOC
        env |= {
            "VAULT_DATA_DIR": f"{tmp}/data",
            "VAULT_ARGON2_TIME_COST": "1",
            "VAULT_ARGON2_MEMORY_KIB": "1024",
            "VAULT_ARGON2_PARALLELISM": "1",
            "VAULT_LOGIN_FAILURES_PER_ADDRESS": "1000",
        }
        if args.database_url:
            env["VAULT_DATABASE_URL"] = args.database_url
        if args.malloc_trim_seconds is not None:
            env["VAULT_MALLOC_TRIM_SECONDS"] = str(args.malloc_trim_seconds)
        args.data_dir = tmp / "data"
        args.heap_dir = tmp / "heap" if args.heap_snapshots else None
        if args.heap_dir is not None:
            env[heapdump.ENV] = str(args.heap_dir)
        if store:
            env |= store_env(store)
        seed(tmp / "data", args.database_url, store)
        servers = start_servers(args, env)
        try:
            summary = asyncio.run(
                drive(args, [base for _, base in servers], [p.pid for p, _ in servers])
            )
        finally:
            stop_servers(servers)
    summary["command"] = command_line("bench.load", argv)
    print_report(summary)
    write_json(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
