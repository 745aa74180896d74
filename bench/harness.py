"""What every benchmark shares: machine facts, a CPU meter that also sees other processes,
waiting for a quiet machine, percentiles and summaries, tables, throw-away folders and
PostgreSQL schemas, ``--quick`` argument handling and JSON results.

The machine is shared (other engineers run test suites on the same cores), so every benchmark
records, for each of its phases, how much CPU everything else used while it ran.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import hashlib
import io
import json
import math
import os
import platform
import pstats
import resource
import secrets
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from vault import db
from vault.config import load_settings
from vault.ledger import log
from vault.models import Classification, Role
from vault.schemas import NewPackage
from vault.service import IncomingFile, Principal, Vault, local_operator

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench" / "out"
BLOVAULT = str(Path(sys.executable).with_name("blovault"))
# Cheap, still argon2id, password hashing (as the tests use): seeding is not what we measure.
FAST_ARGON2: dict[str, Any] = {
    "argon2_time_cost": 1,
    "argon2_memory_kib": 1024,
    "argon2_parallelism": 1,
}
PASSWORD = "bench password, not a secret"  # throw-away vaults only
ORIGIN = "bench.blo-vault.local/ledger"
# What a timed ledger append records: an allowed listing, as the service writes for reads.
LIST_RECORD: dict[str, Any] = {
    "actor": log.Actor(user="uz.officer", agency="UZ-CUSTOMS", country="UZ"),
    "action": "list",
    "decision": "allow",
    "reason": "ok",
    "policy": "b" * 64,
    "subject": "count:0",
}


# --- arguments -------------------------------------------------------------------------------


def add_common_arguments(
    parser: argparse.ArgumentParser, *, out: str, wait_idle: float | None = None
) -> None:
    """``--quick``, ``--out FILE`` (default ``bench/out/<out>``) and, for a benchmark that
    waits for a quiet machine before its phases, ``--wait-idle SECONDS`` (default
    ``wait_idle``)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, seconds not minutes: checks the benchmark runs (CI), measures nothing",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR / out, help="JSON result file")
    if wait_idle is not None:
        parser.add_argument(
            "--wait-idle",
            type=float,
            default=wait_idle,
            metavar="SECONDS",
            help="before each phase wait up to this long for a quiet machine (others < 0.15 "
            f"cores over 1 s); 0 = don't wait ({wait_idle:g})",
        )


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, quick: dict[str, Any]
) -> argparse.Namespace:
    """Parse ``argv``; with ``--quick`` the ``quick`` values replace the defaults (options
    given on the command line still win)."""
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """How this run was started, for the result file."""
    given = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", "-m", module, *given])


# --- machine ---------------------------------------------------------------------------------


def _proc_field(path: str, prefix: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    return ""


def filesystem(path: Path) -> dict[str, str]:
    """Device, type and mount options of the mount holding ``path`` (longest prefix wins)."""
    best: dict[str, str] = {}
    target = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype, opts, *_ = line.split()
            inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best.get("mount", "")):
                best = {"device": dev, "mount": mnt, "type": fstype, "options": opts}
    return best


def fsync_latency_ms(folder: Path, count: int = 200) -> float:
    """Median time of write(4 KiB) + fdatasync on a file in ``folder``: the disk's floor."""
    path = folder / "fsync.probe"
    times = []
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        block = os.urandom(4096)
        for _ in range(count):
            began = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def machine_info(folder: Path, *, fsync: bool = False) -> dict[str, Any]:
    """CPU (model, crypto flags), cores, RAM, kernel, library versions and the filesystem
    holding ``folder``; with ``fsync``, also the disk's fsync latency there."""
    from cryptography.hazmat.backends.openssl import backend

    wanted = {"aes", "pclmulqdq", "avx2", "avx512f", "vaes", "vpclmulqdq", "sha_ni"}
    mem = _proc_field("/proc/meminfo", "MemTotal")
    info: dict[str, Any] = {
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cpu_flags": sorted(wanted & set(_proc_field("/proc/cpuinfo", "flags").split())),
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem.split()[0]) / 1024 / 1024, 1) if mem else None,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": _version("sqlalchemy"),
        "sqlmodel": _version("sqlmodel"),
        "pycasbin": _version("pycasbin"),
        "cryptography": _version("cryptography"),
        "openssl": backend.openssl_version_text(),
        "filesystem": filesystem(folder),
        "loadavg_at_start": os.getloadavg(),
    }
    if fsync:
        info["fsync_4k_median_ms"] = round(fsync_latency_ms(folder), 3)
    return info


