"""Authorization benchmark: decisions and "packages I may read" at scale, against plain pycasbin.

Run::

    python -m bench.bench_authz [--packages 100000] [--releases 300000] [--db sqlite|URL]
                                [--requests 20000] [--list-calls 200] [--dir PATH] [--keep]

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
                    also without the package load, and per request in its own transaction
                    (``Vault._tx``: connection, PRAGMAs, BEGIN IMMEDIATE, ..., COMMIT)
c) baseline         a plain ``casbin.Enforcer`` with a classic RBAC-with-resources model, one
                    policy line per release grant (``p, country:KZ, pkg:<id>, read`` or
                    ``p, agency:KZ-BORDER, pkg:<id>, read``) and ``g, user, country:KZ`` /
                    ``g, user, agency:KZ-BORDER`` per user; per-enforce time on allowed and on
                    denied requests at several sizes (a denied request scans every line, so at
                    300k lines only a handful of requests fit the time budget); and the same
                    with ``casbin.FastEnforcer(cache_key_order=[1, 2])`` (index on obj, act)
d) listing          first page (50) of ``Vault.list_packages`` for officers of each country, as
                    the service runs it, and a replica of it timed piece by piece: checkout +
                    BEGIN, getting the statement (built once per caller class), the query, the
                    SQL alone (same
                    statement and parameters on the raw DBAPI cursor), the ledger entry (through
                    ``Vault._log``'s group commit, or ``_append`` + the fsync'd COMMIT, whichever
                    the service does: detected from its source), decrypting the 50 titles; plus
                    the page without the ledger part. The replica's SQL is compared with what
                    list_packages sends; EXPLAIN QUERY PLAN of the listing query is recorded.

The requests of a) and b) are 20,000 random (user, package, action) triples, half allowed and
half denied (classified in an untimed pre-pass that also warms the memo and the page cache),
each package used once so SQLAlchemy's identity map never answers instead of the database.
When a target is missed, b) and d) are profiled with cProfile (pstats saved in bench/out/).

Results: a table on stdout and JSON in ``bench/out/authz.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import hashlib
import inspect
import io
import json
import math
import os
import platform
import pstats
import random
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import casbin
from sqlalchemy import create_engine, event, func, insert, text
from sqlalchemy import select as sa_select
from sqlalchemy.engine import make_url
from sqlmodel import col

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
from vault.config import load_settings
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
from vault.service import (
    ALLOW,
    Principal,
    Vault,
    _package_identity,
    listing_params,
    local_operator,
    package_facts,
)

pc = time.perf_counter_ns

# The targets.
TARGET_DECISION_MEDIAN_US = 50.0
TARGET_DECISION_P99_US = 500.0
TARGET_LIST_MS = 20.0
PAGE = 50

# Cheap, still argon2id, password hashing (as the tests use): seeding is not what we measure.
FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}
PASSWORD = "bench password, not a secret"  # throw-away vault
OUT_DIR = Path(__file__).resolve().parent / "out"
OUT_DEFAULT = OUT_DIR / "authz.json"

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


def _hex_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def _cum(weights: Sequence[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
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
    keyring = vault.keys.keyring
    now = utcnow()
    agency_country = agencies()
    by_country_agencies: dict[str, list[str]] = defaultdict(list)
    for a, cc in agency_country.items():
        by_country_agencies[cc].append(a)
    creator_of = {
        a: principals[f"{a.lower().replace('-', '.')}.officer"].user_id for a in agency_country
    }
    countries = list(COUNTRIES)
    origin_cum = _cum([COUNTRIES[c][1] for c in countries])
    cls_vals, cls_cum = [c for c, _ in CLASSIFICATION_MIX], _cum([w for _, w in CLASSIFICATION_MIX])
    hnd_vals, hnd_cum = [h for h, _ in HANDLING_MIX], _cum([w for _, w in HANDLING_MIX])
    rel_vals, rel_cum = [r for r, _ in RELEASE_MIX], _cum([w for _, w in RELEASE_MIX])

    pop = Population(package_ids=[], package_agency=[], package_handling=[], releases=[])
    package_created: list[datetime] = []

    # Packages: the same calls Vault.upload makes for the package record.
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for i in range(n_packages):
        pid = _hex_id(rng)
        cc = rng.choices(countries, cum_weights=origin_cum)[0]
        agency = rng.choice(by_country_agencies[cc])
        classification = rng.choices(cls_vals, cum_weights=cls_cum)[0]
        handling = rng.choices(hnd_vals, cum_weights=hnd_cum)[0]
        created = now - timedelta(seconds=rng.random() * 730 * 86400)
        identity = _package_identity(pid)
        package_key = crypto.new_data_key()
        wrapped = keyring.wrap(package_key, context=identity)
        sealed = crypto.seal_bytes(
            package_key,
            json.dumps(
                {
                    "title": f"{cc} seizure report #{i}",
                    "description": "synthetic package for the authorization benchmark",
                    "handling_note": "",
                    "fields": {},
                    "digest": hashlib.sha256(pid.encode()).hexdigest(),
                }
            ).encode(),
            context=identity,
        )
        rows.append(
            {
                "id": pid,
                "agency_code": agency,
                "creator_id": creator_of[agency],
                "created_at": created,
                "size": 1 + rng.getrandbits(20),
                "file_count": 1,
                "classification": classification,
                "handling": handling,
                "kek_id": wrapped.kek_id,
                "wrapped_key": wrapped.blob,
                "sealed_meta": sealed,
            }
        )
        pop.package_ids.append(pid)
        pop.package_agency.append(agency)
        pop.package_handling.append(handling.value)
        package_created.append(created)
    pop.seconds["packages_generate_and_seal"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with vault.engine.begin() as conn:
        for start in range(0, len(rows), chunk):
            conn.execute(insert(Package.__table__), rows[start : start + chunk])
    pop.seconds["packages_insert"] = time.perf_counter() - t0
    del rows

    # Releases.
    t0 = time.perf_counter()
    rows = []
    acks: set[tuple[str, str]] = set()
    recipient_officers: dict[str, list[str]] = {
        a: [principals[f"{a.lower().replace('-', '.')}.{k}"].user_id for k in ("officer", "junior")]
        for a in agency_country
    }
    recv_weights = {c: COUNTRIES[c][2] for c in countries}
    target_lists = {
        origin: (
            [c for c in countries if c != origin],
            _cum([recv_weights[c] for c in countries if c != origin]),
        )
        for origin in countries
    }
    status_counts: dict[str, int] = defaultdict(int)
    for _ in range(n_releases):
        p = rng.randrange(n_packages)
        pid = pop.package_ids[p]
        origin_agency = pop.package_agency[p]
        origin = agency_country[origin_agency]
        targets, tcum = target_lists[origin]
        cc = rng.choices(targets, cum_weights=tcum)[0]
        agency = (
            rng.choice(by_country_agencies[cc]) if rng.random() < AGENCY_SPECIFIC_SHARE else None
        )
        label = rng.choices(rel_vals, cum_weights=rel_cum)[0]
        status_counts[label] += 1
        requester = creator_of[origin_agency]
        created = package_created[p] + (now - package_created[p]) * rng.random() * 0.5
        row: dict[str, Any] = {
            "id": _hex_id(rng),
            "package_id": pid,
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
                status=ReleaseStatus.REVOKED,
                revoked_by=requester,
                revoked_at=now - timedelta(days=1),
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
        in_force = label in ("active", "active-until")
        rows.append(row)
        pop.releases.append((p, cc, agency, in_force))
        if in_force and pop.package_handling[p] == "H3" and rng.random() < ACK_SHARE:
            who = agency or rng.choice(by_country_agencies[cc])
            acks.add((pid, rng.choice(recipient_officers[who])))
    pop.seconds["releases_generate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with vault.engine.begin() as conn:
        for start in range(0, len(rows), chunk):
            conn.execute(insert(Release.__table__), rows[start : start + chunk])
        ack_rows = [{"package_id": p, "user_id": u, "created_at": now} for p, u in sorted(acks)]
        for start in range(0, len(ack_rows), chunk):
            conn.execute(insert(Acknowledgement.__table__), ack_rows[start : start + chunk])
    pop.seconds["releases_insert"] = time.perf_counter() - t0
    pop.acks = len(ack_rows)
    pop.counts = dict(status_counts)
    pop.counts["in_force"] = sum(1 for r in pop.releases if r[3])
    pop.counts["agency_specific"] = sum(1 for r in pop.releases if r[2] is not None)
    return pop


# --- statistics ------------------------------------------------------------------------------


def pct(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    if not sorted_ns:
        return float("nan")
    k = max(0, min(len(sorted_ns) - 1, math.ceil(q / 100 * len(sorted_ns)) - 1))
    return float(sorted_ns[k])


def summary_us(ns: Sequence[int]) -> dict[str, float]:
    """median, p90, p99, mean, min, max in microseconds."""
    s = sorted(ns)
    if not s:
        return {"n": 0}
    return {
        "n": len(s),
        "median_us": round(pct(s, 50) / 1000, 2),
        "p90_us": round(pct(s, 90) / 1000, 2),
        "p99_us": round(pct(s, 99) / 1000, 2),
        "mean_us": round(sum(s) / len(s) / 1000, 2),
        "min_us": round(s[0] / 1000, 2),
        "max_us": round(s[-1] / 1000, 2),
    }


def timer_overhead_ns(n: int = 200_000) -> float:
    """Median cost of one empty ``t0 = pc(); t1 = pc()`` pair."""
    out = []
    for _ in range(n):
        t0 = pc()
        t1 = pc()
        out.append(t1 - t0)
    out.sort()
    return pct(out, 50)


# --- requests --------------------------------------------------------------------------------


@dataclass
class Req:
    username: str
    package_id: str
    action: str
    allowed: bool
    facts: Facts


def sample_requests(
    vault: Vault,
    principals: dict[str, Principal],
    pop: Population,
    *,
    n: int,
    rng: random.Random,
) -> tuple[list[Req], dict[str, Any]]:
    """n requests, half allowed and half denied, each package used once (untimed pre-pass)."""
    agency_country = agencies()
    own: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(pop.package_agency):
        own[a].append(i)
    to_agency: dict[str, list[int]] = defaultdict(list)
    to_country: dict[str, list[int]] = defaultdict(list)
    for p, cc, agency, _ in pop.releases:
        if agency is None:
            to_country[cc].append(p)
        else:
            to_agency[agency].append(p)
    candidates = [u for u, (_, role, _) in users().items() if role != Role.ADMIN]
    want = n // 2
    allowed: list[Req] = []
    denied: list[Req] = []
    used: set[int] = set()
    tried = 0
    t0 = time.perf_counter()
    session_cm = session_scope(vault.engine)
    session = session_cm.__enter__()
    try:
        while len(allowed) < want or len(denied) < n - want:
            tried += 1
            if tried > 50 * n:
                raise RuntimeError("could not sample enough allowed/denied requests")
            username = rng.choice(candidates)
            principal = principals[username]
            r = rng.random()
            if r < 0.40:
                p = rng.randrange(len(pop.package_ids))
            elif r < 0.75:
                pool = (
                    to_agency[principal.agency]
                    if rng.random() < 0.4
                    else to_country[principal.country]
                )
                p = rng.choice(pool)
            else:
                p = rng.choice(own[principal.agency])
            if p in used:
                continue
            role = principal.role
            acts, weights = (
                AUDITOR_ACTIONS
                if role == Role.AUDITOR
                else SUPERVISOR_ACTIONS
                if role == Role.SUPERVISOR
                else OFFICER_ACTIONS
            )
            action = rng.choices(acts, weights=weights)[0]
            package = session.get(Package, pop.package_ids[p])
            assert package is not None
            facts = reference_facts(vault, session, principal, package, action)
            ok = vault.authz.decide(facts).allowed
            bucket, limit = (allowed, want) if ok else (denied, n - want)
            if len(bucket) >= limit:
                continue
            used.add(p)
            bucket.append(Req(username, package.id, action, ok, facts))
            if (len(allowed) + len(denied)) % 2000 == 0:
                session_cm.__exit__(None, None, None)
                session_cm = session_scope(vault.engine)
                session = session_cm.__enter__()
    finally:
        session_cm.__exit__(None, None, None)
    reqs = allowed + denied
    rng.shuffle(reqs)
    relations: dict[str, int] = defaultdict(int)
    for q in reqs:
        for rel in q.facts.relations:
            relations[rel] += 1
    info = {
        "requests": len(reqs),
        "allowed": len(allowed),
        "denied": len(denied),
        "candidates_tried": tried,
        "seconds": round(time.perf_counter() - t0, 2),
        "relations_holding": dict(relations),
        "distinct_classes": len(
            {
                (
                    q.facts.role,
                    q.facts.relations,
                    q.facts.cleared,
                    q.facts.handling,
                    q.facts.acknowledged,
                    q.facts.action,
                )
                for q in reqs
            }
        ),
        "actions": dict(
            sorted(
                defaultdict(
                    int,
                    {a: sum(1 for q in reqs if q.action == a) for a in {q.action for q in reqs}},
                ).items()
            )
        ),
    }
    _ = agency_country
    return reqs, info


# --- a) pure decision --------------------------------------------------------------------------


def measure_pure(vault: Vault, reqs: list[Req]) -> dict[str, Any]:
    authz = vault.authz
    facts = [q.facts for q in reqs]
    # Cold: a fresh Authorizer (same policy), first sight of each class goes to pycasbin.
    fresh = Authorizer(policy_dir=vault.settings.resolved_policy_dir, extra_rules=authz.extra_rules)
    cold, warm_first = [], []
    for f in facts:
        before = len(fresh._memo)
        t0 = pc()
        fresh.decide(f)
        t1 = pc()
        (cold if len(fresh._memo) != before else warm_first).append(t1 - t0)
    gc.collect()
    decide_ns, allows_ns = [], []
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
        "memo_entries": len(fresh._memo),
        "mismatches": mismatches,
    }


# --- b) full decision ----------------------------------------------------------------------------


def service_path_facts(
    vault: Vault, session: Any, principal: Principal, package_id: str, action: str
) -> Facts:
    """Facts as the service derives them (``vault.service.package_facts``, one query)."""
    found = package_facts(session, principal, package_id, action)
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
    for _, agency in vault._grants_in_force(session, principal, package.id):
        relations.add(RELEASED_COUNTRY if agency is None else RELEASED_AGENCY)
    if (
        ORIGINATOR not in relations
        and vault._country_of(session, package.agency_code) == principal.country
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


def measure_full(
    vault: Vault,
    principals: dict[str, Principal],
    reqs: list[Req],
    *,
    per_session: int = 500,
    request_subset: int = 5000,
) -> dict[str, Any]:
    authz = vault.authz
    tt = time.thread_time_ns
    with_row, facts_only, pieces_get, pieces_facts, pieces_decide = [], [], [], [], []
    one_query: list[int] = []
    with_row_cpu: list[int] = []
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
                with_row_cpu.append(tt() - c0)
                with_row.append(t3 - t0)
                facts_only.append(t3 - t1)
                pieces_get.append(t1 - t0)
                pieces_facts.append(t2 - t1)
                pieces_decide.append(t3 - t2)
                if decision.allowed != q.allowed or facts != q.facts:
                    mismatches += 1
                # The service's own path (Vault._load_package_for): one prebuilt query for the
                # package, its originator's country and the release/acknowledgement flags.
                t4 = pc()
                fast = service_path_facts(vault, session, principal, q.package_id, q.action)
                fast_allowed = authz.decide(fast).allowed
                one_query.append(pc() - t4)
                if fast_allowed != q.allowed or fast != q.facts:
                    mismatches += 1
    # The whole request's transaction, as Vault._load_package_for runs it (without the ledger
    # refusal a denied request would then append).
    per_request: list[int] = []
    per_request_ro: list[int] = []
    gc.collect()
    for i, q in enumerate(reqs[:request_subset]):
        principal = principals[q.username]
        readonly = bool(i % 2)
        t0 = pc()
        with vault._tx(readonly=readonly) as session:
            package = session.get(Package, q.package_id)
            facts = reference_facts(vault, session, principal, package, q.action)  # type: ignore[arg-type]
            ok = vault.authz.allows(facts)
        t1 = pc()
        (per_request_ro if readonly else per_request).append(t1 - t0)
        if ok != q.allowed:
            mismatches += 1
    # An empty transaction: what checkout (or connect) + BEGIN [IMMEDIATE] + COMMIT cost alone.
    empty_tx: list[int] = []
    empty_tx_ro: list[int] = []
    for i in range(min(4000, request_subset)):
        readonly = bool(i % 2)
        t0 = pc()
        with vault._tx(readonly=readonly) as session:
            session.connection()
        t1 = pc()
        (empty_tx_ro if readonly else empty_tx).append(t1 - t0)
    allowed_idx = [i for i, q in enumerate(reqs) if q.allowed]
    denied_idx = [i for i, q in enumerate(reqs) if not q.allowed]
    originator = [i for i, q in enumerate(reqs) if "originator" in q.facts.relations]
    non_orig = [i for i, q in enumerate(reqs) if "originator" not in q.facts.relations]
    h3 = [i for i, q in enumerate(reqs) if q.facts.handling == "H3"]
    return {
        "service_one_query_facts_decide": summary_us(one_query),
        "row_facts_decide": summary_us(with_row),
        "row_facts_decide_allowed": summary_us([with_row[i] for i in allowed_idx]),
        "row_facts_decide_denied": summary_us([with_row[i] for i in denied_idx]),
        "row_facts_decide_thread_cpu": summary_us(with_row_cpu),
        "facts_decide": summary_us(facts_only),
        "pieces": {
            "session_get_package": summary_us(pieces_get),
            "vault_facts": summary_us(pieces_facts),
            "decide": summary_us(pieces_decide),
            "vault_facts_originator": summary_us([pieces_facts[i] for i in originator]),
            "vault_facts_not_originator": summary_us([pieces_facts[i] for i in non_orig]),
            "vault_facts_h3": summary_us([pieces_facts[i] for i in h3]),
        },
        "per_request_transaction": summary_us(per_request),
        "per_request_readonly_transaction": summary_us(per_request_ro),
        "empty_transaction": summary_us(empty_tx),
        "empty_readonly_transaction": summary_us(empty_tx_ro),
        "engine_pool": type(vault.engine.pool).__name__,
        "mismatches": mismatches,
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


def listing_query(vault: Vault, principal: Principal) -> Any:
    """The statement Vault.list_packages runs (checked against the service's SQL at run time);
    its parameters are ``listing_params``."""
    return vault._listing_statement(principal)


class TxClock:
    """Timestamps of the engine's COMMIT (before the DBAPI commit) and DBAPI close (before it),
    to split the replica's ``commit_release`` piece when a NullPool engine closes connections.

    With the vault's NullPool, the connection is closed as soon as the session's transaction
    ends, so ``commit -> close`` is the DBAPI commit (the WAL fsync with synchronous=FULL) and
    ``close -> end`` is sqlite3's close (the last connection to a WAL database checkpoints and
    removes the WAL on close). With a pooled engine there is no close: ``commit -> end`` is the
    DBAPI commit plus returning the connection to the pool.
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


