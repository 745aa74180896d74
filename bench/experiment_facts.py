"""Experiment: what would bring a per-request access decision and the first page near the targets?

Standalone: it does not change vault/. It builds the same world as ``bench.bench_authz`` (its
seed/populate/sample_requests), then times alternative ways of computing the same facts and the
same page, each checked against the service's own result before it is timed.

Run::

    python -m bench.experiment_facts [--packages 100000] [--releases 300000] [--requests 10000]

Decision variants (package row + facts + ``Authorizer.decide``; each inside an open session whose
transaction has already begun, so only the lookups are timed; every variant's facts are compared
with ``reference_facts`` for every request):

    service          session.get(Package) + reference_facts + decide (what the service did then:
                     the release query and the originator-country query are built as SQLAlchemy
                     expressions on every call, then ORM-executed; H3 adds
                     session.get(Acknowledgement))
    origin-cache     the same, but the originator's country from an in-process agency->country dict
                     (agencies never change country; a miss falls back to the query)
    prebuilt-orm     statements built once with bindparam() (no per-call expression building),
                     still ORM-executed, plus the origin cache
    one-orm-query    ONE prebuilt ORM statement per request: the Package entity, its originator
                     country and three EXISTS flags (release to my agency in force, release to my
                     country in force, my H3 acknowledgement)
    one-core-query   the same statement as Core columns on session.connection() (no ORM entity)
    one-raw-sql      the same SQL on the DBAPI cursor (sqlite3) with pre-formatted parameters:
                     the floor for doing it in Python at all

Transaction variants (what one request pays around the lookups, no work inside): the
service's write and read-only transactions on its engine as it is now, and, for reference, the
same hooks on a NullPool engine (a new connection + PRAGMAs per request, as vault/db.py had it
when this benchmark was started).

Listing variants (query only, in an open transaction, first page of 50 for several officers):

    service          what Vault.list_packages runs now: the cached-core variant below, adopted
                     (its statement built once per role, clearance and policy; Core-executed)
    cached-orm       the statement built once per (role, clearance, agency, country, policy) with
                     bindparam("now"), ORM-executed
    cached-core      the same statement as Core columns (no entity hydration)
    raw-sql          the captured statement on the DBAPI cursor (floor)

plus a listing's ledger entry (append + COMMIT) with ``synchronous=FULL`` (what the vault uses)
vs ``NORMAL``, to show what the fsync of every listing's ledger entry costs on this disk.

Results: a table on stdout, JSON in ``bench/out/experiment_facts.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, create_engine, event, exists, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from bench.bench_authz import (
    COUNTRIES,
    FAST_ARGON2,
    PAGE,
    CpuMeter,
    Req,
    StatementCapture,
    listing_query,
    machine_info,
    populate,
    reference_facts,
    sample_requests,
    seed,
    summary_ms,
    summary_us,
    wait_idle,
)
from vault.authz import NONE, ORIGINATOR, RELEASED_AGENCY, RELEASED_COUNTRY, SAME_COUNTRY, Facts
from vault.config import load_settings
from vault.db import session_scope
from vault.models import (
    Acknowledgement,
    Agency,
    Classification,
    Handling,
    Package,
    Release,
    ReleaseStatus,
    utcnow,
)
from vault.service import ALLOW, Principal, Vault, listing_params

pc = time.perf_counter_ns
tt = time.thread_time_ns
OUT = Path(__file__).resolve().parent / "out" / "experiment_facts.json"
RANK = {c.value: c.rank for c in Classification}


# --- decision variants -----------------------------------------------------------------------


def _active(now: Any) -> Any:
    return and_(
        Release.status == ReleaseStatus.ACTIVE,
        or_(col(Release.not_before).is_(None), col(Release.not_before) <= now),
        or_(col(Release.expires_at).is_(None), col(Release.expires_at) > now),
    )


# Built once: only parameters change per request.
REL_STMT = select(Release.agency_code).where(
    Release.package_id == bindparam("pid"),
    _active(bindparam("now")),
    or_(
        Release.agency_code == bindparam("agency"),
        and_(Release.country_code == bindparam("country"), col(Release.agency_code).is_(None)),
    ),
)
ORIGIN_STMT = select(Agency.country_code).where(Agency.code == bindparam("agency"))

_REL_AGENCY = exists().where(
    Release.package_id == Package.id,
    Release.agency_code == bindparam("agency"),
    _active(bindparam("now")),
)
_REL_COUNTRY = exists().where(
    Release.package_id == Package.id,
    Release.country_code == bindparam("country"),
    col(Release.agency_code).is_(None),
    _active(bindparam("now")),
)
_ACK = exists().where(
    Acknowledgement.package_id == Package.id, Acknowledgement.user_id == bindparam("uid")
)
ONE_ORM_STMT = (
    select(
        Package,
        Agency.country_code,
        _REL_AGENCY.label("ra"),
        _REL_COUNTRY.label("rc"),
        _ACK.label("ak"),
    )
    .join(Agency, col(Agency.code) == Package.agency_code)
    .where(Package.id == bindparam("pid"))
)
_pt = Package.__table__.c  # type: ignore[attr-defined]
ONE_CORE_STMT = (
    sa_select(
        _pt.id,
        _pt.agency_code,
        _pt.classification,
        _pt.handling,
        Agency.country_code,
        _REL_AGENCY.label("ra"),
        _REL_COUNTRY.label("rc"),
        _ACK.label("ak"),
    )
    .join_from(Package.__table__, Agency.__table__, Agency.__table__.c.code == _pt.agency_code)  # type: ignore[attr-defined]
    .where(_pt.id == bindparam("pid"))
)
ONE_RAW_SQL = """
SELECT p.agency_code, p.classification, p.handling, a.country_code,
  EXISTS (SELECT 1 FROM release r WHERE r.package_id = p.id AND r.agency_code = :agency
          AND r.status = 'ACTIVE' AND (r.not_before IS NULL OR r.not_before <= :now)
          AND (r.expires_at IS NULL OR r.expires_at > :now)),
  EXISTS (SELECT 1 FROM release r WHERE r.package_id = p.id AND r.country_code = :country
          AND r.agency_code IS NULL AND r.status = 'ACTIVE'
          AND (r.not_before IS NULL OR r.not_before <= :now)
          AND (r.expires_at IS NULL OR r.expires_at > :now)),
  EXISTS (SELECT 1 FROM acknowledgement k WHERE k.package_id = p.id AND k.user_id = :uid)
