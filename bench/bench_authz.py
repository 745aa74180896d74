"""Authorization benchmark: decisions and "packages I may read" at scale, against plain pycasbin.

Run::

    python -m bench.bench_authz [--packages 100000] [--releases 300000] [--db sqlite|URL]
                                [--requests 20000] [--list-calls 200] [--dir PATH] [--keep]
    python -m bench.bench_authz --quick    # 1,000 packages, 400 requests (CI)

In one process it builds a throw-away vault (``--db sqlite``: a fresh SQLite file under a temp
folder; a ``postgresql://`` URL: a fresh schema on that server, dropped afterwards), seeds
countries, agencies and users through the service (as tests/conftest.py does: every one a
ledgered operation), then bulk-inserts ``--packages`` Package rows (each with a real wrapped key
and real sealed metadata, made with the same calls Vault.upload uses) and ``--releases`` Release
rows with SQLAlchemy Core ``executemany``. Releases are spread over countries and agencies
(skewed: some countries receive far more than others), country-wide or to one agency, and over
statuses and windows: in force, in force until a future date, expired, not yet valid, revoked,
pending, rejected. A few thousand H3 acknowledgements are added too.

Then it measures (``time.perf_counter_ns`` around each call; the table shows median and p99):

a) pure decision    ``Authorizer.decide(facts)`` on precomputed facts, memo warm (and the
                    one-off cost of a memo miss, i.e. pycasbin's enforce_ex on the class policy)
b) full decision    what the service does for one request, inside an open session:
                    ``session.get(Package, id)`` + ``reference_facts`` (releases in force for the
                    caller's agency/country, originator country, H3 acknowledgement) + decide;
                    also without the package load, and per request in its own service
                    transaction (connection, PRAGMAs, BEGIN IMMEDIATE, ..., COMMIT)
c) baseline         a plain ``casbin.Enforcer`` with a classic RBAC-with-resources model, one
                    policy line per release grant (``p, country:KZ, pkg:<id>, read`` or
                    ``p, agency:KZ-BORDER, pkg:<id>, read``) and ``g, user, country:KZ`` /
                    ``g, user, agency:KZ-BORDER`` per user; per-enforce time on allowed and on
                    denied requests at several sizes (a denied request scans every line, so at
                    300k lines only a handful of requests fit the time budget); and the same
                    with ``casbin.FastEnforcer(cache_key_order=[1, 2])`` (index on obj, act)
d) listing          first page (50) of ``Vault.list_packages`` for officers of each country, as
                    the service runs it, and a replica of it timed piece by piece: checkout +
                    BEGIN, getting the statement (built once per caller class; since issue 14
                    with the probe that picks its plan), the query, the
                    SQL alone (same
                    statement and parameters on the raw DBAPI cursor), the ledger entry (through
                    the service's group commit, as reads record), decrypting the 50 titles; plus
                    the page without the ledger part. The replica's SQL is compared with what
                    list_packages sends; EXPLAIN QUERY PLAN of the listing query is recorded.

The requests of a) and b) are 20,000 random (user, package, action) triples, half allowed and
half denied (classified in an untimed pre-pass that also warms the memo and the page cache),
each package used once so SQLAlchemy's identity map never answers instead of the database.
When a target is missed, b) and d) are profiled with cProfile (pstats saved in bench/out/).
The service's pieces it times one by one (its transaction, the listing statement, ...) are the
domain services' public members, named in ``bench/_internals.py``.

Results: a table on stdout and JSON in ``bench/out/authz.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import casbin
from sqlalchemy import Table, event, func, insert
from sqlalchemy import select as sa_select
from sqlmodel import SQLModel, col

from bench import _internals as internals
from bench.harness import (
    OUT_DIR,
    PASSWORD,
    Phases,
    add_common_arguments,
    command_line,
    machine_info,
    machine_line,
    open_vault,
    parse_arguments,
    percentile,
    pg_schema,
    print_table,
    profile_lines,
    profiled,
    source_fingerprint,
    summary_ms,
    summary_us,
    workdir,
    write_json,
)
from vault import crypto
from vault.authz import (
    NONE,
    ORIGINATOR,
    RELEASED_AGENCY,
    RELEASED_COUNTRY,
    SAME_COUNTRY,
    Authorizer,
    Facts,
)
from vault.db import session_scope
from vault.models import (
    Acknowledgement,
    Agency,
    Classification,
    Handling,
    Package,
    Release,
    ReleaseKind,
    ReleaseStatus,
    Role,
    utcnow,
)
from vault.service import Principal, Vault, local_operator

pc = time.perf_counter_ns

# The targets.
TARGET_DECISION_MEDIAN_US = 50.0
TARGET_DECISION_P99_US = 500.0
TARGET_LIST_MS = 20.0
PAGE = 50

QUICK = {
    "packages": 1000,
    "releases": 3000,
    "requests": 400,
    "list_calls": 10,
    "baseline_sizes": "500,3000",
    "baseline_budget": 1.0,
    "fast_requests": 1000,
    "wait_idle": 0.0,
    "no_profile": True,
}
# The source files on the measured path (a folder counts as its .py files).
MEASURED = (
    "vault/service",
    "vault/authz.py",
    "vault/db.py",
    "vault/models.py",
    "vault/ledger/log.py",
    "policies/model.conf",
    "policies/policy.csv",
)

# --- the world -------------------------------------------------------------------------------

# code: (name, share of packages originated, share of releases received)
COUNTRIES = {
    "UZ": ("Uzbekistan", 0.30, 0.26),
    "KZ": ("Kazakhstan", 0.25, 0.26),
    "KG": ("Kyrgyzstan", 0.17, 0.20),
    "TJ": ("Tajikistan", 0.14, 0.16),
    "TM": ("Turkmenistan", 0.09, 0.08),
    "AF": ("Afghanistan", 0.05, 0.04),
}
AGENCY_KINDS = {"CUSTOMS": "Customs Service", "BORDER": "Border Guard Service"}
CLASSIFICATION_MIX = [  # (value, weight)
    (Classification.UNCLASSIFIED, 0.30),
    (Classification.RESTRICTED, 0.35),
    (Classification.CONFIDENTIAL, 0.25),
    (Classification.SECRET, 0.10),
]
HANDLING_MIX = [(Handling.H0, 0.40), (Handling.H1, 0.30), (Handling.H2, 0.20), (Handling.H3, 0.10)]
# How a release row looks: (label, weight); "in force" = active and inside its window.
RELEASE_MIX = [
    ("active", 0.60),  # in force, no window
    ("active-until", 0.08),  # in force, expires in the future
    ("expired", 0.10),  # active but expired
    ("not-yet-valid", 0.04),  # active, not_before in the future
    ("revoked", 0.10),
    ("pending", 0.05),
    ("rejected", 0.03),
]
AGENCY_SPECIFIC_SHARE = 0.40  # the rest are country-wide releases
ACK_SHARE = 0.25  # share of in-force H3 grants whose recipient officer acknowledged

OFFICER_ACTIONS = (
    ["read", "download", "release", "acknowledge", "request-release"],
    [40, 30, 15, 7, 8],
)
SUPERVISOR_ACTIONS = (["read", "download", "release", "approve"], [40, 30, 15, 15])
AUDITOR_ACTIONS = (["audit", "read"], [80, 20])


def agencies() -> dict[str, str]:
    """agency code -> country code."""
    return {f"{cc}-{kind}": cc for cc in COUNTRIES for kind in AGENCY_KINDS}


def users() -> dict[str, tuple[str, Role, Classification]]:
    """username -> (agency, role, clearance)."""
    out: dict[str, tuple[str, Role, Classification]] = {}
    for agency in agencies():
        stem = agency.lower().replace("-", ".")
        out[f"{stem}.officer"] = (agency, Role.OFFICER, Classification.SECRET)
        out[f"{stem}.junior"] = (agency, Role.OFFICER, Classification.RESTRICTED)
    for cc in COUNTRIES:
        out[f"{cc.lower()}.supervisor"] = (f"{cc}-CUSTOMS", Role.SUPERVISOR, Classification.SECRET)
        out[f"{cc.lower()}.auditor"] = (f"{cc}-CUSTOMS", Role.AUDITOR, Classification.SECRET)
    out["bench.admin"] = ("UZ-CUSTOMS", Role.ADMIN, Classification.UNCLASSIFIED)
    return out


def seed(vault: Vault) -> dict[str, Principal]:
    """Countries, agencies and users through the service (each a ledgered operation)."""
    op = local_operator()
    for code, (name, _, _) in COUNTRIES.items():
        vault.add_country(op, code, name)
    for code, cc in agencies().items():
        vault.add_agency(op, code, cc, f"{COUNTRIES[cc][0]} {AGENCY_KINDS[code.split('-', 1)[1]]}")
    out = {}
    for username, (agency, role, clearance) in users().items():
        vault.add_user(
            op, username=username, agency=agency, role=role, password=PASSWORD, clearance=clearance
        )
        out[username] = vault.authenticate(vault.login(username, PASSWORD).access_token)
    return out


@dataclass
class Population:
    """What was inserted, kept compactly in memory to pick requests and build the baseline."""

    package_ids: list[str]
    package_agency: list[str]
    package_handling: list[str]
    # one entry per release row: (package index, country, agency or None, in force)
    releases: list[tuple[int, str, str | None, bool]]
    acks: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def table_of(model: type[SQLModel]) -> Table:
    """The Core table behind a SQLModel table class (for bulk ``executemany`` inserts)."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


