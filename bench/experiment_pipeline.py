"""Experiment: what would bring the service layer's transfer cost near a raw copy?

Standalone: it does not change vault/. It imports vault.crypto (the current SealingReader and
open_stream, as the reference) and re-implements *format-compatible* alternatives here; every
alternative's output is checked to open with the current ``vault.crypto.open_stream`` (and its
plaintext digest checked) before it is timed.

Run::

    python -m bench.experiment_pipeline --size-mib 1024 --repeat 3 [--dir PATH]

Upload variants (each through a replica of LocalDiskStore.put that times the write loop and the
fsync separately; the object is then dropped from the page cache like in bench_transfer):

    raw               plaintext copy (the baseline of bench_transfer)
    current           vault.crypto.SealingReader, 64 KiB segments
    current-1m        the same class with segment_size=1 MiB (header records it: format-compatible)
    lean              no bytearray staging: read 1 MiB plaintext, seal its 16 segments, return
                      b"".join(segments) from read(); SHA-256 inline
    lean-parts        like lean but read() returns one sealed segment at a time (no join)
    lean-hashthread   lean, with SHA-256 computed in a worker thread (hashlib releases the GIL);
                      bounded queue of 8 x 1 MiB blocks
    lean-hashthread-1m  lean-hashthread with 1 MiB segments
    lean-nohash       lean without any SHA-256 (lower bound: what hashing costs)
    raw-64k           raw, but the source returns 64 KiB per read (so put writes 64 KiB, like
                      the sealed path does)
    lean-parts-hashthread  lean-parts + SHA-256 of each 1 MiB plaintext block in a worker thread
    lean-parts-nohash lean-parts without SHA-256 (lower bound)

Download variants (object sealed by the current code; cold cache like bench_transfer):

    raw               read 1 MiB chunks
    current           vault.crypto.open_stream + SHA-256 inline (Vault.download before the
                      concurrent BackgroundDigest change)
    service-now       open_stream + vault.crypto.BackgroundDigest (Vault.download after it)
    hashthread        open_stream + SHA-256 in a worker thread (batches of 16 segments)
    bigread           read 16 sealed segments (~1 MiB) per read(), decrypt via memoryview
                      slices, SHA-256 inline
    bigread-hashthread  bigread + SHA-256 in a worker thread
    prefetch-hashthread  a reader thread reads sealed blocks ahead, main thread decrypts,
                      a hash thread hashes (3 stages on 2 cores)
    nodigest          open_stream only, no whole-file SHA-256 re-check (lower bound)
    current-1m / hashthread-1m  the same on an object sealed with 1 MiB segments

Results: table on stdout, JSON in bench/out/experiment_pipeline.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.bench_transfer import (
    CpuMeter,
    RssMonitor,
    _settle,
    drop_cache,
    machine_info,
    make_source,
    wait_idle,
    warm,
)
from vault import crypto

MiB = 1024 * 1024
SEG = crypto.SEGMENT_SIZE
TAG = crypto.TAG_SIZE
OUT = Path(__file__).resolve().parent / "out" / "experiment_pipeline.json"
IDENTITY = b"blo-vault/file/v1\x00" + b"p" * 32 + b"\x00" + b"f" * 32


# --- helpers ---------------------------------------------------------------------------------


def read_full(source: Any, size: int) -> bytes:
    first: bytes = source.read(size)
    if len(first) == size or not first:
        return first
    parts, got = [first], len(first)
    while got < size:
        more = source.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class HashThread:
    """SHA-256 in a worker thread, fed through a bounded queue (so memory stays bounded)."""

    def __init__(self, maxsize: int = 8) -> None:
        self._h = hashlib.sha256()
        self._q: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if isinstance(item, list):
                for piece in item:
                    self._h.update(piece)
            else:
                self._h.update(item)

    def update(self, data: Any) -> None:
        self._q.put(data)

    def hexdigest(self) -> str:
        self._q.put(None)
        self._t.join()
        return self._h.hexdigest()


class NoHash:
    def update(self, data: Any) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


# --- upload variants -------------------------------------------------------------------------


class LeanSealer:
    """Format-compatible STREAM sealer without bytearray staging.

    Reads plaintext in blocks of ``block`` bytes (a multiple of the segment size), one block of
    lookahead to know which segment is last, seals each segment of the block and returns the
    block's sealed bytes from read() (joined, or one segment per call with ``parts=True``).
    """

    def __init__(
        self,
        source: Any,
        key: bytes,
        *,
        identity: bytes,
        segment_size: int = SEG,
        hasher: Any = None,
        block: int = MiB,
        parts: bool = False,
    ) -> None:
        self._source = source
        self._aead = AESGCM(key)
        self._seg = segment_size
        self._block = max(segment_size, block // segment_size * segment_size)
        prefix = os.urandom(7)
        self._prefix = prefix
        header = crypto._HEADER.pack(b"BLOV", 1, segment_size, prefix)
        self._aad = header + identity
        self._hash = hasher if hasher is not None else hashlib.sha256()
        self._parts = parts
        self.plaintext_size = 0
        self._gen = self._generate(header)
        self._queue: list[bytes] = []

    def _next_block(self) -> bytes:
        data = read_full(self._source, self._block)
        if data:
            self.plaintext_size += len(data)
            self._hash.update(data)
        return data

    def _generate(self, header: bytes) -> Iterator[list[bytes]]:
        yield [header]
        seg, aead, aad, prefix = self._seg, self._aead, self._aad, self._prefix
        counter = 0
        cur = self._next_block()
        while True:
            nxt = self._next_block() if len(cur) == self._block else b""
            view = memoryview(cur)
            nseg = max(1, -(-len(cur) // seg))
            out = []
            for j in range(nseg):
                last = not nxt and j == nseg - 1
                nonce = prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
                out.append(aead.encrypt(nonce, view[j * seg : (j + 1) * seg], aad))
                counter += 1
            yield out
            if not nxt:
                return
            cur = nxt

    def read(self, size: int = -1, /) -> bytes:
        if self._parts:
            if not self._queue:
                self._queue = list(reversed(next(self._gen, [])))
            return self._queue.pop() if self._queue else b""
        return b"".join(next(self._gen, []))

    def sha256_hex(self) -> str:
        return self._hash.hexdigest()


def put_timed(tmp_dir: Path, final: Path, source: Any) -> tuple[int, float, float]:
    """LocalDiskStore.put, step for step, timing the write loop and the fsyncs apart."""
    size = 0
    t0 = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="put-")
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(MiB):
            out.write(chunk)
            size += len(chunk)
        out.flush()
        t1 = time.perf_counter()
        os.fsync(out.fileno())
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.replace(tmp_name, final)
    dfd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    t2 = time.perf_counter()
    return size, t1 - t0, t2 - t1


UploadMaker = Callable[[Any, bytes], Any]


class Chunked:
    """A file whose read(n) returns at most ``limit`` bytes."""

    def __init__(self, f: Any, limit: int) -> None:
        self._f, self._limit = f, limit
        self.plaintext_size = 0

    def read(self, size: int = -1, /) -> bytes:
        data: bytes = self._f.read(self._limit if size < 0 else min(size, self._limit))
        return data


UPLOADS: dict[str, UploadMaker | None] = {
    "raw": None,
    "raw-64k": lambda src, key: Chunked(src, SEG),
    "current": lambda src, key: crypto.SealingReader(src, key, identity=IDENTITY),
    "current-1m": lambda src, key: crypto.SealingReader(
        src, key, identity=IDENTITY, segment_size=MiB
    ),
    "lean": lambda src, key: LeanSealer(src, key, identity=IDENTITY),
    "lean-parts": lambda src, key: LeanSealer(src, key, identity=IDENTITY, parts=True),
    "lean-hashthread": lambda src, key: LeanSealer(
        src, key, identity=IDENTITY, hasher=HashThread()
    ),
    "lean-hashthread-1m": lambda src, key: LeanSealer(
        src, key, identity=IDENTITY, segment_size=MiB, hasher=HashThread()
    ),
    "lean-nohash": lambda src, key: LeanSealer(src, key, identity=IDENTITY, hasher=NoHash()),
    "lean-parts-hashthread": lambda src, key: LeanSealer(
        src, key, identity=IDENTITY, parts=True, hasher=HashThread()
    ),
    "lean-parts-nohash": lambda src, key: LeanSealer(
        src, key, identity=IDENTITY, parts=True, hasher=NoHash()
    ),
}


# --- download variants -----------------------------------------------------------------------


def dl_raw(path: Path, key: bytes) -> tuple[int, str]:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            n += len(chunk)
    return n, ""


def dl_current(path: Path, key: bytes) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for plain in crypto.open_stream(f, key, identity=IDENTITY):
            h.update(plain)
            n += len(plain)
    return n, h.hexdigest()


def dl_service_now(path: Path, key: bytes) -> tuple[int, str]:
    """What Vault.download does as of this run: open_stream + crypto.BackgroundDigest if the
    module has it (added concurrently), else inline SHA-256."""
    factory = getattr(crypto, "BackgroundDigest", None)
    if factory is None:
        return dl_current(path, key)
    h, n = factory(), 0
    try:
        with open(path, "rb") as f:
            for plain in crypto.open_stream(f, key, identity=IDENTITY):
                h.update(plain)
                n += len(plain)
        return n, h.hexdigest()
    finally:
        h.close()


def dl_nodigest(path: Path, key: bytes) -> tuple[int, str]:
    n = 0
    with open(path, "rb") as f:
        for plain in crypto.open_stream(f, key, identity=IDENTITY):
            n += len(plain)
    return n, ""


def dl_hashthread(path: Path, key: bytes) -> tuple[int, str]:
    h, n, batch = HashThread(), 0, []
    batch_bytes = 0
    with open(path, "rb") as f:
        for plain in crypto.open_stream(f, key, identity=IDENTITY):
            batch.append(plain)
            batch_bytes += len(plain)
            if batch_bytes >= MiB:
                h.update(batch)
                batch, batch_bytes = [], 0
            n += len(plain)
    if batch:
        h.update(batch)
    return n, h.hexdigest()


class InlineHash:
    """SHA-256 in the calling thread, taking single buffers or lists of them."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, data: Any) -> None:
        for piece in data if isinstance(data, list) else [data]:
            self._h.update(piece)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def dl_blocks(path: Path, key: bytes, *, prefetch: bool, hash_thread: bool) -> tuple[int, str]:
    """Read ~1 MiB of sealed segments per read() and decrypt them through memoryviews.

    Same checks as open_stream (counter, last flag, AAD). ``prefetch``: a reader thread reads
    the blocks ahead through a bounded queue; ``hash_thread``: SHA-256 in a worker thread.
    """
    h: Any = HashThread() if hash_thread else InlineHash()
    with open(path, "rb") as f:
        header = read_full(f, crypto.HEADER_SIZE)
        _magic, _version, seg, prefix = crypto._HEADER.unpack(header)
        sealed_seg = seg + TAG
        per_block = max(1, MiB // seg)
        full = sealed_seg * per_block
        t: threading.Thread | None = None
        if prefetch:
            blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)

            def reader() -> None:
                while data := read_full(f, full):
                    blocks.put(data)
                blocks.put(None)

            t = threading.Thread(target=reader, daemon=True)
            t.start()

            def next_block() -> bytes | None:
                return blocks.get()
        else:

            def next_block() -> bytes | None:
                return read_full(f, full) or None

        aead, aad = AESGCM(key), header + IDENTITY
        counter, n = 0, 0
        cur = next_block()
        while cur is not None:
            nxt = next_block() if len(cur) == full else None
            view = memoryview(cur)
            nseg = max(1, -(-len(cur) // sealed_seg))
            plains = []
            for j in range(nseg):
                last = nxt is None and j == nseg - 1
                nonce = prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
                piece = view[j * sealed_seg : (j + 1) * sealed_seg]
                plains.append(aead.decrypt(nonce, piece, aad))
                counter += 1
            h.update(plains)
            n += sum(len(p) for p in plains)
            cur = nxt
        if t is not None:
            t.join()
    return n, h.hexdigest()


def dl_bigread(path: Path, key: bytes) -> tuple[int, str]:
    return dl_blocks(path, key, prefetch=False, hash_thread=False)


def dl_bigread_hashthread(path: Path, key: bytes) -> tuple[int, str]:
    return dl_blocks(path, key, prefetch=False, hash_thread=True)


def dl_prefetch_hashthread(path: Path, key: bytes) -> tuple[int, str]:
    return dl_blocks(path, key, prefetch=True, hash_thread=True)


DOWNLOADS: dict[str, tuple[Callable[[Path, bytes], tuple[int, str]], str]] = {
    # name: (function, which object it reads)
    "raw": (dl_raw, "raw"),
    "current": (dl_current, "sealed"),
    "service-now": (dl_service_now, "sealed"),
    "hashthread": (dl_hashthread, "sealed"),
    "bigread": (dl_bigread, "sealed"),
    "bigread-hashthread": (dl_bigread_hashthread, "sealed"),
    "prefetch-hashthread": (dl_prefetch_hashthread, "sealed"),
    "nodigest": (dl_nodigest, "sealed"),
    "current-1m": (dl_current, "sealed-1m"),
    "hashthread-1m": (dl_hashthread, "sealed-1m"),
}


# --- driver ----------------------------------------------------------------------------------


def verify_sealed(path: Path, key: bytes, size: int, sha: str) -> None:
    n, digest = dl_current(path, key)
    if n != size or digest != sha:
        raise RuntimeError(f"{path.name}: does not open to the source with vault.crypto")


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MiB
    parent = Path(args.dir) if args.dir else None
    work = Path(tempfile.mkdtemp(prefix="blo-exp-", dir=parent))
    tmp_dir = work / ".tmp"
    tmp_dir.mkdir()
    results: dict[str, dict[str, list[dict[str, float]]]] = {"upload": {}, "download": {}}
    try:
        src = work / "source.bin"
        print(f"writing {args.size_mib} MiB source under {work} ...", flush=True)
        src_sha = make_source(src, size)
        warm(src)
        info = machine_info(work)
        up_names = [n for n in UPLOADS if not args.only or n == "raw" or n in args.only]
        if args.skip_upload:
            up_names = []
        dn_names = [n for n in DOWNLOADS if not args.only or n == "raw" or n in args.only]
        verified: set[str] = set()
        # -- uploads, rotating the order each round
        for r in range(args.repeat if up_names else 0):
            order = up_names[r % len(up_names) :] + up_names[: r % len(up_names)]
            for name in order:
                maker = UPLOADS[name]
                key = os.urandom(32)
                final = work / "objects" / f"up-{name}-{r}"
                os.sync()
                _settle()
                wait_idle(args.wait_idle)
                with RssMonitor() as mon, open(src, "rb") as f, CpuMeter() as cpu:
                    source: Any = f if maker is None else maker(f, key)
                    t0 = time.perf_counter()
                    stored, loop_s, fsync_s = put_timed(tmp_dir, final, source)
                    total = time.perf_counter() - t0
                if maker is not None and hasattr(source, "sha256_hex"):
                    digest = source.sha256_hex()
                    if (digest and digest != src_sha) or source.plaintext_size != size:
                        raise RuntimeError(f"{name}: wrong digest or size")
                    if name not in verified:
                        drop_cache(final)
                        verify_sealed(final, key, size, src_sha)
                        verified.add(name)
                results["upload"].setdefault(name, []).append(
                    {
                        "total_s": total,
                        "loop_s": loop_s,
                        "fsync_s": fsync_s,
                        "rss_growth_mib": mon.growth_mib,
                        "stored": stored,
                        "cpu_s": cpu.user_s + cpu.sys_s,
                        "others_cores": cpu.others_cores,
                    }
                )
                final.unlink()
                print(
                    f"  upload   {name:<20} {total:6.3f}s (loop {loop_s:.3f}, "
                    f"fsync {fsync_s:.3f}) cpu {cpu.user_s + cpu.sys_s:.2f}s "
                    f"others {cpu.others_cores:.2f}"
                    f" RSS +{mon.growth_mib:.1f} MiB",
                    flush=True,
                )
        # -- objects for the downloads (written once, fsynced, dropped from cache before reads)
        keys = {"raw": b"", "sealed": os.urandom(32), "sealed-1m": os.urandom(32)}
        paths = {k: work / "objects" / f"dl-{k}" for k in keys}
        with open(src, "rb") as f:
            put_timed(tmp_dir, paths["raw"], f)
        with open(src, "rb") as f:
            put_timed(
                tmp_dir, paths["sealed"], crypto.SealingReader(f, keys["sealed"], identity=IDENTITY)
            )
        with open(src, "rb") as f:
            put_timed(
                tmp_dir,
                paths["sealed-1m"],
                crypto.SealingReader(f, keys["sealed-1m"], identity=IDENTITY, segment_size=MiB),
            )
        for r in range(args.repeat):
            order = dn_names[r % len(dn_names) :] + dn_names[: r % len(dn_names)]
            for name in order:
                fn, which = DOWNLOADS[name]
                path = paths[which]
                if not args.warm:
                    drop_cache(path)
                os.sync()
                _settle()
                wait_idle(args.wait_idle)
                with RssMonitor() as mon, CpuMeter() as cpu:
                    t0 = time.perf_counter()
                    n, digest = fn(path, keys[which])
                    total = time.perf_counter() - t0
                if n != size or (digest and digest != src_sha):
                    raise RuntimeError(f"{name}: wrong size or digest")
                results["download"].setdefault(name, []).append(
                    {
                        "total_s": total,
                        "rss_growth_mib": mon.growth_mib,
                        "cpu_s": cpu.user_s + cpu.sys_s,
                        "others_cores": cpu.others_cores,
                    }
                )
                print(
                    f"  download {name:<20} {total:6.3f}s cpu {cpu.user_s + cpu.sys_s:.2f}s"
                    f" others {cpu.others_cores:.2f} RSS +{mon.growth_mib:.1f} MiB",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summarise(args, info, results)


def summarise(
    args: argparse.Namespace,
    info: dict[str, Any],
    results: dict[str, dict[str, list[dict[str, float]]]],
) -> dict[str, Any]:
    size = args.size_mib * MiB
    table: dict[str, dict[str, Any]] = {}
    for direction, variants in results.items():
        if not variants:
            continue
        raw = statistics.median(x["total_s"] for x in variants["raw"])
        table[direction] = {}
        for name, runs in variants.items():
            med = statistics.median(x["total_s"] for x in runs)
            row = {
                "median_s": round(med, 3),
                "runs_s": [round(x["total_s"], 3) for x in runs],
                "mb_per_s": round(size / med / 1e6),
                "vs_raw": round(med / raw, 3),
                "rss_growth_mib_max": round(max(x["rss_growth_mib"] for x in runs), 1),
                "cpu_s_median": round(statistics.median(x["cpu_s"] for x in runs), 3),
                "others_cores_max": round(max(x["others_cores"] for x in runs), 2),
            }
            if direction == "upload":
                row["loop_median_s"] = round(statistics.median(x["loop_s"] for x in runs), 3)
                row["fsync_median_s"] = round(statistics.median(x["fsync_s"] for x in runs), 3)
            table[direction][name] = row
    return {
        "experiment": "pipeline",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "size_mib": args.size_mib,
        "repeat": args.repeat,
        "cache": "warm" if args.warm else "cold",
        "wait_idle_s": args.wait_idle,
        "machine": info,
        "table": table,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['size_mib']} MiB, {result['repeat']} rounds, cache={result['cache']}")
    for direction, rows in result["table"].items():
        print(
            f"\n{direction:<20}{'median s':>9}{'MB/s':>7}{'x raw':>7}{'loop s':>8}"
            f"{'fsync s':>8}{'CPU s':>7}{'RSS+MiB':>9}{'others':>8}"
        )
        for name, row in rows.items():
            loop = f"{row['loop_median_s']:.3f}" if "loop_median_s" in row else "-"
            fs = f"{row['fsync_median_s']:.3f}" if "fsync_median_s" in row else "-"
            print(
                f"{name:<20}{row['median_s']:>9.3f}{row['mb_per_s']:>7}{row['vs_raw']:>7.2f}"
                f"{loop:>8}{fs:>8}{row['cpu_s_median']:>7.2f}{row['rss_growth_mib_max']:>9.1f}"
                f"{row['others_cores_max']:>8.2f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pipeline experiment (see module docstring)")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir")
    parser.add_argument("--warm", action="store_true", help="do not drop objects before reads")
    parser.add_argument("--skip-upload", action="store_true", help="download variants only")
    parser.add_argument("--only", nargs="*", help="variant names to run (raw always runs)")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=60.0,
        help="wait up to this long before each run for a quiet machine",
    )
    args = parser.parse_args(argv)
    result = run(args)
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