def list_mode() -> str:
    """How Vault.list_packages records the listing (the service changed while this was written):

    group-commit  a read-only transaction; the ledger entry goes through ``Vault._log`` (a writer
                  thread appends queued entries in one transaction, one fsync'd COMMIT, and the
                  caller waits for it)
    in-tx         a write transaction; ``Vault._append`` inside it, committed (fsync) with it
    """
    src = inspect.getsource(Vault.list_packages)
    return "group-commit" if "self._log(" in src else "in-tx"


def list_replica(
    vault: Vault,
    principal: Principal,
    *,
    ledger: bool = True,
    clock: TxClock | None = None,
    mode: str = "group-commit",
) -> dict[str, int]:
    """Vault.list_packages, step for step, with each step timed (ns)."""
    c0 = time.thread_time_ns()
    t0 = pc()
    vault._require_global(principal, "list")
    with vault._tx(readonly=mode == "group-commit") as session:
        session.connection()  # the service connects lazily at its first query; same work
        t1 = pc()
        query = listing_query(vault, principal)
        t2 = pc()
        found = (
            session.connection()
            .execute(query, listing_params(principal, limit=PAGE, offset=0))
            .all()
        )
        t3 = pc()
        if ledger:
            fields = {
                "actor": principal.actor,
                "action": "list",
                "decision": ALLOW,
                "reason": "ok",
                "subject": f"count:{len(found)}",
            }
            if mode == "group-commit":
                vault._log(**fields)  # type: ignore[attr-defined]
            else:
                vault._append(session, **fields)
        t4 = pc()
    t5 = pc()
    items = [vault._summary(row, row.country_code) for row in found]
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