def _hex_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def package_row(
    keyring: Any, rng: random.Random, i: int, cc: str, agency: str, creator: str, now: datetime
) -> dict[str, Any]:
    """One Package row sealed with the same calls Vault.upload makes for its record."""
    pid = _hex_id(rng)
    identity = internals.package_identity(pid)
    package_key = crypto.new_data_key()
    wrapped = keyring.wrap(package_key, context=identity)
    meta = {
        "title": f"{cc} seizure report #{i}",
        "description": "synthetic package for the authorization benchmark",
        "handling_note": "",
        "fields": {},
        "digest": hashlib.sha256(pid.encode()).hexdigest(),
    }
    return {
        "id": pid,
        "agency_code": agency,
        "creator_id": creator,
        "created_at": now - timedelta(seconds=rng.random() * 730 * 86400),
        "size": 1 + rng.getrandbits(20),
        "file_count": 1,
        "classification": _pick(rng, CLASSIFICATION_MIX),
        "handling": _pick(rng, HANDLING_MIX),
        "kek_id": wrapped.kek_id,
        "wrapped_key": wrapped.blob,
        "sealed_meta": crypto.seal_bytes(package_key, json.dumps(meta).encode(), context=identity),
    }


def release_row(
    rng: random.Random,
    label: str,
    package: dict[str, Any],
    cc: str,
    agency: str | None,
    now: datetime,
) -> dict[str, Any]:
    """One Release row of ``package`` to ``cc`` (or ``agency``) in the state ``label`` names."""
    requester = package["creator_id"]
    created = package["created_at"] + (now - package["created_at"]) * rng.random() * 0.5
    row: dict[str, Any] = {
        "id": _hex_id(rng),
        "package_id": package["id"],
        "country_code": cc,
        "agency_code": agency,
        "status": ReleaseStatus.ACTIVE,
        "kind": ReleaseKind.DIRECT,
        "not_before": None,
        "expires_at": None,
        "requested_by": requester,
        "created_at": created,
        "decided_by": requester,
        "decided_at": created,
        "revoked_by": None,
        "revoked_at": None,
    }
    if label == "active-until":
        row["expires_at"] = now + timedelta(days=1 + rng.random() * 365)
    elif label == "expired":
        row["expires_at"] = now - timedelta(days=1 + rng.random() * 300)
    elif label == "not-yet-valid":
        row["not_before"] = now + timedelta(days=1 + rng.random() * 60)
    elif label == "revoked":
        row.update(
            status=ReleaseStatus.REVOKED, revoked_by=requester, revoked_at=now - timedelta(days=1)
        )
    elif label == "pending":
        row.update(
            status=ReleaseStatus.PENDING,
            decided_by=None,
            decided_at=None,
            kind=rng.choice([ReleaseKind.FOUR_EYES, ReleaseKind.ONWARD_REQUEST]),
        )
    elif label == "rejected":
        row.update(status=ReleaseStatus.REJECTED, kind=ReleaseKind.FOUR_EYES)
    return row


def _pick(rng: random.Random, mix: Sequence[tuple[Any, float]]) -> Any:
    return rng.choices([v for v, _ in mix], weights=[w for _, w in mix])[0]


def release_rows(
    packages: list[dict[str, Any]],
    principals: dict[str, Principal],
    pop: Population,
    n_releases: int,
    rng: random.Random,
) -> tuple[list[dict[str, Any]], set[tuple[str, str]]]:
    """Release rows over ``packages`` (recorded in ``pop``) and the acknowledgements of H3
    grants in force, as (package id, user id)."""
    now = utcnow()
    agency_country = agencies()
    by_country = _agencies_by_country()
    officers = {
        a: [principals[f"{a.lower().replace('-', '.')}.{k}"].user_id for k in ("officer", "junior")]
        for a in agency_country
    }
    targets = {
        origin: [(c, COUNTRIES[c][2]) for c in COUNTRIES if c != origin] for origin in COUNTRIES
    }
    rows: list[dict[str, Any]] = []
    acks: set[tuple[str, str]] = set()
    status_counts: dict[str, int] = defaultdict(int)
    for _ in range(n_releases):
        p = rng.randrange(len(packages))
        cc = _pick(rng, targets[agency_country[pop.package_agency[p]]])
        agency: str | None = None
        if rng.random() < AGENCY_SPECIFIC_SHARE:
            agency = rng.choice(by_country[cc])
        label = _pick(rng, RELEASE_MIX)
        status_counts[label] += 1
        rows.append(release_row(rng, label, packages[p], cc, agency, now))
        in_force = label in ("active", "active-until")
        pop.releases.append((p, cc, agency, in_force))
        if in_force and pop.package_handling[p] == "H3" and rng.random() < ACK_SHARE:
            who = agency or rng.choice(by_country[cc])
            acks.add((pop.package_ids[p], rng.choice(officers[who])))
    pop.counts = dict(status_counts)
    return rows, acks


def _agencies_by_country() -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for a, cc in agencies().items():
        out[cc].append(a)
    return out


