"""Upload and download of one large file through the real HTTP server and the CLI's client,
with originator signatures on (signed upload, checked download) and off, in one run (issue 13).

Each repeat runs the two variants back to back, in alternating order: ``off`` uploads unsigned
and downloads without a signature check; ``on`` hashes each file as it is sent (on a second
thread), signs the manifest, sends it after the files, has the server verify it before the
commit, and on download checks the key's inclusion proof, the signature and every file against
the manifest before keeping anything. The ratio on/off is the cost of signing; the target is
at most 1.05. The server runs in this process (uvicorn on 127.0.0.1, a thread), the same for
both variants; downloads are written to a file and fsynced, as ``package download`` does.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from bench.harness import (
    PASSWORD,
    add_common_arguments,
    command_line,
    free_port,
    machine_info,
    machine_line,
    open_world,
    parse_arguments,
    print_table,
    workdir,
    write_json,
)
from blo_vault.api.app import create_app
from blo_vault.cli import verify
from blo_vault.cli.client import ApiClient
from blo_vault.cli.keys import UploadSigner
from vault import crypto, manifest
from vault.service import Vault, local_operator

MiB = 1024 * 1024
QUICK = {"size_mib": 8, "repeat": 1}


@contextmanager
def serving(vault: Vault, port: int) -> Iterator[str]:
    """The vault's app served on 127.0.0.1:``port`` in a thread, stopped on exit."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(vault=vault), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def make_source(path: Path, size: int) -> None:
    """``size`` random bytes (incompressible), written in 1 MiB blocks."""
    with path.open("wb") as out:
        for _ in range(size // MiB):
            out.write(crypto.random_bytes(MiB))


def one_variant(
    client: ApiClient, vault: Vault, source: Path, out_dir: Path, signed: bool, ctx: dict[str, Any]
) -> tuple[float, float]:
    """Upload then download ``source`` once; (upload seconds, download seconds)."""
    signer = (
        UploadSigner(key=ctx["key"], key_id=ctx["key_id"], agency="UZ-CUSTOMS") if signed else None
    )
    started = time.perf_counter()
    result = client.upload([source], title="bench", signer=signer)
    upload_s = time.perf_counter() - started
    package_id = result["package"]["id"]
    started = time.perf_counter()
    detail = client.show(package_id)
    check = None
    if signed:
        proof = client.show_key(detail["signature"]["key_id"])["proof"]
        verify.check_key_proof(detail["signature"], proof, ctx["vkey"])

        def check() -> None:
            verify.check_package(detail, proof, ctx["vkey"])

    written = client.download(package_id, out_dir, force=True, detail=detail, before_keeping=check)
    download_s = time.perf_counter() - started
    for path in written:
        path.unlink()
    vault.purge(local_operator(), package_id)
    return upload_s, download_s


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """All repeats; the raw timings and their medians."""
    vault, _ = open_world(work / "data")
    source = work / "source.bin"
    make_source(source, args.size_mib * MiB)
    out_dir = work / "downloads"
    out_dir.mkdir()
    key = crypto.new_ed25519_private_key()
    public = crypto.ed25519_public_bytes(key.public_key())
    times: dict[str, dict[str, list[float]]] = {
        v: {"upload": [], "download": []} for v in ("off", "on")
    }
    try:
        with serving(vault, free_port()) as url, ApiClient(url, timeout=600) as anonymous:
            token = anonymous.login("uz.officer", PASSWORD)["access_token"]
            with ApiClient(url, token, timeout=600) as client:
                registered = client.register_key(base64.b64encode(public).decode())
                ctx = {"key": key, "key_id": registered["id"], "vkey": vault.ledger_vkey}
                assert registered["id"] == manifest.key_id(public)
                for i in range(args.repeat):
                    order = ("off", "on") if i % 2 == 0 else ("on", "off")
                    for variant in order:
                        up, down = one_variant(client, vault, source, out_dir, variant == "on", ctx)
                        times[variant]["upload"].append(up)
                        times[variant]["download"].append(down)
    finally:
        vault.close()
    medians = {v: {k: statistics.median(t) for k, t in d.items()} for v, d in times.items()}
    return {
        "size_mib": args.size_mib,
        "repeat": args.repeat,
        "seconds": times,
        "median_seconds": medians,
        "ratio_on_off": {k: medians["on"][k] / medians["off"][k] for k in ("upload", "download")},
        "machine": machine_info(work),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (1024)")
    parser.add_argument("--repeat", type=int, default=3, help="on/off pairs to run (3)")
    parser.add_argument("--dir", help="parent folder for the temp data dir (default: system temp)")
    add_common_arguments(parser, out="signing.json")
    args = parse_arguments(parser, argv, QUICK)
    if args.size_mib < 1 or args.repeat < 1:
        parser.error("--size-mib and --repeat must be >= 1")
    with workdir("blo-bench-signing-", args.dir) as work:
        result = run(args, work)
    result["command"] = command_line("bench.bench_signing", argv)
    print(machine_line(result["machine"]))
    rows = [
        (
            phase,
            f"{result['median_seconds']['off'][phase]:.2f}",
            f"{result['median_seconds']['on'][phase]:.2f}",
            f"{result['ratio_on_off'][phase]:.3f}",
        )
        for phase in ("upload", "download")
    ]
    print_table(("phase", "off (s)", "on (s)", "on/off"), rows)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
