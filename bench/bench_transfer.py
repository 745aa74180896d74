"""Transfer benchmark: a large file through the service layer vs a raw copy through the same store.

Run::

    python -m bench.bench_transfer --size-mib 1024 [--dir PATH] [--repeat N] [--cache cold|warm]
    python -m bench.bench_transfer --quick    # 8 MiB, 2 repeats, no waiting (CI)

In one process it builds a throw-away vault (SQLite + LocalDiskStore under a temp folder, one
country, one agency, one officer), writes a source file of random bytes (before any timing),
then for each repeat runs::

    raw upload    store.put(key, open(src, "rb"))                 (1 MiB reads, fsync, rename)
    vault upload  Vault.upload(officer, NewPackage, [IncomingFile(name, open(src, "rb"))])
    raw download  store.open(key).read(1 MiB) until EOF, discarded
    vault download  every chunk of Vault.download(officer, pid, fid).chunks, counted, discarded

the two uploads, then the two downloads, each pair in alternating order (raw first in odd
repeats, vault first in even ones), each phase after ``--settle`` seconds.

Times are wall clock (``time.perf_counter``) around exactly those calls. Outside the timed
region, before every phase: ``os.sync()``, ``gc.collect()`` and ``malloc_trim(0)`` so no earlier
phase's writeback or retained heap bleeds into the next. With ``--cache cold`` (the default)
each stored object, raw and sealed alike, is dropped from the page cache right after its upload
(``posix_fadvise(POSIX_FADV_DONTNEED)`` on the already fsynced file, so the pages are clean and
really go), and both downloads read from the disk. With ``--cache warm`` nothing is dropped and
both downloads read what the upload just left in the page cache. The source file is kept in
the page cache in both modes (a fast producer, so the vault's own cost is not hidden behind a
slow source).

Peak RSS growth per phase: the kernel's peak-RSS counter (VmHWM) is reset by writing ``5`` to
``/proc/self/clear_refs`` just before the phase, and read back after it; a thread also samples
VmRSS every 5 ms as a cross-check. Growth = max(VmHWM, sampled peak) - VmRSS before the phase.
(``ru_maxrss`` is not used: it cannot be reset, so it only shows the process-lifetime peak.)

The machine may be shared (other engineers run test suites on the same 2 cores). Before each
phase the script waits (``--wait-idle``, default up to 60 s) for a 1 s window in which other
processes use < 0.15 cores, and records for every phase this process's CPU seconds (user+sys,
all threads) and the CPU used by everything else during it ("others", in cores, from
/proc/stat; includes kernel writeback threads and hypervisor steal). Phases with others near
1.0 were contended and their wall times are not trustworthy.

Results: a table on stdout and JSON in ``bench/out/transfer.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import hashlib
import os
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import (
    CpuMeter,
    add_common_arguments,
    command_line,
    machine_info,
    machine_line,
    open_world,
    parse_arguments,
    print_table,
    profile_lines,
    profiled,
    source_fingerprint,
    wait_idle,
    workdir,
    write_json,
)
from vault.schemas import NewPackage
from vault.service import IncomingFile, Principal, Vault

MiB = 1024 * 1024
CHUNK = MiB
# The targets.
TARGET_RATIO = 1.3
TARGET_RSS_MIB = 64.0
QUICK = {"size_mib": 8, "repeat": 2, "wait_idle": 0.0, "settle": 0.0}
# The source files on the measured path (a folder counts as its .py files).
MEASURED = ("vault/crypto.py", "vault/service", "vault/storage/local.py")


# --- memory ----------------------------------------------------------------------------------


def _status_kib(name: str) -> int:
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(name.encode()):
                return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/self/status")


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _settle() -> None:
    """Give back what earlier phases left in Python's and glibc's free lists."""
    gc.collect()
    with contextlib.suppress(AttributeError):
        _libc.malloc_trim(0)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssMonitor:
    """Peak RSS growth over one phase (VmHWM reset + 5 ms VmRSS sampling)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.base_kib = 0
        self.sampled_peak_kib = 0
        self.hwm_kib = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sampled_peak_kib = max(self.sampled_peak_kib, _status_kib("VmRSS:"))

    def __enter__(self) -> RssMonitor:
        self.hwm_reset = _reset_hwm()
        self.base_kib = _status_kib("VmRSS:")
        self.sampled_peak_kib = self.base_kib
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sampled_peak_kib = max(self.sampled_peak_kib, _status_kib("VmRSS:"))
        self.hwm_kib = _status_kib("VmHWM:") if self.hwm_reset else 0

    @property
    def growth_mib(self) -> float:
        return (max(self.hwm_kib, self.sampled_peak_kib) - self.base_kib) / 1024

    def as_dict(self) -> dict[str, Any]:
        return {
            "base_rss_mib": round(self.base_kib / 1024, 1),
            "peak_hwm_mib": round(self.hwm_kib / 1024, 1) if self.hwm_reset else None,
            "peak_sampled_mib": round(self.sampled_peak_kib / 1024, 1),
            "growth_mib": round(self.growth_mib, 1),
        }