FROM package p JOIN agency a ON a.code = p.agency_code
WHERE p.id = :pid
"""


def _sqlite_time(moment: datetime) -> str:
    """How SQLAlchemy's SQLite DateTime stores an aware UTC datetime (checked at start-up)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _facts_from(
    p: Principal,
    action: str,
    *,
    agency: str,
    origin_country: str,
    classification: str,
    handling: str,
    rel_agency: bool,
    rel_country: bool,
    ack: bool,
) -> Facts:
    relations = {NONE}
    if agency == p.agency:
        relations.add(ORIGINATOR)
    if rel_agency:
        relations.add(RELEASED_AGENCY)
    if rel_country:
        relations.add(RELEASED_COUNTRY)
    if ORIGINATOR not in relations and origin_country == p.country:
        relations.add(SAME_COUNTRY)
    return Facts(
        role=p.role.value,
        relations=frozenset(relations),
        cleared=p.clearance.rank >= RANK[classification],
        handling=handling,
        acknowledged=bool(ack) and handling == "H3" and bool(p.user_id),
        action=action,
    )


class Variants:
    """Each variant: (session, principal, package_id, action) -> Facts (then decided)."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.origin: dict[str, str] = {}

    def _origin(self, session: Session, agency: str) -> str:
        country = self.origin.get(agency)
        if country is None:
            country = session.exec(ORIGIN_STMT, params={"agency": agency}).one()
            self.origin[agency] = country
        return country

    def service(self, session: Session, p: Principal, pid: str, action: str) -> Facts:
        package = session.get(Package, pid)
        return reference_facts(self.vault, session, p, package, action)  # type: ignore[arg-type]

    def origin_cache(self, session: Session, p: Principal, pid: str, action: str) -> Facts:
        package = session.get(Package, pid)
        assert package is not None
        acknowledged = False
        if package.handling == Handling.H3 and p.user_id:
            acknowledged = session.get(Acknowledgement, (package.id, p.user_id)) is not None
        hits = session.exec(
            select(Release.agency_code).where(
                Release.package_id == package.id,
                _active(utcnow()),
                or_(
                    Release.agency_code == p.agency,
                    and_(Release.country_code == p.country, col(Release.agency_code).is_(None)),
                ),
            )
        ).all()
        return _facts_from(
            p,
            action,
            agency=package.agency_code,
            origin_country=self._origin(session, package.agency_code),
            classification=package.classification.value,
            handling=package.handling.value,
            rel_agency=any(h is not None for h in hits),
            rel_country=any(h is None for h in hits),
            ack=acknowledged,
        )

    def prebuilt_orm(self, session: Session, p: Principal, pid: str, action: str) -> Facts:
        package = session.get(Package, pid)
        assert package is not None
        acknowledged = False
        if package.handling == Handling.H3 and p.user_id:
            acknowledged = session.get(Acknowledgement, (package.id, p.user_id)) is not None
        hits = session.exec(
            REL_STMT,
            params={"pid": package.id, "now": utcnow(), "agency": p.agency, "country": p.country},
        ).all()
        return _facts_from(
            p,
            action,
            agency=package.agency_code,
            origin_country=self._origin(session, package.agency_code),
            classification=package.classification.value,
            handling=package.handling.value,
            rel_agency=any(h is not None for h in hits),
            rel_country=any(h is None for h in hits),
            ack=acknowledged,
        )

    def one_orm_query(self, session: Session, p: Principal, pid: str, action: str) -> Facts:
        package, country, ra, rc, ak = session.execute(
            ONE_ORM_STMT,
            {
                "pid": pid,
                "now": utcnow(),
                "agency": p.agency,
                "country": p.country,
                "uid": p.user_id,
            },
        ).one()
        return _facts_from(
            p,
            action,
            agency=package.agency_code,
            origin_country=country,
            classification=package.classification.value,
            handling=package.handling.value,
            rel_agency=ra,
            rel_country=rc,
            ack=ak,
        )

    def one_core_query(self, session: Session, p: Principal, pid: str, action: str) -> Facts:
        _id, agency, classification, handling, country, ra, rc, ak = (
            session.connection()
            .execute(
                ONE_CORE_STMT,
                {
                    "pid": pid,
                    "now": utcnow(),
                    "agency": p.agency,
                    "country": p.country,
                    "uid": p.user_id,
                },
            )
            .one()
        )
        return _facts_from(
            p,
            action,
            agency=agency,
            origin_country=country,
            classification=classification.value,
            handling=handling.value,
            rel_agency=ra,
            rel_country=rc,
            ack=ak,
        )

    def one_raw_sql(self, session: Session, p: Principal, pid: str, action: str) -> Facts:
        cur = session.connection().connection.driver_connection.execute(  # type: ignore[union-attr]
            ONE_RAW_SQL,
            {
                "pid": pid,
                "now": _sqlite_time(utcnow()),
                "agency": p.agency,
                "country": p.country,
                "uid": p.user_id,
            },
        )
        agency, classification, handling, country, ra, rc, ak = cur.fetchone()
        return _facts_from(
            p,
            action,
            agency=agency,
            origin_country=country,
            classification=classification,
            handling=handling,
            rel_agency=ra,
            rel_country=rc,
            ack=ak,
        )


def measure_decisions(
    vault: Vault,
    principals: dict[str, Principal],
    reqs: list[Req],
    *,
    chunk: int = 500,
) -> dict[str, Any]:
    v = Variants(vault)
    variants: dict[str, Callable[[Session, Principal, str, str], Facts]] = {
        "service": v.service,
        "origin-cache": v.origin_cache,
        "prebuilt-orm": v.prebuilt_orm,
        "one-orm-query": v.one_orm_query,
        "one-core-query": v.one_core_query,
    }
    if vault.engine.dialect.name == "sqlite":
        variants["one-raw-sql"] = v.one_raw_sql
    authz = vault.authz
    # Correctness first: every variant gives the service's facts for every request.
    for name, fn in variants.items():
        with session_scope(vault.engine) as session:
            bad = [
                q
                for q in reqs
                if fn(session, principals[q.username], q.package_id, q.action) != q.facts
            ]
        if bad:
            raise AssertionError(f"{name}: {len(bad)} requests give other facts than the service")
    wall: dict[str, list[int]] = defaultdict(list)
    cpu: dict[str, list[int]] = defaultdict(list)
    names = list(variants)
    gc.collect()
    for i, start in enumerate(range(0, len(reqs), chunk)):
        batch = reqs[start : start + chunk]
        rot = names[i % len(names) :] + names[: i % len(names)]  # rotate order: fair under drift
        for name in rot:
            fn = variants[name]
            with session_scope(vault.engine) as session:
                session.connection()
                for q in batch:
                    p = principals[q.username]
                    c0 = tt()
                    t0 = pc()
                    facts = fn(session, p, q.package_id, q.action)
                    authz.decide(facts)
                    t1 = pc()
                    cpu[name].append(tt() - c0)
                    wall[name].append(t1 - t0)
    return {
        name: {"wall": summary_us(wall[name]), "thread_cpu": summary_us(cpu[name])}
        for name in names
    }


# --- transaction variants --------------------------------------------------------------------


def _engine_like_vault(url: str, *, poolclass: Any = None) -> Any:
    """An engine with the vault's SQLite connection hooks (vault.db), optionally another pool."""
    from vault.db import READ_ONLY

    kwargs: dict[str, Any] = {"poolclass": poolclass} if poolclass is not None else {}
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA recursive_triggers=ON",
            "PRAGMA busy_timeout=30000",
            "PRAGMA secure_delete=ON",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


