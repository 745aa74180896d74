"""Listing at scale: the first page for a caller who may read 20 of 100,000 packages, and for
one who may read 50,000 of them, through ``Vault.list_packages`` (recorded in the ledger).

The world, bulk-inserted with SQLAlchemy Core (not through uploads; each package has a real
wrapped key and real sealed metadata, made with the calls ``Vault.upload`` makes):

- ``WIDE-HQ`` (country WI) originates 30,000 packages, and 20,000 packages of other countries
  are released to country WI (in force): its officer ``wide.officer`` may read 50,000;
- ``NARROW-HQ`` (country NA) originates 5 packages, 15 more are released to it or to NA (in
  force), and 30 releases to it are not in force (expired, not yet valid, revoked, pending):
  its officer ``narrow.officer`` may read 20;
- the rest come from ``OTHER-HQ`` and ``OTHER-2`` (country OT), spread over two years.

Each caller's listing is checked before timing (how many it returns with the largest page).
Timed: the first page (50) of each, and a filtered page (classification SECRET), median and
p99 of ``--calls`` calls each: the whole service call (``..._page``: authorise, probe, query,
open 50 titles, the ledger entry committed through group commit), and its database part
alone (``..._sql``: the probe and the query in one read transaction).

    python -m bench.bench_listing [--packages 100000] [--calls 200]
    python -m bench.bench_listing --quick    # 2,000 packages, 20 calls (CI)

Writes bench/out/listing.json. SQLite by default; ``--database URL`` for PostgreSQL (a fresh
schema, dropped afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, text

from bench import _internals as internals
from bench.bench_authz import package_row, table_of
from bench.harness import (
    PASSWORD,
    add_common_arguments,
    command_line,
    machine_info,
    machine_line,
    open_vault,
    parse_arguments,
    pg_schema,
    print_table,
    summary_ms,
    workdir,
    write_json,
)
from vault.listing import PackageFilter
from vault.models import Classification, Package, Release, ReleaseKind, ReleaseStatus, Role, utcnow
from vault.service import Principal, Vault, local_operator

QUICK = {"packages": 2000, "calls": 20}
NARROW_OWN, NARROW_RELEASED, NARROW_NOT_IN_FORCE = 5, 15, 30
AGENCIES = (("WIDE-HQ", "WI"), ("NARROW-HQ", "NA"), ("OTHER-HQ", "OT"), ("OTHER-2", "OT"))


def seed(vault: Vault) -> dict[str, Principal]:
    """Countries, agencies and one SECRET-cleared officer per agency, through the service."""
    op = local_operator()
    for code in ("WI", "NA", "OT"):
        vault.add_country(op, code, f"Country {code}")
    principals = {}
    for agency, country in AGENCIES:
        vault.add_agency(op, agency, country, agency.title())
        name = f"{agency.split('-')[0].lower()}.{agency.split('-')[1].lower()}"
        vault.add_user(
            op,
            username=name,
            agency=agency,
            role=Role.OFFICER,
            password=PASSWORD,
            clearance=Classification.SECRET,
        )
        principals[agency] = vault.authenticate(vault.login(name, PASSWORD).access_token)
    return principals


def _release(
    package: dict[str, Any], country: str, agency: str | None, **extra: Any
) -> dict[str, Any]:
    """A direct release of ``package`` to ``country`` (or ``agency``), in force unless
    ``extra`` says otherwise."""
    row: dict[str, Any] = {
        "id": f"{random.getrandbits(128):032x}",
        "package_id": package["id"],
        "country_code": country,
        "agency_code": agency,
        "status": ReleaseStatus.ACTIVE,
        "kind": ReleaseKind.DIRECT,
        "not_before": None,
        "expires_at": None,
        "requested_by": package["creator_id"],
        "created_at": package["created_at"],
        "decided_by": package["creator_id"],
        "decided_at": package["created_at"],
        "revoked_by": None,
        "revoked_at": None,
    }
    row.update(extra)
    if row["status"] != ReleaseStatus.ACTIVE:
        row["decided_by"] = row["decided_at"] = None
    return row


def not_in_force(package: dict[str, Any], i: int) -> dict[str, Any]:
    """A release of ``package`` to NARROW-HQ that grants nothing now (four kinds in turn)."""
    now = utcnow()
    kinds: list[dict[str, Any]] = [
        {"expires_at": now - timedelta(days=1)},
        {"not_before": now + timedelta(days=1)},
        {"status": ReleaseStatus.REVOKED},
        {"status": ReleaseStatus.PENDING, "kind": ReleaseKind.FOUR_EYES},
    ]
    return _release(package, "NA", "NARROW-HQ", **kinds[i % 4])


def build(vault: Vault, principals: dict[str, Principal], n: int, rng: random.Random) -> None:
    """Bulk-insert ``n`` packages and the releases that give each caller its share."""
    wide_own, wide_released = int(n * 0.3), int(n * 0.2)
    narrow_total = NARROW_OWN + NARROW_RELEASED + NARROW_NOT_IN_FORCE
    now, keyring = utcnow(), vault.keys.keyring
    packages, releases = [], []
    for i in range(n):
        if i < wide_own:
            agency = "WIDE-HQ"
        elif i < wide_own + NARROW_OWN:
            agency = "NARROW-HQ"
        else:
            agency = rng.choice(("OTHER-HQ", "OTHER-2"))
        cc = dict(AGENCIES)[agency]
        row = package_row(keyring, rng, i, cc, agency, principals[agency].user_id, now)
        packages.append(row)
    others = [p for p in packages if p["agency_code"].startswith("OTHER")]
    rng.shuffle(others)
    for j, package in enumerate(others[: narrow_total - NARROW_OWN]):
        if j < NARROW_RELEASED:
            agency_or_none = "NARROW-HQ" if j % 2 else None
            releases.append(_release(package, "NA", agency_or_none))
        else:
            releases.append(not_in_force(package, j))
    for package in others[narrow_total : narrow_total + wide_released]:
        releases.append(_release(package, "WI", None))
    with vault.engine.begin() as conn:
        for start in range(0, len(packages), 5000):
            conn.execute(insert(table_of(Package)), packages[start : start + 5000])
        for start in range(0, len(releases), 5000):
            conn.execute(insert(table_of(Release)), releases[start : start + 5000])
    if vault.engine.dialect.name == "postgresql":
        # Statistics, as autovacuum would have gathered them on a server that grew to this
        # size; a bulk load's first minute has none, and the planner then guesses.
        with vault.engine.begin() as conn:
            conn.execute(text("ANALYZE package"))
            conn.execute(text("ANALYZE release"))


def time_calls(fn: Any, calls: int) -> dict[str, float]:
    """Median and p99 (ms) of ``calls`` calls of ``fn``, after a few untimed ones."""
    for _ in range(min(10, calls)):
        fn()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return summary_ms(samples)


def measure(
    vault: Vault, principals: dict[str, Principal], args: argparse.Namespace
) -> dict[str, Any]:
    """Check each caller's share, then time its first page and a filtered page."""
    expected = {"NARROW-HQ": NARROW_OWN + NARROW_RELEASED, "WIDE-HQ": int(args.packages * 0.5)}
    secret = PackageFilter(classification=Classification.SECRET)
    out: dict[str, Any] = {}
    for agency, share in expected.items():
        who = principals[agency]
        seen = _count_readable(vault, who)
        if seen != share:
            raise SystemExit(f"{agency}: expected {share} readable packages, listing gave {seen}")
        out[agency] = {
            "readable": share,
            "first_page": time_calls(lambda w=who: vault.list_packages(w, limit=50), args.calls),
            "filtered_page": time_calls(
                lambda w=who: vault.list_packages(w, limit=50, filters=secret), args.calls
            ),
            "first_page_sql": time_calls(
                lambda w=who: internals.listing_rows(vault, w, limit=50), args.calls
            ),
            "filtered_page_sql": time_calls(
                lambda w=who: internals.listing_rows(vault, w, limit=50, filters=secret),
                args.calls,
            ),
        }
    return out


