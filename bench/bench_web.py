"""The web interface's package list against the JSON API's list, for the same user, at scale.

Run::

    python -m bench.bench_web [--packages 100000] [--requests 400] [--page 25]

Builds a throw-away vault (SQLite under a temp folder), seeds two countries, their agencies and
officers through the service, then bulk-inserts ``--packages`` packages of UZ-CUSTOMS (real
wrapped keys and sealed metadata, made with the calls ``Vault.upload`` uses), half of them
released to KZ. The app is served by uvicorn on 127.0.0.1 in this process; the KZ officer
signs in twice, once through the sign-in form (a cookie) and once through ``POST /auth/login``
(a bearer token). Then, alternating so both see the same machine, it times the first page of
``GET /ui/packages`` (HTML) and ``GET /packages?limit=N`` (JSON), ``--page`` items each, with
``time.perf_counter`` around each whole request over one keep-alive connection, and prints p50
and p99 of each and their ratio (target: the page within 2x of the JSON route).

Self-contained on purpose (no shared harness yet); results also go to bench/out/web.json.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import uvicorn
from sqlalchemy import insert
from sqlmodel import SQLModel

from bench import harness
from blo_vault.api.app import create_app
from vault import crypto
from vault.models import Classification, Handling, ReleaseStatus, Role, utcnow
from vault.service import Vault, local_operator
from vault.service.sealed import package_identity

PASSWORD = harness.PASSWORD  # throw-away vault
TARGET_RATIO = 2.0
QUICK = {"packages": 2_000, "requests": 40}


def populate(vault: Vault, n: int) -> None:
    """Seed UZ and KZ, then ``n`` packages of UZ-CUSTOMS, every second one released to KZ."""
    op = local_operator()
    vault.add_country(op, "UZ", "Uzbekistan")
    vault.add_country(op, "KZ", "Kazakhstan")
    vault.add_agency(op, "UZ-CUSTOMS", "UZ", "State Customs Committee")
    vault.add_agency(op, "KZ-BORDER", "KZ", "Border Guard Service")
    for username, agency in (("uz.officer", "UZ-CUSTOMS"), ("kz.officer", "KZ-BORDER")):
        vault.add_user(
            op,
            username=username,
            agency=agency,
            role=Role.OFFICER,
            password=PASSWORD,
            clearance=Classification.SECRET,
        )
    creator_id = vault.authenticate(vault.login("uz.officer", PASSWORD).access_token).user_id
    now = utcnow()
    packages: list[dict[str, Any]] = []
    releases: list[dict[str, Any]] = []
    for i in range(n):
        pid = secrets.token_hex(16)
        identity = package_identity(pid)
        key = crypto.new_data_key()
        wrapped = vault.keys.keyring.wrap(key, context=identity)
        meta = {
            "title": f"Oybek seizure report #{i}",
            "description": "synthetic package for the web benchmark",
            "handling_note": "",
            "fields": {},
            "digest": "0" * 64,
        }
        packages.append(
            {
                "id": pid,
                "agency_code": "UZ-CUSTOMS",
                "creator_id": creator_id,
                "created_at": now - timedelta(seconds=i * 60),
                "size": 1000 + i,
                "file_count": 1,
                "classification": Classification.RESTRICTED,
                "handling": Handling.H1,
                "kek_id": wrapped.kek_id,
                "wrapped_key": wrapped.blob,
                "sealed_meta": crypto.seal_bytes(key, json.dumps(meta).encode(), context=identity),
            }
        )
        if i % 2 == 0:
            releases.append(
                {
                    "id": secrets.token_hex(16),
                    "package_id": pid,
                    "country_code": "KZ",
                    "agency_code": None,
                    "status": ReleaseStatus.ACTIVE,
                    "requested_by": creator_id,
                    "created_at": now,
                    "decided_by": creator_id,
                    "decided_at": now,
                }
            )
    with vault.engine.begin() as conn:
        for start in range(0, n, 5000):
            conn.execute(
                insert(SQLModel.metadata.tables["package"]), packages[start : start + 5000]
            )
        for start in range(0, len(releases), 5000):
            conn.execute(
                insert(SQLModel.metadata.tables["release"]), releases[start : start + 5000]
            )


def measure(base: str, requests: int, page: int) -> dict[str, Any]:
    """Alternate the HTML page and the JSON list for kz.officer; per-request times in ms."""
    with (
        httpx.Client(base_url=base, timeout=60, follow_redirects=True) as web,
        httpx.Client(base_url=base, timeout=60) as api,
    ):
        form = web.get("/ui/signin").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf is not None
        signed = web.post(
            "/ui/signin",
            data={"csrf": csrf.group(1), "username": "kz.officer", "password": PASSWORD},
        )
        assert signed.status_code == 200, signed.status_code
        token = api.post("/auth/login", json={"username": "kz.officer", "password": PASSWORD})
        api.headers["Authorization"] = "Bearer " + token.json()["access_token"]
        times: dict[str, list[float]] = {"page": [], "json": []}
        sizes: dict[str, int] = {}
        for i in range(requests + 20):  # the first 20 of each warm up
            for kind in ("json", "page") if i % 2 else ("page", "json"):
                t0 = time.perf_counter()
                if kind == "page":
                    answer = web.get("/ui/packages")
                else:
                    answer = api.get("/packages", params={"limit": page})
                elapsed = (time.perf_counter() - t0) * 1000
                assert answer.status_code == 200, (kind, answer.status_code)
                sizes[kind] = len(answer.content)
                if i >= 20:
                    times[kind].append(elapsed)
        assert web.get("/ui/packages").text.count('class="title"') == page
    out: dict[str, Any] = {"bytes": sizes}
    for kind, values in times.items():
        out[kind] = harness.p50_p99_ms(values)
    out["ratio_p50"] = out["page"]["p50_ms"] / out["json"]["p50_ms"]
    out["ratio_p99"] = out["page"]["p99_ms"] / out["json"]["p99_ms"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--packages", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--page", type=int, default=25, help="items a page (the web's is 25)")
    harness.add_common_arguments(parser, out="web.json")
    args = harness.parse_arguments(parser, argv, QUICK)
    with harness.workdir("bench-web-") as folder:
        vault = harness.open_vault(folder / "vault")
        try:
            t0 = time.perf_counter()
            populate(vault, args.packages)
            seeded = time.perf_counter() - t0
            server = uvicorn.Server(
                uvicorn.Config(
                    create_app(vault=vault), host="127.0.0.1", port=0, log_level="warning"
                )
            )
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            while not server.started:
                time.sleep(0.02)
            port = server.servers[0].sockets[0].getsockname()[1]
            try:
                result = measure(f"http://127.0.0.1:{port}", args.requests, args.page)
            finally:
                server.should_exit = True
                thread.join(timeout=10)
        finally:
            vault.close()
    result |= {"packages": args.packages, "page_size": args.page, "seed_seconds": round(seeded, 1)}
    result["command"] = harness.command_line("bench.bench_web", argv)
    harness.write_json(args.out, result)
    print(f"packages {args.packages:,} (half released to KZ), page of {args.page}, kz.officer")
    print(f"{'route':<22}{'p50 ms':>10}{'p99 ms':>10}{'bytes':>10}")
    for kind, label in (("json", "GET /packages (JSON)"), ("page", "GET /ui/packages")):
        row = result[kind]
        print(f"{label:<22}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}{result['bytes'][kind]:>10}")
    verdict = "ok" if max(result["ratio_p50"], result["ratio_p99"]) <= TARGET_RATIO else "MISSED"
    print(
        f"page/JSON: p50 {result['ratio_p50']:.2f}x, p99 {result['ratio_p99']:.2f}x "
        f"(target <= {TARGET_RATIO}x: {verdict})"
    )


if __name__ == "__main__":
    main()