def measure_listing(
    vault: Vault,
    principals: dict[str, Principal],
    *,
    calls: int,
    officers: list[str],
) -> dict[str, Any]:
    engine = vault.engine
    sqlite = engine.dialect.name == "sqlite"
    per_officer: dict[str, dict[str, Any]] = {}
    # Untimed: capture each officer's SQL, its plan, and how many packages they may read at all.
    captured: dict[str, tuple[str, Any]] = {}
    with StatementCapture(engine) as cap, session_scope(engine) as session:
        for name in officers:
            cap.on = True
            rows = session.execute(
                listing_query(vault, principals[name]),
                listing_params(principals[name], limit=PAGE, offset=0),
            ).all()
            cap.on = False
            assert cap.last is not None
            captured[name] = cap.last
            readable = session.execute(
                sa_select(func.count())
                .select_from(Package)
                .join(Agency, col(Agency.code) == Package.agency_code)
                .where(col(Package.purged_at).is_(None), vault._readable_clause(principals[name])),
                listing_params(principals[name], limit=PAGE, offset=0),
            ).scalar_one()
            per_officer[name] = {"first_page_rows": len(rows), "readable_total": int(readable)}
    # The replica must be the service's statement: compare with what list_packages sends.
    seen: list[str] = []

    def grab(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT PACKAGE."):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", grab)
    try:
        vault.list_packages(principals[officers[0]], limit=PAGE)
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    replica_matches = bool(seen) and seen[0] == captured[officers[0]][0]
    if not replica_matches:
        print(
            "  WARNING: the replica's listing SQL differs from Vault.list_packages' SQL "
            "(the service changed?); the piece-by-piece figures may not apply",
            flush=True,
        )
    plans: dict[str, list[str]] = {}
    if sqlite:
        raw = _dbapi_connection(engine)
        try:
            for name, (sql, params) in captured.items():
                plan = raw.cursor().execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
                plans[name] = [f"{r[0]}|{r[1]}|{r[3]}" for r in plan]
        finally:
            raw.close()
    else:
        raw = _dbapi_connection(engine)
        try:
            name = officers[0]
            sql, params = captured[name]
            cur = raw.cursor()
            cur.execute("EXPLAIN " + sql, params)
            plans[name] = [r[0] for r in cur.fetchall()]
            raw.rollback()
        finally:
            raw.close()

    order = [officers[i % len(officers)] for i in range(calls)]
    # 1. The service call itself.
    gc.collect()
    service_ns: dict[str, list[int]] = defaultdict(list)
    for name in order:
        t0 = pc()
        page = vault.list_packages(principals[name], limit=PAGE)
        t1 = pc()
        service_ns[name].append(t1 - t0)
        assert len(page.items) == per_officer[name]["first_page_rows"]
    # 2. The replica, timed piece by piece.
    gc.collect()
    pieces: dict[str, list[int]] = defaultdict(list)
    pieces_by_officer: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    mode = list_mode()
    with TxClock(engine) as clock:
        replicas = [
            (name, list_replica(vault, principals[name], clock=clock, mode=mode)) for name in order
        ]
    for name, r in replicas:
        for k, v in r.items():
            if k != "rows":
                pieces[k].append(v)
                pieces_by_officer[name][k].append(v)
    # 3. Without the ledger part (no append; the COMMIT then has nothing to write).
    gc.collect()
    no_ledger: list[int] = []
    no_ledger_by: dict[str, list[int]] = defaultdict(list)
    for name in order:
        r = list_replica(vault, principals[name], ledger=False, mode=mode)
        no_ledger.append(r["total"])
        no_ledger_by[name].append(r["total"])
    # 4. The SQL alone: the captured statement on the raw DBAPI connection, rows fetched.
    gc.collect()
    sql_ns: list[int] = []
    sql_by: dict[str, list[int]] = defaultdict(list)
    raw = _dbapi_connection(engine)
    try:
        for name in order:
            sql, params = captured[name]
            cur = raw.cursor()
            t0 = pc()
            cur.execute(sql, params)
            rows = cur.fetchall()
            t1 = pc()
            cur.close()
            sql_ns.append(t1 - t0)
            sql_by[name].append(t1 - t0)
            assert len(rows) == per_officer[name]["first_page_rows"]
        if not sqlite:
            raw.rollback()
    finally:
        raw.close()
    all_service = [t for v in service_ns.values() for t in v]
    for name in officers:
        per_officer[name].update(
            {
                "service_list_packages": summary_ms(service_ns[name]),
                "sql_only": summary_ms(sql_by[name]),
                "orm_query": summary_ms(pieces_by_officer[name]["orm_query"]),
                "without_ledger": summary_ms(no_ledger_by[name]),
                "clearance": principals[name].clearance.value,
                "country": principals[name].country,
                "agency": principals[name].agency,
                "role": principals[name].role.value,
            }
        )
    return {
        "calls": calls,
        "officers": officers,
        "service_list_packages": summary_ms(all_service),
        "replica_pieces": {k: summary_ms(v) for k, v in pieces.items()},
        "without_ledger": summary_ms(no_ledger),
        "sql_only": summary_ms(sql_ns),
        "per_officer": per_officer,
        "query_plans": plans,
        "replica_sql_matches_service": replica_matches,
        "ledger_mode": mode,
        "sql_example": captured[officers[0]][0],
    }


