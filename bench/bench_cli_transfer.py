"""End-to-end transfer benchmark: ``blovault package upload`` / ``download`` through a real
``blovault serve`` on loopback, against a raw fsynced ``dd`` copy of the same bytes.

Run::

    python -m bench.bench_cli_transfer --size-mib 1024 [--repeat 3] [--dir PATH]
    python -m bench.bench_cli_transfer --quick    # 16 MiB, 1 repeat, no waiting (CI)

What a user waits for is the command, from its start to its exit, so each CLI phase is a
subprocess timed from ``Popen`` to its exit (``os.wait4``): interpreter start, login session
load, reading and hashing the file, HTTP, the server's parsing, sealing and fsync (upload), or
the server's opening and the client's write, hash and fsync before the rename (download).

Against it, on the same disk: ``dd if=SRC of=DST bs=4M conv=fsync`` of the same bytes (the
source is kept in the page cache for all phases; the stored object a download reads was just
written, so it is in the page cache too). Per repeat: upload vs raw, then download vs raw, each
pair in alternating order (raw first in odd repeats), ``--settle`` seconds and ``os.sync()``
before each phase, after waiting (``--wait-idle``) for a quiet machine.

Memory: the server's peak RSS growth per phase from its VmHWM, reset through
``/proc/PID/clear_refs`` before the phase (growth = VmHWM after - VmRSS before); the client's
peak RSS (GNU time's ``%M``, that process alone) minus that of a ``blovault package list`` run
the same way (the CLI's own start-up footprint). CPU seconds per phase: the command's
(``wait4``) and the server's (``/proc/PID/stat``); on a shared machine they say more than wall
times.

The vault is a throw-away one (SQLite + local store in a temp folder under ``--dir``), with
one officer; the CLI's session lives in its own config folder there. The server is stopped at
the end. Results: a table on stdout and JSON in ``bench/out/cli_transfer.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.bench_transfer import make_source, warm
from bench.harness import (
    BLOVAULT,
    PASSWORD,
    CpuMeter,
    add_common_arguments,
    command_line,
    free_port,
    machine_info,
    machine_line,
    open_world,
    parse_arguments,
    print_table,
    wait_idle,
    workdir,
    write_json,
)

MiB = 1024 * 1024
TIME = "/usr/bin/time"  # GNU time, for the command's own peak RSS
TARGET_RATIO = 1.5
TARGET_RSS_MIB = 64.0
QUICK = {"size_mib": 16, "repeat": 1, "wait_idle": 0.0, "settle": 0.0}


def _status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name):
            return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/{pid}/status")


def _reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``blovault serve`` on a free loopback port, answering; (process, base URL)."""
    port = free_port()
    proc = subprocess.Popen(
        [BLOVAULT, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit("the server did not answer /healthz")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_run(command: list[str], env: dict[str, str]) -> tuple[float, Any, int, bytes]:
    """Run ``command``; (wall seconds from start to exit, rusage, its peak RSS KiB, stdout).

    The peak RSS comes from GNU time wrapped around the command: ``wait4``'s ``ru_maxrss`` of a
    child forked from this (large) process counts the parent's pages copied at the fork.
    """
    folder = Path(env["VAULT_CONFIG_DIR"])
    out_path, rss_path = folder / "stdout", folder / "maxrss"
    with open(out_path, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [TIME, "-f", "%M", "-o", str(rss_path), *command],
            env=env,
            stdout=out,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read() if proc.stderr else b""
    if proc.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    return wall, usage, int(rss_path.read_text().split()[-1]), out_path.read_bytes()


class Bench:
    """One server, one logged-in CLI, a source file; each phase timed and recorded."""

    def __init__(
        self, args: argparse.Namespace, tmp: Path, server: tuple[subprocess.Popen[bytes], str]
    ) -> None:
        self.args = args
        self.tmp = tmp
        self.server_pid = server[0].pid
        self.src = tmp / "source.bin"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        self.env["VAULT_CONFIG_DIR"] = str(tmp / "cli")
        self.rows: list[dict[str, Any]] = []
        self.package_id = ""
        self.client_base_kib = 0

    def login(self, base: str) -> None:
        subprocess.run(
            [BLOVAULT, "login", "--server", base, "--username", "uz.officer", "--password-stdin"],
            input=PASSWORD.encode() + b"\n",
            env=self.env,
            check=True,
            capture_output=True,
        )
        _, _, self.client_base_kib, _ = timed_run([BLOVAULT, "package", "list", "--json"], self.env)

    def phase(self, name: str, command: list[str], repeat: int) -> bytes:
        """Run one timed phase after settling; record wall time, CPU of others, RSS growth."""
        os.sync()
        time.sleep(self.args.settle)
        idle = wait_idle(self.args.wait_idle)
        warm(self.src)
        reset = _reset_hwm(self.server_pid)
        server_before = _status_kib(self.server_pid, "VmRSS:")
        server_cpu = _cpu_s(self.server_pid)
        with CpuMeter() as meter:
            wall, usage, client_kib, stdout = timed_run(command, self.env)
        server_cpu = _cpu_s(self.server_pid) - server_cpu
        server_peak = _status_kib(self.server_pid, "VmHWM:") if reset else 0
        row: dict[str, Any] = {
            "phase": name,
            "repeat": repeat,
            "wall_s": round(wall, 3),
            "MB_s": round(self.args.size_mib * MiB / wall / 1e6, 1),
            # Includes the server and the CLI (other processes than this driver).
            "busy_cores": round(meter.others_cores, 2),
            # CPU seconds: on a shared machine these say more than the wall time.
            "command_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "server_cpu_s": round(server_cpu, 2),
            "others_before": idle,
            "server_rss_growth_mib": round((server_peak - server_before) / 1024, 1)
            if reset
            else None,
        }
        if command[0] == BLOVAULT:
            row["client_peak_mib"] = round(client_kib / 1024, 1)
            row["client_rss_growth_mib"] = round((client_kib - self.client_base_kib) / 1024, 1)
        self.rows.append(row)
        print(
            f"  [{name} #{repeat}: {wall:.2f} s, busy {meter.others_cores:.2f} cores, CPU "
            f"{row['command_cpu_s']} s + server {row['server_cpu_s']} s, "
            f"server +{row['server_rss_growth_mib']} MiB, client +"
            f"{row.get('client_rss_growth_mib')} MiB]",
            flush=True,
        )
        return stdout

    def raw(self, repeat: int, label: str) -> None:
        dst = self.tmp / "raw.bin"
        self.phase(
            label,
            ["dd", f"if={self.src}", f"of={dst}", "bs=4M", "conv=fsync", "status=none"],
            repeat,
        )
        dst.unlink()

    def upload(self, repeat: int) -> None:
        out = self.phase(
            "cli upload",
            [BLOVAULT, "package", "upload", str(self.src), "--title", "bench", "--json"],
            repeat,
        )
        self.package_id = json.loads(out)["id"]

    def download(self, repeat: int) -> None:
        dest = self.tmp / "down"
        command = [BLOVAULT, "package", "download", self.package_id, "-o", str(dest), "--json"]
        self.phase("cli download", command, repeat)
        (dest / self.src.name).unlink()

    def run(self) -> None:
        """Each repeat: upload vs raw, then download vs raw, raw first in odd repeats."""
        for repeat in range(1, self.args.repeat + 1):
            raw_first = repeat % 2 == 1
            for direction, raw_label in (("upload", "raw (upload)"), ("download", "raw (down)")):
                for step in ("raw", direction) if raw_first else (direction, "raw"):
                    if step == "raw":
                        self.raw(repeat, raw_label)
                    elif step == "upload":
                        self.upload(repeat)
                    else:
                        self.download(repeat)


def _median2(values: Iterable[float]) -> float:
    return round(statistics.median(values), 2)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median wall per phase, the ratio per direction (and per repeat), worst RSS growth."""

    def walls(name: str) -> list[float]:
        return [r["wall_s"] for r in rows if r["phase"] == name]

    result: dict[str, Any] = {}
    for direction, raw_name in (("upload", "raw (upload)"), ("download", "raw (down)")):
        cli, raw = walls(f"cli {direction}"), walls(raw_name)
        result[direction] = {
            "cli_median_s": round(statistics.median(cli), 3),
            "raw_median_s": round(statistics.median(raw), 3),
            "ratio": round(statistics.median(cli) / statistics.median(raw), 2),
            "ratios_per_repeat": [round(c / r, 2) for c, r in zip(cli, raw, strict=True)],
            "cli_cpu_s_median": _median2(
                r["command_cpu_s"] + r["server_cpu_s"]
                for r in rows
                if r["phase"] == f"cli {direction}"
            ),
            "raw_cpu_s_median": _median2(
                r["command_cpu_s"] for r in rows if r["phase"] == raw_name
            ),
            "server_rss_growth_mib_max": max(
                (r["server_rss_growth_mib"] or 0.0)
                for r in rows
                if r["phase"] == f"cli {direction}"
            ),
            "client_rss_growth_mib_max": max(
                r["client_rss_growth_mib"] for r in rows if r["phase"] == f"cli {direction}"
            ),
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before each phase")
    parser.add_argument("--dir", default=None, help="folder for the temp files (same disk)")
    add_common_arguments(parser, out="cli_transfer.json", wait_idle=30.0)
    args = parse_arguments(parser, argv, QUICK)
    with workdir("vault-cli-transfer-", args.dir) as tmp:
        vault, _ = open_world(tmp / "data")
        vault.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        env |= {
            "VAULT_DATA_DIR": str(tmp / "data"),
            "VAULT_ARGON2_TIME_COST": "1",
            "VAULT_ARGON2_MEMORY_KIB": "1024",
            "VAULT_ARGON2_PARALLELISM": "1",
        }
        make_source(tmp / "source.bin", args.size_mib * MiB)
        server = start_server(env)
        try:
            bench = Bench(args, tmp, server)
            bench.login(server[1])
            bench.run()
        finally:
            os.killpg(server[0].pid, signal.SIGTERM)
            server[0].wait(timeout=30)
        machine = machine_info(tmp)
    summary = summarise(bench.rows)
    print(f"\n{machine_line(machine)}; {args.size_mib} MiB, {args.repeat} repeat(s)")
    print_table(
        (
            "direction",
            "cli s",
            "raw dd s",
            "ratio",
            "per repeat",
            "CPU s cli+server",
            "CPU s dd",
            "server +MiB",
            "client +MiB",
        ),
        [
            (
                d,
                s["cli_median_s"],
                s["raw_median_s"],
                s["ratio"],
                " ".join(map(str, s["ratios_per_repeat"])),
                s["cli_cpu_s_median"],
                s["raw_cpu_s_median"],
                s["server_rss_growth_mib_max"],
                s["client_rss_growth_mib_max"],
            )
            for d, s in summary.items()
        ],
    )
    print(f"targets: ratio <= {TARGET_RATIO} each, RSS growth <= {TARGET_RSS_MIB:g} MiB")
    result = {
        "command": command_line("bench.bench_cli_transfer", argv),
        "machine": machine,
        "size_mib": args.size_mib,
        "summary": summary,
        "phases": bench.rows,
    }
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