def machine_line(m: dict[str, Any]) -> str:
    """One line naming the machine, for the top of a table."""
    fs = m.get("filesystem", {})
    line = (
        f"machine: {m['cpu']} x{m['cores']}, {m['ram_gib']} GiB, kernel {m['kernel']}, "
        f"Python {m['python']}, SQLite {m['sqlite']}, cryptography {m['cryptography']}, "
        f"fs {fs.get('type', '?')} on {fs.get('device', '?')}"
    )
    if "fsync_4k_median_ms" in m:
        line += f", fsync 4 KiB median {m['fsync_4k_median_ms']} ms"
    return line


def source_fingerprint(*paths: str) -> dict[str, str]:
    """SHA-256 (first 12 hex) of the source on the measured path, each a file or a package
    folder (its .py files in name order): the code is edited concurrently, so each result
    says which version it measured."""
    out = {}
    for rel in paths:
        target = ROOT / rel
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        digest = hashlib.sha256()
        for path in files:
            with contextlib.suppress(OSError):
                digest.update(path.read_bytes())
        if any(path.exists() for path in files):
            out[rel] = digest.hexdigest()[:12]
    return out


# --- contention ------------------------------------------------------------------------------

_HZ = os.sysconf("SC_CLK_TCK")


def _busy_jiffies() -> int:
    """Jiffies all CPUs spent not idle (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq + steal


def _self_jiffies() -> int:
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


class CpuMeter:
    """This process's CPU seconds, and the CPU (in cores) used by everything else, over a span.

    "Everything else" includes kernel threads working for us (writeback during fsync) and time
    stolen by the hypervisor, so it is never exactly 0; a value near 1 means another process
    was taking a whole core from a 2-core benchmark.
    """

    wall_s = user_s = sys_s = others_cores = 0.0
    minor_faults = 0

    def __enter__(self) -> CpuMeter:
        self._t = time.perf_counter()
        self._busy, self._self = _busy_jiffies(), _self_jiffies()
        self._times = os.times()
        self._faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t
        t = os.times()
        self.user_s = t.user - self._times.user
        self.sys_s = t.system - self._times.system
        # Page faults cost kernel time, and more on a VM whose freed pages went back to the host.
        self.minor_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self._faults
        others = (_busy_jiffies() - self._busy) - (_self_jiffies() - self._self)
        self.others_cores = max(0.0, others / _HZ / self.wall_s) if self.wall_s > 0 else 0.0

    @property
    def cpu_s(self) -> float:
        """User plus system CPU seconds of this process."""
        return self.user_s + self.sys_s

    def as_dict(self) -> dict[str, float]:
        """The figures, rounded, for a result file."""
        return {
            "wall_s": round(self.wall_s, 3),
            "cpu_user_s": round(self.user_s, 3),
            "cpu_sys_s": round(self.sys_s, 3),
            "others_cores": round(self.others_cores, 2),
            "minor_faults": self.minor_faults,
        }


def wait_idle(max_wait: float, threshold: float = 0.15) -> float | None:
    """Wait (at most ``max_wait`` s) for a 1 s window where others use < ``threshold`` cores.

    Returns the last window's figure, recorded with the phase; None when ``max_wait`` is 0
    (no window measured).
    """
    if max_wait <= 0:
        return None
    deadline = time.monotonic() + max_wait
    while True:
        with CpuMeter() as meter:
            time.sleep(1.0)
        if meter.others_cores < threshold or time.monotonic() >= deadline:
            return round(meter.others_cores, 2)


class Phases:
    """Named phases of a run: each waits for a quiet machine, then records its wall time, CPU
    and the CPU everything else used meanwhile (``record``, for the result file)."""

    def __init__(self, wait_idle_s: float, threshold: float = 0.15) -> None:
        self.wait_idle_s = wait_idle_s
        self.threshold = threshold
        self.record: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[CpuMeter]:
        """Run the body as phase ``name``; prints one line when it ends."""
        before = wait_idle(self.wait_idle_s, self.threshold)
        gc.collect()
        with CpuMeter() as meter:
            yield meter
        self.record[name] = {"others_cores_before": before, **meter.as_dict()}
        print(
            f"  [{name}: {meter.wall_s:.1f} s wall, {meter.cpu_s:.1f} s CPU, others used "
            f"{meter.others_cores:.2f} cores (before: {before})]",
            flush=True,
        )


# --- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0-100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return float(ordered[k])


def summarise(values: Sequence[float], unit: str, scale: float) -> dict[str, float]:
    """n, median, p90, p99, mean, min and max of ``values`` times ``scale``, keys suffixed
    with ``unit`` (``summarise(ns, "us", 1e-3)``: nanoseconds shown in microseconds)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    out: dict[str, float] = {"n": len(ordered)}
    for name, figure in (
        ("median", percentile(ordered, 50)),
        ("p90", percentile(ordered, 90)),
        ("p99", percentile(ordered, 99)),
        ("mean", sum(ordered) / len(ordered)),
        ("min", ordered[0]),
        ("max", ordered[-1]),
    ):
        out[f"{name}_{unit}"] = round(figure * scale, 4)
    return out