def measure_transactions(vault: Vault, n: int) -> dict[str, Any]:
    """Empty request transactions, each variant run alone.

    nullpool-*: the vault's engine as it was before the pool (a connection per request). The
    last connection to a WAL database checkpoints and deletes the WAL when it closes, so the
    vault's own pool is emptied first (dispose) to reproduce that situation.
    """
    from sqlalchemy.pool import NullPool

    url = vault.settings.resolved_database_url
    out: dict[str, Any] = {}

    def run(name: str, fn: Callable[[], None]) -> None:
        fn()
        ns = []
        for _ in range(n):
            t0 = pc()
            fn()
            ns.append(pc() - t0)
        out[name] = summary_us(ns)

    def tx(readonly: bool) -> Callable[[], None]:
        def go() -> None:
            with vault._tx(readonly=readonly) as session:
                session.connection()

        return go

    run(f"service write tx ({type(vault.engine.pool).__name__}, BEGIN IMMEDIATE)", tx(False))
    run(f"service read-only tx ({type(vault.engine.pool).__name__}, BEGIN)", tx(True))
    vault.engine.dispose()
    nullpool = _engine_like_vault(url, poolclass=NullPool)
    for readonly in (False, True):

        def go(readonly: bool = readonly) -> None:
            with session_scope(nullpool, readonly=readonly) as session:
                session.connection()

        run(f"NullPool {'read-only' if readonly else 'write'} tx (connect + PRAGMAs each time)", go)
    nullpool.dispose()
    return out