def summary_ms(ns: Sequence[int]) -> dict[str, float]:
    s = sorted(ns)
    if not s:
        return {"n": 0}
    return {
        "n": len(s),
        "median_ms": round(pct(s, 50) / 1e6, 3),
        "p90_ms": round(pct(s, 90) / 1e6, 3),
        "p99_ms": round(pct(s, 99) / 1e6, 3),
        "mean_ms": round(sum(s) / len(s) / 1e6, 3),
        "max_ms": round(s[-1] / 1e6, 3),
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
    """Plain Enforcer and FastEnforcer, one policy line per release grant."""
    model_path = work / "baseline_model.conf"
    model_path.write_text(BASELINE_MODEL)
    officers = [u for u, (_, role, _) in users().items() if role in (Role.OFFICER, Role.SUPERVISOR)]
    g_lines = []
    for u in officers:
        g_lines.append(f"g, {u}, country:{principals[u].country}")
        g_lines.append(f"g, {u}, agency:{principals[u].agency}")
    subject_users: dict[str, list[str]] = defaultdict(list)
    for u in officers:
        subject_users[f"country:{principals[u].country}"].append(u)
        subject_users[f"agency:{principals[u].agency}"].append(u)
    user_subjects = {
        u: {f"country:{principals[u].country}", f"agency:{principals[u].agency}"} for u in officers
    }
    results: dict[str, Any] = {
        "model": BASELINE_MODEL,
        "lines_are": "every release row, whatever its status or window",
        "sizes": {},
    }
    for size in sizes:
        size = min(size, len(pop.releases))
        lines = pop.releases[:size]
        policy_path = work / f"baseline_policy_{size}.csv"
        granted: dict[str, set[str]] = defaultdict(set)  # obj -> subjects
        with policy_path.open("w") as f:
            for p, cc, agency, _ in lines:
                sub = f"agency:{agency}" if agency else f"country:{cc}"
                obj = f"pkg:{pop.package_ids[p]}"
                f.write(f"p, {sub}, {obj}, read\n")
                granted[obj].add(sub)
            f.write("\n".join(g_lines) + "\n")

        def allowed_req(
            lines: list[tuple[int, str, str | None, bool]] = lines, size: int = size
        ) -> tuple[str, str, str]:
            p, cc, agency, _ = lines[rng.randrange(size)]
            sub = f"agency:{agency}" if agency else f"country:{cc}"
            return rng.choice(subject_users[sub]), f"pkg:{pop.package_ids[p]}", "read"

        def denied_req(granted: dict[str, set[str]] = granted) -> tuple[str, str, str]:
            while True:
                u = rng.choice(officers)
                obj = f"pkg:{pop.package_ids[rng.randrange(len(pop.package_ids))]}"
                if not (granted.get(obj, set()) & user_subjects[u]):
                    return u, obj, "read"

        entry: dict[str, Any] = {"lines": size}
        # Plain Enforcer.
        gc.collect()
        t0 = time.perf_counter()
        enforcer = casbin.Enforcer(str(model_path), str(policy_path))
        entry["enforcer_load_s"] = round(time.perf_counter() - t0, 2)
        for kind, make, expect in (("denied", denied_req, False), ("allowed", allowed_req, True)):
            ns: list[int] = []
            spent = 0.0
            cpu: list[int] = []
            while (spent < budget_s / 2 and len(ns) < 2000) or len(ns) < 5:
                req = make()
                c0 = time.thread_time_ns()
                t0 = pc()
                ok = enforcer.enforce(*req)
                t1 = pc()
                cpu.append(time.thread_time_ns() - c0)
                assert ok is expect, (req, ok)
                ns.append(t1 - t0)
                spent += (t1 - t0) / 1e9
            entry[f"enforcer_{kind}"] = summary_us(ns)
            entry[f"enforcer_{kind}_thread_cpu"] = summary_us(cpu)
        del enforcer
        gc.collect()
        # FastEnforcer: policy indexed by (obj, act), filtered per request.
        t0 = time.perf_counter()
        fast = casbin.FastEnforcer(str(model_path), str(policy_path), cache_key_order=[1, 2])
        entry["fast_enforcer_load_s"] = round(time.perf_counter() - t0, 2)
        for kind, make, expect in (("denied", denied_req, False), ("allowed", allowed_req, True)):
            reqs = [make() for _ in range(fast_requests // 2)]
            ns = []
            for req in reqs:
                t0 = pc()
                ok = fast.enforce(*req)
                t1 = pc()
                assert ok is expect, (req, ok)
                ns.append(t1 - t0)
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
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"profile_authz_{name}.pstats"
    prof.dump_stats(str(path))
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    st.sort_stats("tottime").print_stats(top)
    out.write("\n--- by cumulative time ---\n")
    st.sort_stats("cumulative").print_stats(top)
    return [line for line in out.getvalue().splitlines() if line.strip()]


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


# --- contention (other engineers share this machine) ----------------------------------------------

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
    """This process's CPU seconds, and the CPU (in cores) everything else used, over a span."""

    def __enter__(self) -> CpuMeter:
        self._t = time.perf_counter()
        self._busy, self._self = _busy_jiffies(), _self_jiffies()
        self._times = os.times()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t
        t = os.times()
        self.cpu_s = (t.user - self._times.user) + (t.system - self._times.system)
        others = (_busy_jiffies() - self._busy) - (_self_jiffies() - self._self)
        self.others_cores = max(0.0, others / _HZ / self.wall_s) if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 2),
            "others_cores": round(self.others_cores, 2),
        }


WAIT_IDLE_S = 60.0


def wait_idle(max_wait: float | None = None, threshold: float = 0.25) -> float:
    """Wait (at most ``max_wait`` s) for a 1 s window where others use < ``threshold`` cores."""
    deadline = time.monotonic() + (WAIT_IDLE_S if max_wait is None else max_wait)
    while True:
        with CpuMeter() as meter:
            time.sleep(1.0)
        if meter.others_cores < threshold or time.monotonic() >= deadline:
            return round(meter.others_cores, 2)


@contextlib.contextmanager
def phase(report: dict[str, Any], name: str) -> Iterator[None]:
    """Wait for a quiet machine, then record wall/CPU/others' CPU for the phase."""
    before = wait_idle() if WAIT_IDLE_S > 0 else None
    gc.collect()
    with CpuMeter() as meter:
        yield
    report.setdefault("contention", {})[name] = {"others_cores_before": before, **meter.as_dict()}
    print(
        f"  [{name}: {meter.wall_s:.1f} s wall, {meter.cpu_s:.1f} s CPU, others used "
        f"{meter.others_cores:.2f} cores (before: {before})]",
        flush=True,
    )


# --- machine ------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _filesystem(path: Path) -> dict[str, str]:
    best: dict[str, str] = {}
    target = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype, opts, *_ = line.split()
            inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best.get("mount", "")):
                best = {"device": dev, "mount": mnt, "type": fstype, "options": opts}
    return best