def p50_p99_ms(ms: Sequence[float]) -> dict[str, float]:
    """Median and p99 of timings already in milliseconds, with their count."""
    return {"p50_ms": statistics.median(ms), "p99_ms": percentile(ms, 99), "n": len(ms)}


def summary_us(ns: Sequence[int]) -> dict[str, float]:
    """Nanosecond timings summarised in microseconds."""
    return summarise(ns, "us", 1e-3)


def summary_ms(ns: Sequence[int]) -> dict[str, float]:
    """Nanosecond timings summarised in milliseconds."""
    return summarise(ns, "ms", 1e-6)


def seconds_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Timings in seconds summarised in milliseconds."""
    return summarise(seconds, "ms", 1e3)


# --- output ----------------------------------------------------------------------------------


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Rows under a header, the first column left-aligned and the others right-aligned."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        print("  ".join([first, *rest]).rstrip())
        if n == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))


def write_json(path: Path, result: object) -> None:
    """Write a result file (its folder made if missing) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", "utf-8")
    print(f"\nresults: {path}")


@contextlib.contextmanager
def profiled(path: Path | None) -> Iterator[cProfile.Profile | None]:
    """cProfile the body into ``path`` (a .pstats file); nothing when ``path`` is None."""
    if path is None:
        yield None
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield prof
    finally:
        prof.disable()
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(str(path))


def profile_lines(prof: cProfile.Profile, top: int = 25) -> list[str]:
    """The ``top`` functions by own time, then by cumulative time, as text lines."""
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    out.write("\n--- by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(top)
    return [line for line in out.getvalue().splitlines() if line.strip()]


# --- places ----------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir(prefix: str, parent: Path | str | None = None, *, keep: bool = False) -> Iterator[Path]:
    """A fresh temp folder (under ``parent`` if given), removed afterwards unless ``keep``."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield work
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_in_workdir(
    module: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    quick: dict[str, Any],
    run: Callable[[argparse.Namespace, Path], dict[str, Any]],
    report: Callable[[dict[str, Any]], None],
) -> int:
    """A benchmark's main: parse ``argv``, ``run`` in a fresh temp folder, then ``report`` the
    result (with its command line) and write it to ``--out``."""
    args = parse_arguments(parser, argv, quick)
    with workdir(f"blo-{module.rsplit('.', 1)[-1]}-") as work:
        result = run(args, work)
    result["command"] = command_line(module, argv)
    report(result)
    write_json(args.out, result)
    return 0


def plain_pg_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as psycopg takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def pg_schema(url: str) -> Iterator[tuple[str, str]]:
    """A fresh schema on the server at ``url``; yields (URL whose search_path is it, its
    name). Dropped afterwards."""
    import psycopg

    if make_url(url).get_backend_name() != "postgresql":
        raise SystemExit(f"not a postgresql:// URL: {url}")
    name = "bench_" + secrets.token_hex(5)
    plain = plain_pg_url(url)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{name}", name
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


def ledger_engine(url_or_path: str | Path) -> Engine:
    """The vault's engine (``make_engine``) on a SQLite file or a database URL, migrated to
    the vault's schema."""
    url = f"sqlite:///{url_or_path}" if isinstance(url_or_path, Path) else url_or_path
    engine = db.make_engine(url)
    db.migrate(engine)
    return engine


def open_vault(data_dir: Path, **settings: Any) -> Vault:
    """A vault on ``data_dir`` with cheap password hashing (and any other ``settings``)."""
    return Vault.open(load_settings(data_dir=data_dir, **FAST_ARGON2, **settings))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_world(data_dir: Path) -> tuple[Vault, Principal]:
    """A vault on ``data_dir`` with one country, agency and officer (user ``uz.officer``,
    password :data:`PASSWORD`); the officer's principal."""
    vault = open_vault(data_dir)
    op = local_operator()
    vault.add_country(op, "UZ", "Uzbekistan")
    vault.add_agency(op, "UZ-CUSTOMS", "UZ", "State Customs Committee")
    vault.add_user(
        op,
        username="uz.officer",
        agency="UZ-CUSTOMS",
        role=Role.OFFICER,
        password=PASSWORD,
        clearance=Classification.SECRET,
    )
    principal = vault.authenticate(vault.login("uz.officer", PASSWORD).access_token)
    return vault, principal


def seed_packages(vault: Vault, officer: Principal, count: int) -> list[str]:
    """``count`` small packages (one 1,000-byte file each) uploaded by ``officer``; their ids,
    oldest first."""
    return [
        vault.upload(
            officer,
            NewPackage(title=f"seed {i}", description="bench"),
            [IncomingFile(name="a.txt", reader=io.BytesIO(b"x" * 1000))],
        ).package.id
        for i in range(count)
    ]