# --- listing variants -----------------------------------------------------------------------


class ListingCache:
    """The listing statement built once per caller class, with ``now`` as a parameter."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.orm: dict[tuple[str, ...], Any] = {}
        self.core: dict[tuple[str, ...], Any] = {}

    def _key(self, p: Principal) -> tuple[str, ...]:
        return (p.role.value, p.clearance.value, p.agency, p.country, self.vault.authz.policy_hash)

    def _where(self, p: Principal) -> Any:
        # Vault._readable_clause with the time as a bind parameter: build it with a sentinel
        # time, then swap the sentinel's binds for bindparam("now").
        from sqlalchemy.sql import visitors

        sentinel = datetime(1970, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        import vault.service as service_module

        real = service_module.utcnow
        service_module.utcnow = lambda: sentinel  # type: ignore[assignment]
        try:
            clause = self.vault._readable_clause(p)
        finally:
            service_module.utcnow = real  # type: ignore[assignment]

        def swap(element: Any) -> Any:
            if getattr(element, "__visit_name__", "") == "bindparam" and element.value == sentinel:
                return bindparam("now", type_=element.type)
            return None

        return visitors.replacement_traverse(clause, {}, swap)

    def orm_stmt(self, p: Principal) -> Any:
        key = self._key(p)
        stmt = self.orm.get(key)
        if stmt is None:
            stmt = (
                select(Package, Agency.country_code)
                .join(Agency, col(Agency.code) == Package.agency_code)
                .where(col(Package.purged_at).is_(None), self._where(p))
                .order_by(col(Package.created_at).desc(), col(Package.id))
                .offset(bindparam("offset"))
                .limit(bindparam("limit"))
            )
            self.orm[key] = stmt
        return stmt

    def core_stmt(self, p: Principal) -> Any:
        key = self._key(p)
        stmt = self.core.get(key)
        if stmt is None:
            t = Package.__table__.c  # type: ignore[attr-defined]
            stmt = (
                sa_select(
                    t.id,
                    t.agency_code,
                    t.created_at,
                    t.size,
                    t.file_count,
                    t.classification,
                    t.handling,
                    t.kek_id,
                    t.wrapped_key,
                    t.sealed_meta,
                    Agency.country_code,
                )
                .join_from(
                    Package.__table__, Agency.__table__, Agency.__table__.c.code == t.agency_code
                )  # type: ignore[attr-defined]
                .where(t.purged_at.is_(None), self._where(p))
                .order_by(t.created_at.desc(), t.id)
                .offset(bindparam("offset"))
                .limit(bindparam("limit"))
            )
            self.core[key] = stmt
        return stmt


def measure_listing(
    vault: Vault, principals: dict[str, Principal], officers: list[str], calls: int
) -> dict[str, Any]:
    cache = ListingCache(vault)
    engine = vault.engine
    captured: dict[str, tuple[str, Any]] = {}
    # Correctness: the same ids in the same order as the service's statement.
    with StatementCapture(engine) as cap, session_scope(engine) as session:
        for name in officers:
            p = principals[name]
            now = utcnow()
            import vault.service as service_module

            real = service_module.utcnow
            service_module.utcnow = lambda now=now: now  # type: ignore[assignment,misc]
            try:
                cap.on = True
                want = [
                    row.id
                    for row in session.execute(
                        listing_query(vault, p), listing_params(p, limit=PAGE, offset=0)
                    ).all()
                ]
                cap.on = False
            finally:
                service_module.utcnow = real  # type: ignore[assignment]
            assert cap.last is not None
            captured[name] = cap.last
            params = listing_params(p, limit=PAGE, offset=0) | {"now": now}
            got_orm = [pk.id for pk, _ in session.execute(cache.orm_stmt(p), params).all()]
            got_core = [
                r[0] for r in session.connection().execute(cache.core_stmt(p), params).all()
            ]
            if not (want == got_orm == got_core):
                raise AssertionError(f"listing variants disagree for {name}")
    out: dict[str, list[int]] = defaultdict(list)
    order = [officers[i % len(officers)] for i in range(calls)]
    gc.collect()
    with session_scope(engine) as session:
        raw = session.connection().connection.driver_connection
        for name in order:
            p = principals[name]
            # Each ORM variant starts from an empty identity map, as a fresh request's session does.
            t0 = pc()
            session.connection().execute(
                listing_query(vault, p), listing_params(p, limit=PAGE, offset=0)
            ).all()
            t1 = pc()
            session.expunge_all()
            t2 = pc()
            session.execute(cache.orm_stmt(p), listing_params(p, limit=PAGE, offset=0)).all()
            t3 = pc()
            session.expunge_all()
            t4 = pc()
            session.connection().execute(
                cache.core_stmt(p), listing_params(p, limit=PAGE, offset=0)
            ).all()
            t5 = pc()
            sql, params = captured[name]
            raw.execute(sql, params).fetchall()  # type: ignore[union-attr]
            t6 = pc()
            out["service"].append(t1 - t0)
            out["cached-orm"].append(t3 - t2)
            out["cached-core"].append(t5 - t4)
            out["raw-sql"].append(t6 - t5)
    return {k: summary_ms(v) for k, v in out.items()}


def measure_ledger_commit(vault: Vault, principal: Principal, n: int) -> dict[str, Any]:
    """A listing's ledger entry in its own write transaction: append, COMMIT, release.

    service             the vault's engine (synchronous=FULL: COMMIT fsyncs the WAL)
    synchronous=NORMAL  the same hooks with synchronous=NORMAL (no fsync at COMMIT in WAL mode;
                        durable against a process crash, not against power loss)
    """
    url = vault.settings.resolved_database_url
    out: dict[str, Any] = {}

    def run(name: str, engine: Any) -> None:
        append_ns, commit_ns, close_ns = [], [], []
        for _ in range(n):
            session = Session(engine, expire_on_commit=False)
            session.connection()
            t0 = pc()
            vault._append(
                session,
                actor=principal.actor,
                action="list",
                decision=ALLOW,
                reason="ok",
                subject="count:50",
            )
            t1 = pc()
            session.commit()
            t2 = pc()
            session.close()
            t3 = pc()
            append_ns.append(t1 - t0)
            commit_ns.append(t2 - t1)
            close_ns.append(t3 - t2)
        out[name] = {
            "append": summary_ms(append_ns),
            "commit": summary_ms(commit_ns),
            "close": summary_ms(close_ns),
        }

    run("service (synchronous=FULL)", vault.engine)
    if hasattr(vault, "_log"):  # group commit: one caller at a time waits for its own fsync
        ns = []
        for _ in range(n):
            t0 = pc()
            vault._log(
                actor=principal.actor,
                action="list",
                decision=ALLOW,
                reason="ok",
                subject="count:50",
            )
            ns.append(pc() - t0)
        out["service Vault._log (group commit, one caller)"] = {"total": summary_ms(ns)}
    engine = _engine_like_vault(url)

    @event.listens_for(engine, "connect")
    def _sync(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    run("synchronous=NORMAL", engine)
    engine.dispose()
    return out


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packages", type=int, default=100_000)
    ap.add_argument("--releases", type=int, default=300_000)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--list-calls", type=int, default=180)
    ap.add_argument("--tx", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=20261127)
    ap.add_argument("--wait-idle", type=float, default=60.0)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="exp-facts-", dir=args.dir))
    report: dict[str, Any] = {
        "experiment": "facts",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.experiment_facts " + " ".join(sys_argv(argv)),
        "machine": machine_info(work),
        "contention": {},
    }
    try:
        settings = load_settings(data_dir=work / "vault-data", **FAST_ARGON2)
        vault = Vault.open(settings)
        try:
            principals = seed(vault)
            pop = populate(
                vault, principals, n_packages=args.packages, n_releases=args.releases, rng=rng
            )
            raw = vault.engine.raw_connection()
            try:
                raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
                # The raw-SQL variant formats times itself: check it matches SQLAlchemy's storage.
                stored = (
                    raw.cursor()
                    .execute("SELECT created_at FROM package WHERE id = ?", (pop.package_ids[0],))
                    .fetchone()[0]
                )
            finally:
                raw.close()
            with session_scope(vault.engine) as session:
                pk = session.get(Package, pop.package_ids[0])
                assert pk is not None
                assert _sqlite_time(pk.created_at) == stored, (stored, pk.created_at)
            reqs, info = sample_requests(vault, principals, pop, n=args.requests, rng=rng)
            report["requests"] = info
            print(
                f"world ready: {args.packages:,} packages, {args.releases:,} releases, "
                f"{len(reqs):,} requests",
                flush=True,
            )

            def phase(name: str, fn: Callable[[], Any]) -> Any:
                before = wait_idle(args.wait_idle) if args.wait_idle > 0 else None
                gc.collect()
                with CpuMeter() as m:
                    result = fn()
                report["contention"][name] = {"others_cores_before": before, **m.as_dict()}
                print(
                    f"  [{name}: {m.wall_s:.1f} s, others used {m.others_cores:.2f} cores]",
                    flush=True,
                )
                return result

            report["decisions"] = phase(
                "decisions", lambda: measure_decisions(vault, principals, reqs)
            )
            report["transactions"] = phase(
                "transactions", lambda: measure_transactions(vault, args.tx)
            )
            officers = [f"{cc.lower()}.customs.officer" for cc in COUNTRIES] + [
                "uz.customs.junior",
                "af.border.junior",
                "kz.supervisor",
            ]
            report["listing_query"] = phase(
                "listing", lambda: measure_listing(vault, principals, officers, args.list_calls)
            )
            report["ledger_commit"] = phase(
                "ledger",
                lambda: measure_ledger_commit(vault, principals["uz.customs.officer"], 150),
            )
        finally:
            vault.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    m = report["machine"]
    print(f"\n{m['cpu']} ({m['cores']} cores), Python {m['python']}, SQLite {m['sqlite']}")
    print(
        f"\n{'decision: package row + facts + decide (us)':<46} {'median':>9} {'p99':>9} {'cpu med':>9} {'cpu p99':>9}"  # noqa: E501
    )
    for name, s in report["decisions"].items():
        w, c = s["wall"], s["thread_cpu"]
        print(
            f"{name:<46} {w['median_us']:>9.1f} {w['p99_us']:>9.1f} {c['median_us']:>9.1f} {c['p99_us']:>9.1f}"  # noqa: E501
        )
    print(f"\n{'empty transaction per request (us)':<46} {'median':>9} {'p99':>9}")
    for name, s in report["transactions"].items():
        print(f"{name:<46} {s['median_us']:>9.1f} {s['p99_us']:>9.1f}")
    print(f"\n{'listing query, first page of 50 (ms)':<46} {'median':>9} {'p99':>9}")
    for name, s in report["listing_query"].items():
        print(f"{name:<46} {s['median_ms']:>9.2f} {s['p99_ms']:>9.2f}")
    print(f"\n{'ledger entry of one listing (ms)':<46} {'median':>9} {'p99':>9}")
    for mode, s in report["ledger_commit"].items():
        for part, v in s.items():
            print(f"{mode + ': ' + part:<46} {v['median_ms']:>9.2f} {v['p99_ms']:>9.2f}")
    print(f"\nwrote {args.out}")
    return 0


def sys_argv(argv: list[str] | None) -> list[str]:
    import sys

    return sys.argv[1:] if argv is None else argv


if __name__ == "__main__":
    raise SystemExit(main())