def _count_readable(vault: Vault, who: Principal) -> int:
    """How many packages ``who``'s listing shows: the last page's offset found by bisection
    on full pages (largest page), then that page's length."""
    low, high = 0, 1
    while len(vault.list_packages(who, limit=1, offset=high).items) == 1:
        low, high = high, high * 2
    while high - low > 1:  # low is shown, high is not
        mid = (low + high) // 2
        if vault.list_packages(who, limit=1, offset=mid).items:
            low = mid
        else:
            high = mid
    return high


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str | None]:
    """``None`` for SQLite in the vault's folder, or a fresh PostgreSQL schema's URL."""
    if url is None:
        yield None
    else:
        with pg_schema(url) as (schema_url, _):
            yield schema_url


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=100_000, help="packages (100000)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per case (200)")
    parser.add_argument("--database", default=None, help="postgresql:// URL (default SQLite)")
    add_common_arguments(parser, out="listing.json")
    args = parse_arguments(parser, argv, QUICK)
    rng = random.Random(14)
    random.seed(14)
    with workdir("blo-listing-") as work, database(args.database) as url:
        settings = {"database_url": url} if url else {}
        vault = open_vault(work / "vault-data", **settings)
        try:
            principals = seed(vault)
            t0 = time.perf_counter()
            build(vault, principals, args.packages, rng)
            result: dict[str, Any] = {
                "machine": machine_info(work),
                "database": "postgresql" if url else "sqlite",
                "packages": args.packages,
                "build_seconds": round(time.perf_counter() - t0, 1),
                "callers": measure(vault, principals, args),
            }
        finally:
            vault.close()
    result["command"] = command_line("bench.bench_listing", argv)
    print(machine_line(result["machine"]))
    rows = [
        (agency, c["readable"], case, c[case]["median_ms"], c[case]["p99_ms"])
        for agency, c in result["callers"].items()
        for case in ("first_page", "filtered_page", "first_page_sql", "filtered_page_sql")
    ]
    print_table(("caller", "may read", "page", "median ms", "p99 ms"), rows)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