# --- world -----------------------------------------------------------------------------------


def make_source(path: Path, size: int) -> str:
    """Write ``size`` random bytes (1 MiB os.urandom chunks), fsync; return its SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(CHUNK, left))
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def warm(path: Path) -> None:
    """Read a file once so it sits in the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(CHUNK):
            pass


def drop_cache(path: Path) -> None:
    """Drop a (clean, fsynced) file's pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class ChunkedReader:
    """A file whose read(n) returns at most ``limit`` bytes (models a source with small reads)."""

    def __init__(self, f: Any, limit: int) -> None:
        self._f, self._limit = f, limit

    def read(self, size: int = -1, /) -> bytes:
        data: bytes = self._f.read(self._limit if size < 0 else min(size, self._limit))
        return data


def raw_reader(
    store: Any, key: str, size: int, work: Path, args: argparse.Namespace
) -> Callable[[], dict[str, Any]]:
    """The raw download: the stored object read in 1 MiB chunks into the sink."""

    def raw_down() -> dict[str, Any]:
        n = 0
        with store.open(key) as f, Sink(work, args.download_to) as sink:
            while chunk := f.read(CHUNK):
                n += len(chunk)
                sink.write(chunk)
        if n != size:
            raise RuntimeError(f"raw read {n} bytes, expected {size}")
        return {}

    return raw_down


def object_path(vault: Vault, key: str) -> Path:
    """Where LocalDiskStore keeps ``key`` (root/ab/cd/key); other stores are not supported."""
    root = getattr(vault.store, "root", None)
    if root is None:
        raise SystemExit("this benchmark needs the local-disk store (VAULT_STORE=local)")
    return Path(root) / key[:2] / key[2:4] / key


# --- phases ----------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    seconds: float
    nbytes: int
    rss: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "seconds": round(self.seconds, 4),
            "bytes": self.nbytes,
            "mb_per_s": round(self.nbytes / self.seconds / 1e6, 1),
            "rss": self.rss,
            **self.extra,
        }


def timed(
    name: str,
    size: int,
    fn: Callable[[], dict[str, Any]],
    args: argparse.Namespace,
    profile_to: Path | None = None,
) -> Phase:
    """Run one phase after a sync, a heap trim and (``--wait-idle``) a quiet second; its
    time, peak RSS growth and CPU."""
    os.sync()
    _settle()
    others_before = wait_idle(args.wait_idle)
    with RssMonitor() as mon, profiled(profile_to) as prof, CpuMeter() as cpu:
        t0 = time.perf_counter()
        extra = fn()
        seconds = time.perf_counter() - t0
    if prof is not None and profile_to is not None:
        print(f"--- cProfile {profile_to.name} (top by tottime) ---")
        print("\n".join(profile_lines(prof, 12)))
    extra = {**extra, **cpu.as_dict(), "others_cores_before": others_before}
    return Phase(name, seconds, size, mon.as_dict(), extra)


@dataclass
class Transfer:
    """What every repeat of one run shares: the vault, its officer and the source file."""

    args: argparse.Namespace
    vault: Vault
    officer: Principal
    work: Path
    src: Path
    src_sha: str
    size: int


def uploads(t: Transfer, i: int, rep: dict[str, Any]) -> dict[str, str]:
    """Repeat ``i``'s raw and vault uploads into ``rep``; the vault package and file ids."""
    args, size = t.args, t.size
    raw_key = secrets.token_hex(16)
    ids: dict[str, str] = {"raw": raw_key}
    prof_dir = Path(args.profile) if args.profile and i == 0 else None

    def raw_up() -> dict[str, Any]:
        with open(t.src, "rb") as f:
            n = t.vault.store.put(
                raw_key, ChunkedReader(f, args.raw_chunk) if args.raw_chunk else f
            )
        if n != size:
            raise RuntimeError(f"raw put stored {n} bytes, expected {size}")
        return {}

    def vault_up() -> dict[str, Any]:
        with open(t.src, "rb") as f:
            result = t.vault.upload(
                t.officer,
                NewPackage(title=f"bench {i + 1}"),
                [IncomingFile(name="bench.bin", reader=f)],
            )
        stored = result.package.files[0]
        ids["package"], ids["file"] = result.package.id, stored.id
        if stored.size != size or stored.sha256 != t.src_sha:
            raise RuntimeError("vault recorded the wrong size or digest")
        return {}

    # Uploads, like downloads below, alternate which goes first and wait --settle seconds
    # before starting: an upload that right follows freeing 1 GiB (a deleted download.out, a
    # dropped cache) gets pages the host has not taken back yet. With --download-to file and
    # a fixed order, the raw upload always came right after the deletion and ran 5x faster
    # than in any other run (0.62 s against 3.3 s).
    for which in ["raw", "vault"] if i % 2 == 0 else ["vault", "raw"]:
        time.sleep(args.settle)
        if which == "raw" and not args.vault_only:
            rep["raw_upload"] = timed("raw upload", size, raw_up, args)
        elif which == "vault":
            profile_to = prof_dir / "profile_vault_upload.pstats" if prof_dir else None
            rep["vault_upload"] = timed("vault upload", size, vault_up, args, profile_to)
    rep["vault_upload"].extra["stored_bytes"] = object_path(t.vault, ids["file"]).stat().st_size
    return ids