def populate(
    vault: Vault,
    principals: dict[str, Principal],
    *,
    n_packages: int,
    n_releases: int,
    rng: random.Random,
    chunk: int = 5000,
) -> Population:
    """Bulk-insert packages (real sealed metadata), releases and acknowledgements (Core)."""
    now = utcnow()
    by_country = _agencies_by_country()
    pop = Population(package_ids=[], package_agency=[], package_handling=[], releases=[])
    t0 = time.perf_counter()
    packages: list[dict[str, Any]] = []
    for i in range(n_packages):
        cc = _pick(rng, [(c, share) for c, (_, share, _) in COUNTRIES.items()])
        agency = rng.choice(by_country[cc])
        creator = principals[f"{agency.lower().replace('-', '.')}.officer"].user_id
        row = package_row(vault.keys.keyring, rng, i, cc, agency, creator, now)
        packages.append(row)
        pop.package_ids.append(row["id"])
        pop.package_agency.append(agency)
        pop.package_handling.append(row["handling"].value)
    pop.seconds["packages_generate_and_seal"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with vault.engine.begin() as conn:
        for start in range(0, len(packages), chunk):
            conn.execute(insert(table_of(Package)), packages[start : start + chunk])
    pop.seconds["packages_insert"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows, acks = release_rows(packages, principals, pop, n_releases, rng)
    del packages
    pop.seconds["releases_generate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ack_rows = [{"package_id": p, "user_id": u, "created_at": now} for p, u in sorted(acks)]
    with vault.engine.begin() as conn:
        for start in range(0, len(rows), chunk):
            conn.execute(insert(table_of(Release)), rows[start : start + chunk])
        for start in range(0, len(ack_rows), chunk):
            conn.execute(insert(table_of(Acknowledgement)), ack_rows[start : start + chunk])
    pop.seconds["releases_insert"] = time.perf_counter() - t0
    pop.acks = len(ack_rows)
    pop.counts["in_force"] = sum(1 for r in pop.releases if r[3])
    pop.counts["agency_specific"] = sum(1 for r in pop.releases if r[2] is not None)
    return pop


# --- statistics ------------------------------------------------------------------------------


def timer_overhead_ns(n: int = 200_000) -> float:
    """Median cost of one empty ``t0 = pc(); t1 = pc()`` pair."""
    out = []
    for _ in range(n):
        t0 = pc()
        t1 = pc()
        out.append(t1 - t0)
    return percentile(out, 50)


# --- requests --------------------------------------------------------------------------------


@dataclass
class Req:
    username: str
    package_id: str
    action: str
    allowed: bool
    facts: Facts


@dataclass
class Pools:
    """Package indexes by how a caller may relate to them, to draw likely-allowed requests."""

    own: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    to_agency: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    to_country: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def of(cls, pop: Population) -> Pools:
        """The pools of ``pop``: packages each agency owns, and releases by recipient."""
        pools = cls()
        for i, a in enumerate(pop.package_agency):
            pools.own[a].append(i)
        for p, cc, agency, _ in pop.releases:
            if agency is None:
                pools.to_country[cc].append(p)
            else:
                pools.to_agency[agency].append(p)
        return pools

    def draw(self, rng: random.Random, principal: Principal, packages: int) -> int:
        """Any package (40 %), one released to the caller (35 %) or their agency's own."""
        r = rng.random()
        if r < 0.40:
            return rng.randrange(packages)
        if r < 0.75:
            if rng.random() < 0.4:
                return rng.choice(self.to_agency[principal.agency])
            return rng.choice(self.to_country[principal.country])
        return rng.choice(self.own[principal.agency])


def _action_for(rng: random.Random, role: Role) -> str:
    acts, weights = (
        AUDITOR_ACTIONS
        if role == Role.AUDITOR
        else SUPERVISOR_ACTIONS
        if role == Role.SUPERVISOR
        else OFFICER_ACTIONS
    )
    return rng.choices(acts, weights=weights)[0]


def sample_requests(
    vault: Vault,
    principals: dict[str, Principal],
    pop: Population,
    *,
    n: int,
    rng: random.Random,
) -> tuple[list[Req], dict[str, Any]]:
    """n requests, half allowed and half denied, each package used once (untimed pre-pass)."""
    pools = Pools.of(pop)
    candidates = [u for u, (_, role, _) in users().items() if role != Role.ADMIN]
    want = {True: n // 2, False: n - n // 2}
    found: dict[bool, list[Req]] = {True: [], False: []}
    used: set[int] = set()
    tried = 0
    t0 = time.perf_counter()
    while len(found[True]) < want[True] or len(found[False]) < want[False]:
        # A fresh session every 2,000 requests, so its identity map stays small.
        with session_scope(vault.engine) as session:
            for _ in range(2000):
                tried += 1
                if tried > 50 * n:
                    raise RuntimeError("could not sample enough allowed/denied requests")
                username = rng.choice(candidates)
                principal = principals[username]
                p = pools.draw(rng, principal, len(pop.package_ids))
                if p in used:
                    continue
                action = _action_for(rng, principal.role)
                package = session.get(Package, pop.package_ids[p])
                assert package is not None
                facts = reference_facts(vault, session, principal, package, action)
                ok = vault.authz.decide(facts).allowed
                if len(found[ok]) >= want[ok]:
                    continue
                used.add(p)
                found[ok].append(Req(username, package.id, action, ok, facts))
                if len(found[True]) >= want[True] and len(found[False]) >= want[False]:
                    break
    reqs = found[True] + found[False]
    rng.shuffle(reqs)
    info = {
        "requests": len(reqs),
        "allowed": len(found[True]),
        "denied": len(found[False]),
        "candidates_tried": tried,
        "seconds": round(time.perf_counter() - t0, 2),
        "relations_holding": dict(Counter(rel for q in reqs for rel in q.facts.relations)),
        "distinct_classes": len({q.facts for q in reqs}),
        "actions": dict(sorted(Counter(q.action for q in reqs).items())),
    }
    return reqs, info


# --- a) pure decision --------------------------------------------------------------------------


def measure_pure(vault: Vault, reqs: list[Req]) -> dict[str, Any]:
    authz = vault.authz
    facts = [q.facts for q in reqs]
    # Cold: a fresh Authorizer (same policy), first sight of each class goes to pycasbin.
    fresh = Authorizer(policy_dir=vault.settings.resolved_policy_dir, extra_rules=authz.extra_rules)
    cold: list[int] = []
    warm_first: list[int] = []
    for f in facts:
        before = internals.memo_size(fresh)
        t0 = pc()
        fresh.decide(f)
        t1 = pc()
        (cold if internals.memo_size(fresh) != before else warm_first).append(t1 - t0)
    gc.collect()
    decide_ns: list[int] = []
    allows_ns: list[int] = []
    for _ in range(2):  # two passes, keep the second (memo and caches warm)
        decide_ns.clear()
        for f in facts:
            t0 = pc()
            authz.decide(f)
            t1 = pc()
            decide_ns.append(t1 - t0)
    for f in facts:
        t0 = pc()
        authz.allows(f)
        t1 = pc()
        allows_ns.append(t1 - t0)
    mismatches = sum(1 for q in reqs if authz.decide(q.facts).allowed != q.allowed)
    return {
        "decide": summary_us(decide_ns),
        "decide_allowed": summary_us(
            [t for t, q in zip(decide_ns, reqs, strict=True) if q.allowed]
        ),
        "decide_denied": summary_us(
            [t for t, q in zip(decide_ns, reqs, strict=True) if not q.allowed]
        ),
        "allows": summary_us(allows_ns),
        "memo_miss_first_call": summary_us(cold),
        "memo_entries": internals.memo_size(fresh),
        "mismatches": mismatches,
    }


# --- b) full decision ----------------------------------------------------------------------------


def service_path_facts(
    vault: Vault, session: Any, principal: Principal, package_id: str, action: str
) -> Facts:
    """Facts as the service derives them (``vault.service.package_facts``, one query)."""
    found = internals.package_facts(session, principal, package_id, action)
    assert found is not None
    return found[1]


def reference_facts(
    vault: Vault, session: Any, principal: Principal, package: Package, action: str
) -> Facts:
    """The same facts from separate indexed lookups (releases in force, the originator's
    country, the acknowledgement): how the service derived them before its one prebuilt
    query, kept here as the baseline it is timed against and an independent check of it."""
    relations = {NONE}
    if package.agency_code == principal.agency:
        relations.add(ORIGINATOR)
    for _, agency, _ in internals.grants_in_force(vault, session, principal, package.id):
        relations.add(RELEASED_COUNTRY if agency is None else RELEASED_AGENCY)
    if (
        ORIGINATOR not in relations
        and internals.country_of(vault, session, package.agency_code) == principal.country
    ):
        relations.add(SAME_COUNTRY)
    acknowledged = False
    if package.handling == Handling.H3 and principal.user_id:
        acknowledged = session.get(Acknowledgement, (package.id, principal.user_id)) is not None
    return Facts(
        role=principal.role.value,
        relations=frozenset(relations),
        cleared=principal.clearance.rank >= package.classification.rank,
        handling=package.handling.value,
        acknowledged=acknowledged,
        action=action,
    )


def time_in_session(
    vault: Vault, principals: dict[str, Principal], reqs: list[Req], per_session: int
) -> tuple[dict[str, list[int]], int]:
    """Each request's load + facts + decide, timed piece by piece inside an open session, and
    the service's one-query path; (timings by name, requests whose outcome differed)."""
    authz = vault.authz
    tt = time.thread_time_ns
    t: dict[str, list[int]] = defaultdict(list)
    mismatches = 0
    gc.collect()
    for start in range(0, len(reqs), per_session):
        with session_scope(vault.engine) as session:
            session.connection()  # connect + BEGIN outside the timed region
            for q in reqs[start : start + per_session]:
                principal = principals[q.username]
                c0 = tt()
                t0 = pc()
                package = session.get(Package, q.package_id)
                t1 = pc()
                facts = reference_facts(vault, session, principal, package, q.action)  # type: ignore[arg-type]
                t2 = pc()
                decision = authz.decide(facts)
                t3 = pc()
                t["with_row_cpu"].append(tt() - c0)
                t["with_row"].append(t3 - t0)
                t["facts_only"].append(t3 - t1)
                t["get"].append(t1 - t0)
                t["facts"].append(t2 - t1)
                t["decide"].append(t3 - t2)
                if decision.allowed != q.allowed or facts != q.facts:
                    mismatches += 1
                # The service's own path (package_facts): one prebuilt query for the package,
                # its originator's country and the release/acknowledgement flags.
                t4 = pc()
                fast = service_path_facts(vault, session, principal, q.package_id, q.action)
                fast_allowed = authz.decide(fast).allowed
                t["one_query"].append(pc() - t4)
                if fast_allowed != q.allowed or fast != q.facts:
                    mismatches += 1
    return t, mismatches


def time_transactions(
    vault: Vault, principals: dict[str, Principal], reqs: list[Req]
) -> tuple[dict[str, list[int]], int]:
    """Each request in a service transaction of its own, alternately read-only, and empty
    transactions alone; (timings by name, requests whose outcome differed)."""
    t: dict[str, list[int]] = defaultdict(list)
    mismatches = 0
    gc.collect()
    # The whole request's transaction, as the service runs a package operation's check
    # (without the ledger refusal a denied request would then append).
    for i, q in enumerate(reqs):
        principal = principals[q.username]
        readonly = bool(i % 2)
        t0 = pc()
        with internals.transaction(vault, readonly=readonly) as session:
            package = session.get(Package, q.package_id)
            facts = reference_facts(vault, session, principal, package, q.action)  # type: ignore[arg-type]
            ok = vault.authz.allows(facts)
        t["per_request_ro" if readonly else "per_request"].append(pc() - t0)
        if ok != q.allowed:
            mismatches += 1
    # An empty transaction: what checkout (or connect) + BEGIN [IMMEDIATE] + COMMIT cost alone.
    for i in range(min(4000, len(reqs))):
        readonly = bool(i % 2)
        t0 = pc()
        with internals.transaction(vault, readonly=readonly) as session:
            session.connection()
        t["empty_ro" if readonly else "empty"].append(pc() - t0)
    return t, mismatches


def measure_full(
    vault: Vault,
    principals: dict[str, Principal],
    reqs: list[Req],
    *,
    per_session: int = 500,
    request_subset: int = 5000,
) -> dict[str, Any]:
    """b): what the service does for one request, in an open session and per transaction."""
    t, mismatches = time_in_session(vault, principals, reqs, per_session)
    tx, tx_mismatches = time_transactions(vault, principals, reqs[:request_subset])

    def where(timings: list[int], keep: Callable[[Req], bool]) -> dict[str, float]:
        return summary_us([ns for ns, q in zip(timings, reqs, strict=True) if keep(q)])

    return {
        "service_one_query_facts_decide": summary_us(t["one_query"]),
        "row_facts_decide": summary_us(t["with_row"]),
        "row_facts_decide_allowed": where(t["with_row"], lambda q: q.allowed),
        "row_facts_decide_denied": where(t["with_row"], lambda q: not q.allowed),
        "row_facts_decide_thread_cpu": summary_us(t["with_row_cpu"]),
        "facts_decide": summary_us(t["facts_only"]),
        "pieces": {
            "session_get_package": summary_us(t["get"]),
            "vault_facts": summary_us(t["facts"]),
            "decide": summary_us(t["decide"]),
            "vault_facts_originator": where(t["facts"], lambda q: ORIGINATOR in q.facts.relations),
            "vault_facts_not_originator": where(
                t["facts"], lambda q: ORIGINATOR not in q.facts.relations
            ),
            "vault_facts_h3": where(t["facts"], lambda q: q.facts.handling == "H3"),
        },
        "per_request_transaction": summary_us(tx["per_request"]),
        "per_request_readonly_transaction": summary_us(tx["per_request_ro"]),
        "empty_transaction": summary_us(tx["empty"]),
        "empty_readonly_transaction": summary_us(tx["empty_ro"]),
        "engine_pool": type(vault.engine.pool).__name__,
        "mismatches": mismatches + tx_mismatches,
    }


# --- d) listing -------------------------------------------------------------------------------


class StatementCapture:
    """Remembers the last statement and parameters SQLAlchemy sent to the DBAPI cursor."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.last: tuple[str, Any] | None = None
        self.on = False

    def __enter__(self) -> StatementCapture:
        event.listen(self.engine, "before_cursor_execute", self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._hook)

    def _hook(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if self.on:
            self.last = (statement, parameters)


class TxClock:
    """Timestamps of the engine's COMMIT (before the DBAPI commit) and DBAPI close (before it),
    to split the replica's ``commit_release`` piece if the engine closes its connections.

    The vault's engine keeps a pool, so there is no close: ``commit -> end`` is the DBAPI
    commit plus returning the connection to the pool. An engine without a pool (NullPool)
    closes the connection as soon as the transaction ends; then ``commit -> close`` is the
    DBAPI commit (the WAL fsync with synchronous=FULL) and ``close -> end`` sqlite3's close.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.commit_at = 0
        self.close_at = 0

    def _commit(self, conn: Any) -> None:
        self.commit_at = pc()

    def _close(self, dbapi_conn: Any, record: Any) -> None:
        self.close_at = pc()

    def __enter__(self) -> TxClock:
        event.listen(self.engine, "commit", self._commit)
        event.listen(self.engine, "close", self._close)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "commit", self._commit)
        event.remove(self.engine, "close", self._close)


def list_replica(
    vault: Vault,
    principal: Principal,
    *,
    ledger: bool = True,
    clock: TxClock | None = None,
) -> dict[str, int]:
    """Vault.list_packages, step for step, with each step timed (ns): a read-only transaction
    whose ledger entry goes through the group commit (a writer thread appends queued entries
    in one transaction, one fsync'd COMMIT, and the caller waits for it)."""
    c0 = time.thread_time_ns()
    t0 = pc()
    internals.require_global(vault, principal, "list")
    with internals.transaction(vault, readonly=True) as session:
        session.connection()  # the service connects lazily at its first query; same work
        t1 = pc()
        # The plan, chosen by the service's probe (a query of its own since issue 14).
        query, params = internals.listing_query(
            vault, session.connection(), principal, limit=PAGE, offset=0
        )
        t2 = pc()
        found = session.connection().execute(query, params).all()
        t3 = pc()
        if ledger:
            internals.record_read(
                vault,
                actor=principal.actor,
                action="list",
                decision="allow",
                reason="ok",
                subject=f"count:{len(found)}",
            )
        t4 = pc()
    t5 = pc()
    items = [internals.package_summary(vault, row, row.country_code) for row in found]
    t6 = pc()
    cpu = time.thread_time_ns() - c0
    assert len(items) == len(found)
    out = {
        "total": t6 - t0,
        "total_thread_cpu": cpu,
        "connect_begin": t1 - t0,
        "build_clause": t2 - t1,
        "orm_query": t3 - t2,
        "ledger": t4 - t3,
        "commit_release": t5 - t4,
        "decrypt_titles": t6 - t5,
        "rows": len(found),
    }
    if clock is not None and t4 <= clock.commit_at <= clock.close_at <= t5:
        out["commit_release.dbapi_commit"] = clock.close_at - clock.commit_at
        out["commit_release.dbapi_close"] = t5 - clock.close_at
    return out


def _dbapi_connection(engine: Any) -> Any:
    raw = engine.raw_connection()
    return raw


def capture_listings(
    vault: Vault, principals: dict[str, Principal], officers: list[str]
) -> tuple[dict[str, tuple[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    """Untimed: each officer's listing SQL and parameters as sent to the driver, how many rows
    their first page has and how many packages they may read at all, and the statement the
    service's probe chose for them."""
    captured: dict[str, tuple[str, Any]] = {}
    per_officer: dict[str, dict[str, Any]] = {}
    chosen: dict[str, Any] = {}
    with StatementCapture(vault.engine) as cap, session_scope(vault.engine) as session:
        for name in officers:
            query, params = internals.listing_query(
                vault, session.connection(), principals[name], limit=PAGE, offset=0
            )
            chosen[name] = query
            cap.on = True
            rows = session.execute(query, params).all()
            cap.on = False
            assert cap.last is not None
            captured[name] = cap.last
            readable = session.execute(
                sa_select(func.count())
                .select_from(Package)
                .join(Agency, col(Agency.code) == Package.agency_code)
                .where(
                    col(Package.purged_at).is_(None),
                    internals.readable_clause(vault, principals[name]),
                ),
                params,
            ).scalar_one()
            per_officer[name] = {"first_page_rows": len(rows), "readable_total": int(readable)}
    return captured, per_officer, chosen


def replica_matches(vault: Vault, statement: Any, sql: str) -> bool:
    """Whether ``sql`` (the replica's) is what Vault.list_packages sends to the driver for
    ``statement`` (the plan the service chose)."""
    if internals.driver_sql(vault, statement) == sql:
        return True
    print(
        "  WARNING: the replica's listing SQL differs from Vault.list_packages' SQL "
        "(the service changed?); the piece-by-piece figures may not apply",
        flush=True,
    )
    return False


def query_plans(engine: Any, captured: dict[str, tuple[str, Any]]) -> dict[str, list[str]]:
    """The database's plan of each captured listing (PostgreSQL: of the first only)."""
    plans: dict[str, list[str]] = {}
    raw = _dbapi_connection(engine)
    try:
        if engine.dialect.name == "sqlite":
            for name, (sql, params) in captured.items():
                plan = raw.cursor().execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
                plans[name] = [f"{r[0]}|{r[1]}|{r[3]}" for r in plan]
        else:
            name, (sql, params) = next(iter(captured.items()))
            cur = raw.cursor()
            cur.execute("EXPLAIN " + sql, params)
            plans[name] = [r[0] for r in cur.fetchall()]
            raw.rollback()
    finally:
        raw.close()
    return plans


def time_sql_only(
    engine: Any, captured: dict[str, tuple[str, Any]], order: list[str], rows: dict[str, int]
) -> dict[str, list[int]]:
    """The captured statements on the raw DBAPI connection, rows fetched; ns by officer."""
    gc.collect()
    sql_by: dict[str, list[int]] = defaultdict(list)
    raw = _dbapi_connection(engine)
    try:
        for name in order:
            sql, params = captured[name]
            cur = raw.cursor()
            t0 = pc()
            cur.execute(sql, params)
            found = cur.fetchall()
            t1 = pc()
            cur.close()
            sql_by[name].append(t1 - t0)
            assert len(found) == rows[name]
        if engine.dialect.name != "sqlite":
            raw.rollback()
    finally:
        raw.close()
    return sql_by


def measure_listing(
    vault: Vault,
    principals: dict[str, Principal],
    *,
    calls: int,
    officers: list[str],
) -> dict[str, Any]:
    """d): the first page as the service serves it, its replica piece by piece, without the
    ledger part, and its SQL alone; overall and per officer."""
    captured, per_officer, chosen = capture_listings(vault, principals, officers)
    first = officers[0]
    matches = replica_matches(vault, chosen[first], captured[first][0])
    plans = query_plans(vault.engine, captured)
    order = [officers[i % len(officers)] for i in range(calls)]
    # 1. The service call itself.
    gc.collect()
    service_ns: dict[str, list[int]] = defaultdict(list)
    for name in order:
        t0 = pc()
        page = vault.list_packages(principals[name], limit=PAGE)
        service_ns[name].append(pc() - t0)
        assert len(page.items) == per_officer[name]["first_page_rows"]
    # 2. The replica, timed piece by piece.
    gc.collect()
    pieces: dict[str, list[int]] = defaultdict(list)
    orm_by: dict[str, list[int]] = defaultdict(list)
    with TxClock(vault.engine) as clock:
        replicas = [(name, list_replica(vault, principals[name], clock=clock)) for name in order]
    for name, r in replicas:
        orm_by[name].append(r["orm_query"])
        for k, v in r.items():
            if k != "rows":
                pieces[k].append(v)
    # 3. Without the ledger part (no append; the COMMIT then has nothing to write).
    gc.collect()
    no_ledger_by: dict[str, list[int]] = defaultdict(list)
    for name in order:
        no_ledger_by[name].append(list_replica(vault, principals[name], ledger=False)["total"])
    # 4. The SQL alone.
    rows = {name: o["first_page_rows"] for name, o in per_officer.items()}
    sql_by = time_sql_only(vault.engine, captured, order, rows)
    for name in officers:
        p = principals[name]
        per_officer[name].update(
            {
                "service_list_packages": summary_ms(service_ns[name]),
                "sql_only": summary_ms(sql_by[name]),
                "orm_query": summary_ms(orm_by[name]),
                "without_ledger": summary_ms(no_ledger_by[name]),
                "clearance": p.clearance.value,
                "country": p.country,
                "agency": p.agency,
                "role": p.role.value,
            }
        )

    def every(by: dict[str, list[int]]) -> dict[str, float]:
        return summary_ms([t for v in by.values() for t in v])

    return {
        "calls": calls,
        "officers": officers,
        "service_list_packages": every(service_ns),
        "replica_pieces": {k: summary_ms(v) for k, v in pieces.items()},
        "without_ledger": every(no_ledger_by),
        "sql_only": every(sql_by),
        "per_officer": per_officer,
        "query_plans": plans,
        "replica_sql_matches_service": matches,
        "sql_example": captured[officers[0]][0],
    }


# --- c) plain pycasbin baseline -------------------------------------------------------------------

BASELINE_MODEL = """\
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act
"""


Request = tuple[str, str, str]
Grant = tuple[int, str, str | None, bool]


class BaselinePolicy:
    """The classic model's policy for a population: one ``p`` line per release row and
    ``g`` lines putting each officer in their country and agency; draws requests."""

    def __init__(
        self, pop: Population, principals: dict[str, Principal], rng: random.Random
    ) -> None:
        self.pop, self.rng = pop, rng
        roles = (Role.OFFICER, Role.SUPERVISOR)
        self.officers = [u for u, (_, role, _) in users().items() if role in roles]
        self.subjects = {
            u: (f"country:{principals[u].country}", f"agency:{principals[u].agency}")
            for u in self.officers
        }
        self.members: dict[str, list[str]] = defaultdict(list)
        for u, subjects in self.subjects.items():
            for sub in subjects:
                self.members[sub].append(u)
        self.lines: list[Grant] = []
        self.granted: dict[str, set[str]] = defaultdict(set)  # obj -> subjects

    def write(self, path: Path, lines: list[Grant]) -> None:
        """Write the policy for the release rows ``lines`` to ``path``."""
        self.lines = lines
        self.granted = defaultdict(set)
        with path.open("w") as f:
            for p, cc, agency, _ in lines:
                sub = f"agency:{agency}" if agency else f"country:{cc}"
                obj = f"pkg:{self.pop.package_ids[p]}"
                f.write(f"p, {sub}, {obj}, read\n")
                self.granted[obj].add(sub)
            for u, subjects in self.subjects.items():
                f.write("".join(f"g, {u}, {sub}\n" for sub in subjects))

    def allowed(self) -> Request:
        """A request one of the policy lines allows."""
        p, cc, agency, _ = self.lines[self.rng.randrange(len(self.lines))]
        sub = f"agency:{agency}" if agency else f"country:{cc}"
        return self.rng.choice(self.members[sub]), f"pkg:{self.pop.package_ids[p]}", "read"

    def denied(self) -> Request:
        """A request no policy line allows."""
        while True:
            u = self.rng.choice(self.officers)
            obj = f"pkg:{self.pop.package_ids[self.rng.randrange(len(self.pop.package_ids))]}"
            if not (self.granted.get(obj, set()) & set(self.subjects[u])):
                return u, obj, "read"


def time_enforcer(
    enforce: Callable[..., bool],
    make: Callable[[], Request],
    expect: bool,
    *,
    budget_s: float,
    limit: int,
) -> tuple[list[int], list[int]]:
    """enforce() on fresh requests for ``budget_s`` (``limit`` at most, 5 at least); wall and
    thread-CPU ns."""
    ns: list[int] = []
    cpu: list[int] = []
    spent = 0.0
    while (spent < budget_s and len(ns) < limit) or len(ns) < 5:
        req = make()
        c0 = time.thread_time_ns()
        t0 = pc()
        ok = enforce(*req)
        t1 = pc()
        cpu.append(time.thread_time_ns() - c0)
        assert ok is expect, (req, ok)
        ns.append(t1 - t0)
        spent += (t1 - t0) / 1e9
    return ns, cpu


def measure_baseline(
    pop: Population,
    principals: dict[str, Principal],
    work: Path,
    *,
    sizes: list[int],
    budget_s: float,
    fast_requests: int,
    rng: random.Random,
) -> dict[str, Any]:
    """c): plain Enforcer and FastEnforcer, one policy line per release grant."""
    model_path = work / "baseline_model.conf"
    model_path.write_text(BASELINE_MODEL)
    policy = BaselinePolicy(pop, principals, rng)
    results: dict[str, Any] = {
        "model": BASELINE_MODEL,
        "lines_are": "every release row, whatever its status or window",
        "sizes": {},
    }
    for size in sizes:
        size = min(size, len(pop.releases))
        policy_path = work / f"baseline_policy_{size}.csv"
        policy.write(policy_path, pop.releases[:size])
        kinds = (("denied", policy.denied, False), ("allowed", policy.allowed, True))
        entry: dict[str, Any] = {"lines": size}
        gc.collect()
        t0 = time.perf_counter()
        enforcer = casbin.Enforcer(str(model_path), str(policy_path))
        entry["enforcer_load_s"] = round(time.perf_counter() - t0, 2)
        for kind, make, expect in kinds:
            ns, cpu = time_enforcer(
                enforcer.enforce, make, expect, budget_s=budget_s / 2, limit=2000
            )
            entry[f"enforcer_{kind}"] = summary_us(ns)
            entry[f"enforcer_{kind}_thread_cpu"] = summary_us(cpu)
        del enforcer
        gc.collect()
        # FastEnforcer: policy indexed by (obj, act), filtered per request.
        t0 = time.perf_counter()
        fast = casbin.FastEnforcer(str(model_path), str(policy_path), cache_key_order=[1, 2])
        entry["fast_enforcer_load_s"] = round(time.perf_counter() - t0, 2)
        for kind, make, expect in kinds:
            limit = fast_requests // 2
            ns, _ = time_enforcer(fast.enforce, make, expect, budget_s=math.inf, limit=limit)
            entry[f"fast_enforcer_{kind}"] = summary_us(ns)
        del fast
        policy_path.unlink()
        gc.collect()
        results["sizes"][str(size)] = entry
        print(
            f"  baseline at {size:>7,} lines: load {entry['enforcer_load_s']} s, "
            f"denied median {entry['enforcer_denied']['median_us'] / 1000:.1f} ms "
            f"(n={entry['enforcer_denied']['n']}), allowed median "
            f"{entry['enforcer_allowed']['median_us'] / 1000:.1f} ms "
            f"(n={entry['enforcer_allowed']['n']}); FastEnforcer "
            f"{entry['fast_enforcer_denied']['median_us']:.1f} / "
            f"{entry['fast_enforcer_allowed']['median_us']:.1f} us",
            flush=True,
        )
    return results


# --- profiling ------------------------------------------------------------------------------------


def profile(fn: Callable[[], None], name: str, top: int = 25) -> list[str]:
    """cProfile ``fn`` into bench/out/profile_authz_<name>.pstats; the top lines as text."""
    with profiled(OUT_DIR / f"profile_authz_{name}.pstats") as prof:
        fn()
    assert prof is not None
    return profile_lines(prof, top)


def profile_full_decision(
    vault: Vault, principals: dict[str, Principal], reqs: list[Req]
) -> list[str]:
    def run() -> None:
        with session_scope(vault.engine) as session:
            for q in reqs:
                package = session.get(Package, q.package_id)
                facts = reference_facts(vault, session, principals[q.username], package, q.action)  # type: ignore[arg-type]
                vault.authz.decide(facts)

    return profile(run, "facts")


def profile_listing(
    vault: Vault, principals: dict[str, Principal], officers: list[str], calls: int
) -> list[str]:
    def run() -> None:
        for i in range(calls):
            vault.list_packages(principals[officers[i % len(officers)]], limit=PAGE)

    return profile(run, "list")


# --- main -----------------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packages", type=int, default=100_000)
    ap.add_argument("--releases", type=int, default=300_000)
    ap.add_argument("--db", default="sqlite", help="sqlite (default) or a postgresql:// URL")
    ap.add_argument("--requests", type=int, default=20_000, help="decision requests (half allowed)")
    ap.add_argument("--list-calls", type=int, default=200)
    ap.add_argument(
        "--baseline-sizes",
        default="10000,100000,300000",
        help="policy lines for the plain Enforcer baseline (capped at --releases)",
    )
    ap.add_argument(
        "--baseline-budget",
        type=float,
        default=60.0,
        help="seconds of plain-Enforcer enforce() calls per size (>= 5 requests of each kind)",
    )
    ap.add_argument("--fast-requests", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=20261127)
    ap.add_argument(
        "--analyze", action="store_true", help="run ANALYZE after loading (SQLite planner stats)"
    )
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--dir", type=Path, default=None, help="parent folder for the throw-away vault")
    ap.add_argument(
        "--keep", action="store_true", help="keep the vault folder (printed) for experiments"
    )
    add_common_arguments(ap, out="authz.json", wait_idle=60.0)
    return parse_arguments(ap, argv, QUICK)


@contextlib.contextmanager
def database(db: str) -> Iterator[str | None]:
    """None for SQLite under the data dir; for a PostgreSQL URL, a fresh schema dropped after."""
    if db == "sqlite":
        yield None
        return
    with pg_schema(db) as (url, _):
        yield url


def build_world(
    vault: Vault, args: argparse.Namespace, rng: random.Random
) -> tuple[dict[str, Principal], Population, dict[str, Any]]:
    """Seed through the service, bulk-insert the population; what was built and how long."""
    t0 = time.perf_counter()
    principals = seed(vault)
    seed_s = time.perf_counter() - t0
    print(
        f"seeded {len(COUNTRIES)} countries, {len(agencies())} agencies, "
        f"{len(principals)} users through the service in {seed_s:.1f} s",
        flush=True,
    )
    t0 = time.perf_counter()
    pop = populate(vault, principals, n_packages=args.packages, n_releases=args.releases, rng=rng)
    if vault.engine.dialect.name == "sqlite":
        raw = vault.engine.raw_connection()  # autocommit (isolation_level None)
        try:
            if args.analyze:
                raw.cursor().execute("ANALYZE")
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
    elif args.analyze:
        with vault.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    pop.seconds["total"] = time.perf_counter() - t0
    # Sanity: the sealed metadata opens the way the service opens it.
    with session_scope(vault.engine) as session:
        sample = session.get(Package, pop.package_ids[0])
        assert sample is not None
        assert internals.open_title(vault, sample).endswith("#0")
    db_file = vault.settings.data_dir / "vault.db"
    print(
        f"populated {args.packages:,} packages + {args.releases:,} releases "
        f"(+{pop.acks:,} acks) in {pop.seconds['total']:.1f} s: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in pop.seconds.items() if k != "total"),
        flush=True,
    )
    return (
        principals,
        pop,
        {
            "packages": args.packages,
            "releases": args.releases,
            "acknowledgements": pop.acks,
            "release_mix": pop.counts,
            "seconds": {k: round(v, 2) for k, v in pop.seconds.items()},
            "seed_seconds": round(seed_s, 2),
            "sqlite_file_mib": round(db_file.stat().st_size / 2**20, 1)
            if db_file.exists()
            else None,
            "analyze": args.analyze,
        },
    )


def measure(vault: Vault, args: argparse.Namespace, work: Path, report: dict[str, Any]) -> None:
    """Build the world, then phases a), b), d) and c) into ``report``."""
    rng = random.Random(args.seed)
    phases = Phases(args.wait_idle, threshold=0.25)
    report["contention"] = phases.record
    principals, pop, report["population"] = build_world(vault, args, rng)
    reqs, info = sample_requests(vault, principals, pop, n=args.requests, rng=rng)
    report["requests"] = info
    print(
        f"sampled {info['requests']:,} requests ({info['allowed']:,} allowed / "
        f"{info['denied']:,} denied, {info['distinct_classes']} distinct attribute classes) "
        f"in {info['seconds']} s",
        flush=True,
    )
    report["timer_overhead_ns"] = timer_overhead_ns()
    with phases.phase("a_pure_decision"):
        report["a_pure_decision"] = measure_pure(vault, reqs)
    with phases.phase("b_full_decision"):
        report["b_full_decision"] = measure_full(vault, principals, reqs)
    officers = [f"{cc.lower()}.customs.officer" for cc in COUNTRIES] + [
        "uz.customs.junior",
        "af.border.junior",
        "kz.supervisor",
    ]
    with phases.phase("d_listing"):
        report["d_listing"] = measure_listing(
            vault, principals, calls=args.list_calls, officers=officers
        )
    decision = report["b_full_decision"]["row_facts_decide"]
    decision_ok = (
        decision["median_us"] <= TARGET_DECISION_MEDIAN_US
        and decision["p99_us"] <= TARGET_DECISION_P99_US
    )
    list_ok = report["d_listing"]["service_list_packages"]["p99_ms"] <= TARGET_LIST_MS
    if not args.no_profile and (not decision_ok or not list_ok):
        report["profile"] = {
            "facts": profile_full_decision(vault, principals, reqs[:2000]),
            "list": profile_listing(vault, principals, officers, 45),
        }
        print("profiled (bench/out/profile_authz_*.pstats)", flush=True)
    del reqs
    sizes = [int(s) for s in args.baseline_sizes.split(",") if s]
    print("c) baseline (plain pycasbin)...", flush=True)
    with phases.phase("c_baseline"):
        report["c_baseline"] = measure_baseline(
            pop,
            principals,
            work,
            sizes=sizes,
            budget_s=args.baseline_budget,
            fast_requests=args.fast_requests,
            rng=rng,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    args = parse(argv)
    with workdir("bench-authz-", args.dir, keep=args.keep) as work:
        report: dict[str, Any] = {
            "benchmark": "authz",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command_line("bench.bench_authz", argv),
            "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "targets": {
                "decision_median_us": TARGET_DECISION_MEDIAN_US,
                "decision_p99_us": TARGET_DECISION_P99_US,
                "first_page_ms": TARGET_LIST_MS,
            },
            "machine": machine_info(work),
            "source_sha256": source_fingerprint(*MEASURED),
        }
        print(machine_line(report["machine"]), flush=True)
        with database(args.db) as url:
            vault = open_vault(work / "vault-data", database_url=url)
            try:
                measure(vault, args, work, report)
            finally:
                vault.close()
    report["verdict"] = verdict(report)
    print_report(report)
    write_json(args.out, report)
    return 0


def verdict(r: dict[str, Any]) -> dict[str, Any]:
    a, b, d = r["a_pure_decision"]["decide"], r["b_full_decision"], r["d_listing"]

    def ok_dec(s: dict[str, float]) -> bool:
        return s["median_us"] <= TARGET_DECISION_MEDIAN_US and s["p99_us"] <= TARGET_DECISION_P99_US

    return {
        "pure_decision_meets_target": ok_dec(a),
        "facts_decide_in_open_session_meets_target": ok_dec(b["facts_decide"]),
        "row_facts_decide_in_open_session_meets_target": ok_dec(b["row_facts_decide"]),
        "per_request_transaction_meets_target": ok_dec(b["per_request_transaction"]),
        "list_packages_median_meets_target": d["service_list_packages"]["median_ms"]
        <= TARGET_LIST_MS,
        "list_packages_p99_meets_target": d["service_list_packages"]["p99_ms"] <= TARGET_LIST_MS,
        "list_without_ledger_p99_meets_target": d["without_ledger"]["p99_ms"] <= TARGET_LIST_MS,
    }


def _us(label: str, s: dict[str, float]) -> tuple[str, str, str]:
    return label, f"{s['median_us']:.1f}", f"{s['p99_us']:.1f}"


def _ms_as_us(label: str, s: dict[str, float]) -> tuple[str, str, str]:
    return label, f"{s['median_ms'] * 1000:.1f}", f"{s['p99_ms'] * 1000:.1f}"


def decision_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows of a) and b), in microseconds."""
    a, b = r["a_pure_decision"], r["b_full_decision"]
    classes = a["memo_entries"]
    return [
        _us("a) Authorizer.decide(facts), memo warm", a["decide"]),
        _us("   ... allowed requests", a["decide_allowed"]),
        _us("   ... denied requests", a["decide_denied"]),
        _us("   Authorizer.allows(facts), memo warm", a["allows"]),
        _us(f"   memo miss (first call per class, {classes} classes)", a["memo_miss_first_call"]),
        _us("b) session.get(Package) + reference_facts + decide", b["row_facts_decide"]),
        _us("   ... allowed requests", b["row_facts_decide_allowed"]),
        _us("   ... denied requests", b["row_facts_decide_denied"]),
        _us("   ... same, thread CPU time", b["row_facts_decide_thread_cpu"]),
        _us(
            "   the service's one query (package_facts) + decide",
            b["service_one_query_facts_decide"],
        ),
        _us("   reference_facts + decide (package row already loaded)", b["facts_decide"]),
        _us("   piece: session.get(Package)", b["pieces"]["session_get_package"]),
        _us("   piece: reference_facts", b["pieces"]["vault_facts"]),
        _us(
            "   piece: reference_facts, caller is originator", b["pieces"]["vault_facts_originator"]
        ),
        _us("   piece: reference_facts, not originator", b["pieces"]["vault_facts_not_originator"]),
        _us("   piece: reference_facts, H3 package", b["pieces"]["vault_facts_h3"]),
        _us("   per request in its own write transaction", b["per_request_transaction"]),
        _us(
            "   per request in its own read-only transaction", b["per_request_readonly_transaction"]
        ),
        _us("   empty write transaction alone", b["empty_transaction"]),
        _us("   empty read-only transaction alone", b["empty_readonly_transaction"]),
    ]


def baseline_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows of c), in microseconds."""
    rows = []
    for size, e in r.get("c_baseline", {}).get("sizes", {}).items():
        lines = f"{int(size):>7,} lines"
        rows += [
            _us(
                f"c) plain Enforcer, {lines}, denied (n={e['enforcer_denied']['n']})",
                e["enforcer_denied"],
            ),
            _us(
                f"   plain Enforcer, {lines}, allowed (n={e['enforcer_allowed']['n']})",
                e["enforcer_allowed"],
            ),
            (
                "   ... thread CPU time, denied / allowed (medians)",
                f"{e['enforcer_denied_thread_cpu']['median_us']:.1f}",
                f"{e['enforcer_allowed_thread_cpu']['median_us']:.1f}",
            ),
            _us(f"   FastEnforcer,   {lines}, denied", e["fast_enforcer_denied"]),
            _us(f"   FastEnforcer,   {lines}, allowed", e["fast_enforcer_allowed"]),
            (
                "   load s: Enforcer / FastEnforcer",
                str(e["enforcer_load_s"]),
                str(e["fast_enforcer_load_s"]),
            ),
        ]
    return rows


def listing_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows of d), in microseconds."""
    d = r["d_listing"]
    rows = [
        _ms_as_us(
            f"d) Vault.list_packages, all officers (n={d['calls']})", d["service_list_packages"]
        ),
        _ms_as_us("   without the ledger part (replica, no ledger entry)", d["without_ledger"]),
    ]
    rows += [_ms_as_us(f"   piece: {k}", s) for k, s in d["replica_pieces"].items()]
    rows.append(_ms_as_us("   SQL alone on the DBAPI cursor (rows fetched)", d["sql_only"]))
    return rows


def print_report(r: dict[str, Any]) -> None:
    """The tables: decisions, baseline, listing, per officer; then the verdict."""
    print("\n" + machine_line(r["machine"]))
    print(
        f"pycasbin {r['machine'].get('pycasbin')}; {r['population']['packages']:,} packages, "
        f"{r['population']['releases']:,} releases; timer overhead "
        f"{r['timer_overhead_ns']:.0f} ns; engine pool {r['b_full_decision']['engine_pool']}"
    )
    print(
        "contention (other processes' CPU, in cores, during each phase): "
        + ", ".join(f"{k} {v['others_cores']}" for k, v in r.get("contention", {}).items())
    )
    print()
    print_table(("decision (us)", "median", "p99"), decision_rows(r) + baseline_rows(r))
    print()
    print_table(("first page of 50 (us)", "median", "p99"), listing_rows(r))
    print(f"   (replica SQL == service SQL: {r['d_listing'].get('replica_sql_matches_service')})")
    print()
    print_table(
        ("per officer (ms)", "cl.", "readable", "service", "no-ledger", "ORM q", "SQL"),
        [
            (
                name,
                o["clearance"][:4],
                f"{o['readable_total']:,}",
                f"{o['service_list_packages']['median_ms']:.2f}",
                f"{o['without_ledger']['median_ms']:.2f}",
                f"{o['orm_query']['median_ms']:.2f}",
                f"{o['sql_only']['median_ms']:.2f}",
            )
            for name, o in r["d_listing"]["per_officer"].items()
        ],
    )
    print("\nverdict: " + ", ".join(f"{k}={v}" for k, v in r["verdict"].items()))


if __name__ == "__main__":
    sys.exit(main())