def machine_info(data_dir: Path) -> dict[str, Any]:
    import sqlalchemy

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "filesystem": _filesystem(data_dir),
    }
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["pycasbin"] = version("pycasbin")
        info["sqlmodel"] = version("sqlmodel")
    return info


def source_fingerprints() -> dict[str, str]:
    """SHA-256 (first 16 hex) of the files measured: the code changes under concurrent edits."""
    root = Path(__file__).resolve().parent.parent
    out = {}
    for rel in (
        "vault/service.py",
        "vault/authz.py",
        "vault/db.py",
        "vault/models.py",
        "vault/ledger/log.py",
        "policies/model.conf",
        "policies/policy.csv",
    ):
        with contextlib.suppress(OSError):
            out[rel] = hashlib.sha256((root / rel).read_bytes()).hexdigest()[:16]
    return out


# --- database -------------------------------------------------------------------------------------


@contextlib.contextmanager
def database(db: str, work: Path) -> Iterator[str | None]:
    """None for SQLite under the data dir; for a PostgreSQL URL, a fresh schema dropped after."""
    if db == "sqlite":
        yield None
        return
    url = make_url(db)
    if url.get_backend_name() != "postgresql":
        raise SystemExit("--db is 'sqlite' or a postgresql:// URL")
    schema = "bench_" + secrets.token_hex(6)
    admin = create_engine(db.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in db else "?"
    try:
        yield f"{db}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


# --- main -----------------------------------------------------------------------------------------


def _fmt_us(s: dict[str, float]) -> str:
    return f"{s['median_us']:>10.1f} {s['p99_us']:>10.1f}"


def _fmt_ms(s: dict[str, float]) -> str:
    return f"{s['median_ms'] * 1000:>10.1f} {s['p99_ms'] * 1000:>10.1f}"


def main(argv: list[str] | None = None) -> int:
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
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="before each phase, wait up to this long for a quiet machine (0: don't)",
    )
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = ap.parse_args(argv)
    global WAIT_IDLE_S
    WAIT_IDLE_S = args.wait_idle

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-authz-", dir=args.dir))
    report: dict[str, Any] = {
        "benchmark": "authz",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.bench_authz "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": {
            "decision_median_us": TARGET_DECISION_MEDIAN_US,
            "decision_p99_us": TARGET_DECISION_P99_US,
            "first_page_ms": TARGET_LIST_MS,
        },
        "machine": machine_info(work),
        "source_sha256": source_fingerprints(),
    }
    print(
        f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"Python {report['machine']['python']}, SQLite {report['machine']['sqlite']}, "
        f"pycasbin {report['machine'].get('pycasbin')}"
    )
    try:
        with database(args.db, work) as url:
            settings = load_settings(data_dir=work / "vault-data", database_url=url, **FAST_ARGON2)
            vault = Vault.open(settings)
            try:
                t0 = time.perf_counter()
                principals = seed(vault)
                seed_s = time.perf_counter() - t0
                print(
                    f"seeded {len(COUNTRIES)} countries, {len(agencies())} agencies, "
                    f"{len(principals)} users through the service in {seed_s:.1f} s",
                    flush=True,
                )
                t0 = time.perf_counter()
                pop = populate(
                    vault, principals, n_packages=args.packages, n_releases=args.releases, rng=rng
                )
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
                    assert vault._open_meta(sample)["title"].endswith("#0")
                db_file = settings.data_dir / "vault.db"
                report["population"] = {
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
                }
                print(
                    f"populated {args.packages:,} packages + {args.releases:,} releases "
                    f"(+{pop.acks:,} acks) in {pop.seconds['total']:.1f} s: "
                    + ", ".join(f"{k} {v:.1f} s" for k, v in pop.seconds.items() if k != "total"),
                    flush=True,
                )

                reqs, info = sample_requests(vault, principals, pop, n=args.requests, rng=rng)
                report["requests"] = info
                print(
                    f"sampled {info['requests']:,} requests ({info['allowed']:,} allowed / "
                    f"{info['denied']:,} denied, {info['distinct_classes']} distinct attribute classes) "  # noqa: E501
                    f"in {info['seconds']} s",
                    flush=True,
                )
                report["timer_overhead_ns"] = timer_overhead_ns()

                with phase(report, "a_pure_decision"):
                    report["a_pure_decision"] = measure_pure(vault, reqs)
                print("a) pure decision measured", flush=True)
                with phase(report, "b_full_decision"):
                    report["b_full_decision"] = measure_full(vault, principals, reqs)
                print("b) full decision measured", flush=True)

                officers = [f"{cc.lower()}.customs.officer" for cc in COUNTRIES] + [
                    "uz.customs.junior",
                    "af.border.junior",
                    "kz.supervisor",
                ]
                with phase(report, "d_listing"):
                    report["d_listing"] = measure_listing(
                        vault, principals, calls=args.list_calls, officers=officers
                    )
                print("d) listing measured", flush=True)

                decision_ok = (
                    report["b_full_decision"]["row_facts_decide"]["median_us"]
                    <= TARGET_DECISION_MEDIAN_US
                    and report["b_full_decision"]["row_facts_decide"]["p99_us"]
                    <= TARGET_DECISION_P99_US
                )
                list_ok = report["d_listing"]["service_list_packages"]["p99_ms"] <= TARGET_LIST_MS
                if not args.no_profile and (not decision_ok or not list_ok):
                    report["profile"] = {
                        "facts": profile_full_decision(vault, principals, reqs[:2000]),
                        "list": profile_listing(vault, principals, officers, 45),
                    }
                    print("profiled (bench/out/profile_authz_*.pstats)", flush=True)
                del reqs
                gc.collect()

                sizes = [int(s) for s in args.baseline_sizes.split(",") if s]
                print("c) baseline (plain pycasbin)...", flush=True)
                with phase(report, "c_baseline"):
                    report["c_baseline"] = measure_baseline(
                        pop,
                        principals,
                        work,
                        sizes=sizes,
                        budget_s=args.baseline_budget,
                        fast_requests=args.fast_requests,
                        rng=rng,
                    )
            finally:
                vault.close()
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    report["verdict"] = verdict(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    print(f"\nwrote {args.out}")
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


def print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"\n{m['cpu']} ({m['cores']} cores), Python {m['python']}, SQLite {m['sqlite']}, "
        f"pycasbin {m.get('pycasbin')}; {r['population']['packages']:,} packages, "
        f"{r['population']['releases']:,} releases; timer overhead {r['timer_overhead_ns']:.0f} ns; "  # noqa: E501
        f"engine pool {r['b_full_decision']['engine_pool']}"
    )
    print(
        "contention (other processes' CPU, in cores, during each phase): "
        + ", ".join(f"{k} {v['others_cores']}" for k, v in r.get("contention", {}).items())
    )
    print(f"\n{'decision (us)':<66} {'median':>10} {'p99':>10}")
    a, b = r["a_pure_decision"], r["b_full_decision"]
    rows = [
        ("a) Authorizer.decide(facts), memo warm", a["decide"]),
        ("   ... allowed requests", a["decide_allowed"]),
        ("   ... denied requests", a["decide_denied"]),
        ("   Authorizer.allows(facts), memo warm", a["allows"]),
        (
            f"   memo miss (first call per class, {a['memo_entries']} classes)",
            a["memo_miss_first_call"],
        ),
        ("b) session.get(Package) + reference_facts + decide", b["row_facts_decide"]),
        ("   ... allowed requests", b["row_facts_decide_allowed"]),
        ("   ... denied requests", b["row_facts_decide_denied"]),
        (
            "   ... same, thread CPU time (immune to being descheduled)",
            b["row_facts_decide_thread_cpu"],
        ),
        ("   reference_facts + decide (package row already loaded)", b["facts_decide"]),
        ("   piece: session.get(Package)", b["pieces"]["session_get_package"]),
        ("   piece: reference_facts", b["pieces"]["vault_facts"]),
        ("   piece: reference_facts, caller is originator", b["pieces"]["vault_facts_originator"]),
        (
            "   piece: reference_facts, caller not originator",
            b["pieces"]["vault_facts_not_originator"],
        ),
        ("   piece: reference_facts, H3 package", b["pieces"]["vault_facts_h3"]),
        (
            "   per request in its own Vault._tx() (BEGIN IMMEDIATE ... COMMIT)",
            b["per_request_transaction"],
        ),
        (
            "   per request in its own Vault._tx(readonly=True) (BEGIN ... COMMIT)",
            b["per_request_readonly_transaction"],
        ),
        ("   empty Vault._tx() alone", b["empty_transaction"]),
        ("   empty Vault._tx(readonly=True) alone", b["empty_readonly_transaction"]),
    ]
    for label, s in rows:
        print(f"{label:<66} {_fmt_us(s)}")
    c = r.get("c_baseline", {}).get("sizes", {})
    for size, e in c.items():
        print(
            f"c) plain Enforcer, {int(size):>7,} lines, denied (n={e['enforcer_denied']['n']})".ljust(  # noqa: E501
                66
            )
            + f" {_fmt_us(e['enforcer_denied'])}"
        )
        print(
            f"   plain Enforcer, {int(size):>7,} lines, allowed (n={e['enforcer_allowed']['n']})".ljust(  # noqa: E501
                66
            )
            + f" {_fmt_us(e['enforcer_allowed'])}"
        )
        print(
            "   ... thread CPU time, denied / allowed (medians)".ljust(66)
            + f" {e['enforcer_denied_thread_cpu']['median_us']:>10.1f} "
            f"{e['enforcer_allowed_thread_cpu']['median_us']:>10.1f}"
        )
        print(
            f"   FastEnforcer,   {int(size):>7,} lines, denied".ljust(66)
            + f" {_fmt_us(e['fast_enforcer_denied'])}"
        )
        print(
            f"   FastEnforcer,   {int(size):>7,} lines, allowed".ljust(66)
            + f" {_fmt_us(e['fast_enforcer_allowed'])}"
        )
        print(
            f"   (load: Enforcer {e['enforcer_load_s']} s, FastEnforcer {e['fast_enforcer_load_s']} s)"  # noqa: E501
        )
    d = r["d_listing"]
    print(f"\n{'first page of 50 (us)':<66} {'median':>10} {'p99':>10}")
    print(
        f"{'d) Vault.list_packages, all officers (n=' + str(d['calls']) + ')':<66} {_fmt_ms(d['service_list_packages'])}"  # noqa: E501
    )
    print(
        f"{'   without the ledger part (replica, no ledger entry)':<66} {_fmt_ms(d['without_ledger'])}"  # noqa: E501
    )
    print(
        f"   (ledger entry written by: {d.get('ledger_mode')}; replica SQL == service SQL: "
        f"{d.get('replica_sql_matches_service')})"
    )
    for k, s in d["replica_pieces"].items():
        print(f"{'   piece: ' + k:<66} {_fmt_ms(s)}")
    print(
        f"{'   SQL alone on the DBAPI cursor (same statement, rows fetched)':<66} {_fmt_ms(d['sql_only'])}"  # noqa: E501
    )
    print(
        f"\n{'per officer (ms)':<24} {'cl.':>4} {'readable':>9} {'service':>9} {'no-ledger':>10} {'ORM q':>8} {'SQL':>8}"  # noqa: E501
    )
    for name, o in d["per_officer"].items():
        print(
            f"{name:<24} {o['clearance'][:4]:>4} {o['readable_total']:>9,} "
            f"{o['service_list_packages']['median_ms']:>9.2f} {o['without_ledger']['median_ms']:>10.2f} "  # noqa: E501
            f"{o['orm_query']['median_ms']:>8.2f} {o['sql_only']['median_ms']:>8.2f}"
        )
    print("\nverdict: " + ", ".join(f"{k}={v}" for k, v in r["verdict"].items()))


if __name__ == "__main__":
    raise SystemExit(main())