def downloads(t: Transfer, i: int, rep: dict[str, Any], ids: dict[str, str]) -> None:
    """Repeat ``i``'s raw and vault downloads into ``rep``."""
    args, size = t.args, t.size
    sealed = object_path(t.vault, ids["file"])
    prof_dir = Path(args.profile) if args.profile and i == 0 else None

    def cold_start(path: Path) -> None:
        if args.cache == "cold":
            drop_cache(path)
            time.sleep(args.settle)

    def vault_down() -> dict[str, Any]:
        got = t.vault.download(t.officer, ids["package"], ids["file"])
        n = 0
        with Sink(t.work, args.download_to) as sink:
            for chunk in got.chunks:
                n += len(chunk)
                sink.write(chunk)
        if n != size or got.file.sha256 != t.src_sha:
            raise RuntimeError(f"vault download gave {n} bytes, expected {size}")
        return {}

    # Both downloads run after both uploads, each from the cache state cold_start leaves, and
    # which goes first alternates: on this VM refilling the page cache costs more or less
    # depending on what ran just before, so a fixed order would bias the ratio. With
    # --raw-object sealed the raw download reads the vault's own object, so only the vault's
    # own work differs.
    order = ["vault"]
    if not args.vault_only:
        order = ["raw", "vault"] if i % 2 == 0 else ["vault", "raw"]
    raw_key = ids["file"] if args.raw_object == "sealed" else ids["raw"]
    raw_size = sealed.stat().st_size if args.raw_object == "sealed" else size
    for which in order:
        if which == "raw":
            cold_start(object_path(t.vault, raw_key))
            reader = raw_reader(t.vault.store, raw_key, raw_size, t.work, args)
            rep["raw_download"] = timed("raw download", raw_size, reader, args)
        else:
            cold_start(sealed)
            profile_to = prof_dir / "profile_vault_download.pstats" if prof_dir else None
            rep["vault_download"] = timed("vault download", size, vault_down, args, profile_to)
        (t.work / "download.out").unlink(missing_ok=True)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every repeat in one throw-away vault under ``work``; the result document."""
    size = args.size_mib * MiB
    vault, officer = open_world(work / "vault-data")
    try:
        src = work / "source.bin"
        print(f"writing {args.size_mib} MiB source file under {work} ...", flush=True)
        t = Transfer(args, vault, officer, work, src, make_source(src, size), size)
        warm(src)
        info = machine_info(work)
        repeats: list[dict[str, Any]] = []
        for i in range(args.repeat):
            rep: dict[str, Any] = {"repeat": i + 1}
            downloads(t, i, rep, uploads(t, i, rep))
            repeats.append(rep)
            print(
                f"repeat {i + 1}/{args.repeat}: "
                + "  ".join(
                    f"{p.name} {p.seconds:.3f}s ({p.rss['growth_mib']:+.1f} MiB, "
                    f"others {p.extra['others_cores']:.2f})"
                    for p in rep.values()
                    if isinstance(p, Phase)
                ),
                flush=True,
            )
    finally:
        vault.close()
    return summarise(args, info, repeats)


# --- report ----------------------------------------------------------------------------------

PHASES = ("raw_upload", "vault_upload", "raw_download", "vault_download")


def summarise(
    args: argparse.Namespace, info: dict[str, Any], repeats: list[dict[str, Any]]
) -> dict[str, Any]:
    size = args.size_mib * MiB
    summary: dict[str, Any] = {}
    for key in PHASES:
        runs = [r[key] for r in repeats if key in r]
        if not runs:
            continue
        secs = [p.seconds for p in runs]
        med = statistics.median(secs)
        summary[key] = {
            "median_s": round(med, 4),
            "min_s": round(min(secs), 4),
            "max_s": round(max(secs), 4),
            "median_mb_per_s": round(size / med / 1e6, 1),
            "rss_growth_mib_max": round(max(p.rss["growth_mib"] for p in runs), 1),
            "rss_growth_mib_median": round(statistics.median(p.rss["growth_mib"] for p in runs), 1),
            "cpu_s_median": round(
                statistics.median(p.extra["cpu_user_s"] + p.extra["cpu_sys_s"] for p in runs), 3
            ),
            "others_cores_max": round(max(p.extra["others_cores"] for p in runs), 2),
        }
    ratios: dict[str, Any] = {}
    for direction in ("upload", "download"):
        raw, vlt = f"raw_{direction}", f"vault_{direction}"
        if raw not in summary:
            continue
        pairs = [r[vlt].seconds / r[raw].seconds for r in repeats]
        ratios[direction] = {
            "per_pair": [round(x, 3) for x in pairs],
            "median_of_pairs": round(statistics.median(pairs), 3),
            "ratio_of_medians": round(summary[vlt]["median_s"] / summary[raw]["median_s"], 3),
        }
    targets: dict[str, Any] = {}
    for direction, r in ratios.items():
        targets[f"{direction}_ratio<={TARGET_RATIO}"] = r["median_of_pairs"] <= TARGET_RATIO
    for key in ("vault_upload", "vault_download"):
        targets[f"{key}_rss_growth<={TARGET_RSS_MIB:g}MiB"] = (
            summary[key]["rss_growth_mib_max"] <= TARGET_RSS_MIB
        )
    return {
        "benchmark": "transfer",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "size_mib": args.size_mib,
        "repeat": args.repeat,
        "cache": args.cache,
        "settle_s": args.settle,
        "raw_object": args.raw_object,
        "raw_chunk": args.raw_chunk or "file object (put reads 1 MiB)",
        "download_to": args.download_to,
        "wait_idle_s": args.wait_idle,
        "machine": info,
        "summary": summary,
        "ratios": ratios,
        "targets": targets,
        "runs": [
            {k: (v.as_dict() if isinstance(v, Phase) else v) for k, v in r.items()} for r in repeats
        ],
    }


def print_report(result: dict[str, Any]) -> None:
    """Medians per phase, the ratios and the memory targets."""
    print()
    print(
        f"Transfer {result['size_mib']} MiB, {result['repeat']} repeats, cache={result['cache']},"
        f" raw source reads: {result['raw_chunk']},"
        f" downloads to: {result['download_to']}  ({result['date']})"
    )
    print(machine_line(result["machine"]) + "\n")
    rows = [
        (
            key.replace("_", " "),
            f"{s['median_s']:.3f}",
            f"{s['min_s']:.3f}",
            f"{s['max_s']:.3f}",
            f"{s['median_mb_per_s']:.0f}",
            f"{s['cpu_s_median']:.2f}",
            f"{s['rss_growth_mib_max']:.1f}",
            f"{s['others_cores_max']:.2f}",
        )
        for key in PHASES
        if (s := result["summary"].get(key))
    ]
    header = ("phase", "median s", "min s", "max s", "MB/s", "CPU s", "RSS +MiB (max)", "others")
    print_table(header, rows)
    print()
    for direction, r in result["ratios"].items():
        pairs = ", ".join(f"{x:.2f}" for x in r["per_pair"])
        verdict = "met" if r["median_of_pairs"] <= TARGET_RATIO else "NOT met"
        print(
            f"vault/raw {direction:<8} median of pairs {r['median_of_pairs']:.2f} "
            f"(pairs: {pairs}; ratio of medians {r['ratio_of_medians']:.2f})"
            f"  target <= {TARGET_RATIO}: {verdict}"
        )
    for key in ("vault_upload", "vault_download"):
        g = result["summary"][key]["rss_growth_mib_max"]
        verdict = "met" if g <= TARGET_RSS_MIB else "NOT met"
        print(
            f"{key.replace('_', ' '):<16} peak RSS growth {g:.1f} MiB"
            f"  target <= {TARGET_RSS_MIB:g} MiB: {verdict}"
        )


class Sink:
    """Where a timed download puts its bytes: nowhere, or a file fsynced before the clock
    stops (then deleted, untimed)."""

    def __init__(self, folder: Path, mode: str) -> None:
        self._path = folder / "download.out"
        self._mode = mode
        self._file: Any = None

    def __enter__(self) -> Sink:
        if self._mode == "file":
            self._file = open(self._path, "wb")  # closed in __exit__
        return self

    def write(self, chunk: bytes) -> None:
        if self._file is not None:
            self._file.write(chunk)

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (1024)")
    parser.add_argument("--dir", help="parent folder for the temp data dir (default: system temp)")
    parser.add_argument("--repeat", type=int, default=3, help="raw/vault pairs to run (3)")
    parser.add_argument(
        "--raw-object",
        choices=("raw", "sealed"),
        default="raw",
        help="raw download reads: the raw copy (default), or the vault's sealed object itself "
        "(same bytes on disk, same cache state as the vault download)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before each upload and, with a cold cache, after dropping a stored "
        "object's pages before its download, for raw and vault alike (on a VM that hands freed "
        "memory back to the host, new pages cost more once it has; 0 = no wait)",
    )
    parser.add_argument(
        "--cache",
        choices=("cold", "warm"),
        default="cold",
        help="cold: drop stored objects from the page cache before downloading "
        "(default); warm: read them from the page cache",
    )
    parser.add_argument(
        "--raw-chunk",
        type=int,
        default=0,
        metavar="BYTES",
        help="raw upload: hand store.put a source whose read() returns at most BYTES (so the "
        "store writes chunks of that size); 0 = the plain file object, i.e. 1 MiB writes (0)",
    )
    parser.add_argument(
        "--download-to",
        choices=("nowhere", "file"),
        default="nowhere",
        help="nowhere: both downloads discard what they read (default); file: both write it "
        "to a file in the data dir and fsync it, as a user's download ends",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp data dir")
    parser.add_argument(
        "--vault-only", action="store_true", help="skip the raw baseline (for profiling)"
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile the first repeat's vault phases into DIR/*.pstats",
    )
    add_common_arguments(parser, out="transfer.json", wait_idle=60.0)
    args = parse_arguments(parser, argv, QUICK)
    if args.size_mib < 1 or args.repeat < 1:
        parser.error("--size-mib and --repeat must be >= 1")
    code = source_fingerprint(*MEASURED)
    with workdir("blo-bench-", args.dir, keep=args.keep) as work:
        result = run(args, work)
    result["code"] = code
    result["command"] = command_line("bench.bench_transfer", argv)
    if not args.vault_only:
        print_report(result)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
