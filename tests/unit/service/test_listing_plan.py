"""The listing's two plans (release-index driven, and newest-first scan) show exactly what the
decision path lets each caller read: the readable clause stays the one source of truth, the
plan only chooses where the database starts."""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest

from tests.conftest import PASSWORD, World
from vault.errors import AccessDenied, NotFound
from vault.listing import PackageFilter
from vault.models import Classification, Handling, Role, utcnow
from vault.schemas import NewPackage
from vault.service import IncomingFile, Principal, Vault, access, listing_plan, local_operator
from vault.service.access import listing_params

C, H = Classification, Handling


def upload(vault: Vault, who: Principal, cls: Classification, hnd: Handling) -> str:
    meta = NewPackage(title=f"{cls.value} {hnd.value}", classification=cls, handling=hnd)
    files = [IncomingFile(name="a.txt", reader=io.BytesIO(b"x"))]
    return vault.upload(who, meta, files).package.id


def build(world: World) -> dict[str, Principal]:
    """Packages of two countries, released in every way that does and doesn't grant access;
    the callers to list for (the demo world's and a RESTRICTED-cleared officer)."""
    vault, uz, kz = world.vault, world["uz.officer"], world["kz.officer"]
    ids = [upload(vault, uz, cls, hnd) for cls in C for hnd in (H.H0, H.H2, H.H3)]
    theirs = [upload(vault, kz, cls, H.H1) for cls in (C.RESTRICTED, C.SECRET)]
    now = utcnow()
    vault.release(uz, ids[0], country="KZ")
    vault.release(uz, ids[3], country="KZ", agency="KZ-INTERIOR")
    vault.release(uz, ids[5], country="KZ", expires_at=now + timedelta(days=2))
    vault.release(uz, ids[6], country="KZ", not_before=now + timedelta(days=2))
    revoked = vault.release(uz, ids[7], country="KZ", agency="KZ-BORDER")
    vault.revoke_release(uz, ids[7], revoked.release.id)
    vault.release(uz, ids[9], country="TJ")
    vault.release(kz, theirs[0], country="UZ", agency="UZ-BORDER")
    vault.release(kz, theirs[1], country="UZ")
    vault.purge(world["uz.admin"], ids[1])
    vault.add_user(
        local_operator(),
        username="kz.low",
        agency="KZ-BORDER",
        role=Role.OFFICER,
        password=PASSWORD,
        clearance=C.RESTRICTED,
    )
    callers = dict(world.users)
    callers["kz.low"] = vault.authenticate(vault.login("kz.low", PASSWORD).access_token)
    return callers


def readable(vault: Vault, who: Principal) -> set[str]:
    """What the decision path (show a package) lets ``who`` read, over every package."""
    with vault.engine.connect() as connection:
        every = [row[0] for row in connection.exec_driver_sql("SELECT id FROM package")]
    out = set()
    for package_id in every:
        try:
            vault.get_package(who, package_id)
        except (NotFound, AccessDenied):
            continue
        out.add(package_id)
    return out


def by_plan(vault: Vault, who: Principal, filters: PackageFilter | None = None) -> list[list[str]]:
    """The whole listing through each plan that exists for ``who``, run directly."""
    plan = vault.access.listing_plan(who)
    out = []
    for indexed in (False, True) if plan.indexed is not None else (False,):
        statement, narrowing = plan.page(indexed, filters)
        params = listing_params(who, limit=1000, offset=0) | narrowing
        with vault.engine.connect() as connection:
            out.append([row.id for row in connection.execute(statement, params)])
    return out


def listed(vault: Vault, who: Principal, filters: PackageFilter | None = None) -> list[str]:
    """The listing as the service gives it, page by page (pages of 2)."""
    out: list[str] = []
    while True:
        page = vault.list_packages(who, limit=2, offset=len(out), filters=filters).items
        out += [item.id for item in page]
        if len(page) < 2:
            return out


def check_every_caller(vault: Vault, callers: dict[str, Principal]) -> int:
    """Each caller's listing, through both plans and the service, is what it may read, newest
    first; returns how many packages the callers could list in all."""
    total = 0
    for name, who in callers.items():
        want = readable(vault, who)
        for rows in by_plan(vault, who):
            assert set(rows) == want, name
            assert len(rows) == len(want), name
        if who.role in (Role.ADMIN, Role.AUDITOR):
            with pytest.raises(AccessDenied):
                vault.list_packages(who)
            continue
        served = listed(vault, who)
        assert served == by_plan(vault, who)[0], name
        total += len(served)
    return total


def test_both_plans_show_what_the_decision_path_allows(world: World) -> None:
    callers = build(world)
    assert check_every_caller(world.vault, callers) > 10


def test_the_indexed_plan_is_chosen_for_few_candidates_and_the_scan_for_many(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    callers = build(world)
    vault, kz = world.vault, callers["kz.officer"]
    plan = vault.access.listing_plan(kz)
    assert plan.probe is not None
    with vault.engine.connect() as connection:
        params = listing_params(kz, limit=50, offset=0)
        counting = params | listing_plan.probe_params(listing_plan.INDEXED_UP_TO)
        count = connection.execute(plan.probe, counting).scalar()
        statement, _ = vault.access.listing_query(connection, kz, limit=50, offset=0)
    assert count is not None
    assert 1 < count <= 50
    assert statement is plan.indexed
    # With a switch below the candidates' count, the scan answers: the same listing.
    before = listed(vault, kz)
    monkeypatch.setattr(listing_plan, "INDEXED_UP_TO", 1)
    with vault.engine.connect() as connection:
        statement, _ = vault.access.listing_query(connection, kz, limit=50, offset=0)
    assert statement is plan.scan
    assert listed(vault, kz) == before


@pytest.mark.parametrize(
    ("packages", "page_end", "switch"),
    [
        (None, 50, listing_plan.INDEXED_UP_TO),  # no estimate: the fixed switch
        (100_000, 50, listing_plan.INDEXED_UP_TO),  # sqrt 2,236: capped
        (4_000, 50, 447),
        (10, 50, 50),  # never below the page itself
        (1_000, 1, 31),
    ],
)
def test_the_switch_lies_where_both_plans_touch_as_many_rows(
    packages: int | None, page_end: int, switch: int
) -> None:
    assert listing_plan.switch_point(packages, page_end) == switch


def test_the_vault_size_moves_the_switch(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller with a few candidates in a small vault is listed by the scan, the same caller
    in a large one from the index; the estimate is read again after SIZE_SECONDS."""
    callers = build(world)
    vault, kz = world.vault, callers["kz.officer"]
    plan = vault.access.listing_plan(kz)
    before = listed(vault, kz)
    monkeypatch.setattr(access, "SIZE_SECONDS", 0.0)
    for size, chosen in ((1, plan.scan), (100_000, plan.indexed), (None, plan.indexed)):
        monkeypatch.setattr(access, "package_estimate", lambda _connection, n=size: n)
        with vault.engine.connect() as connection:
            statement, _ = vault.access.listing_query(connection, kz, limit=1, offset=0)
        assert statement is chosen, size
        assert listed(vault, kz) == before


def test_the_size_estimate_is_the_number_of_packages(world: World) -> None:
    build(world)
    with world.vault.engine.connect() as connection:
        if connection.dialect.name == "postgresql":  # the planner's statistic, made current
            connection.exec_driver_sql("ANALYZE package")
        stored = connection.exec_driver_sql("SELECT count(*) FROM package").scalar()
        assert stored is not None
        assert stored > 10
        assert listing_plan.package_estimate(connection) == stored


def test_the_probe_counts_no_further_than_one_past_the_switch(world: World) -> None:
    """Past the switch the count makes no difference, so the probe stops there: a caller with
    thousands of candidates in a vault of a few thousand packages is not counted to 2,000 on
    every listing."""
    callers = build(world)
    kz = callers["kz.officer"]
    plan = world.vault.access.listing_plan(kz)
    assert plan.probe is not None
    params = listing_params(kz, limit=50, offset=0)
    with world.vault.engine.connect() as connection:
        every = connection.execute(
            plan.probe, params | listing_plan.probe_params(listing_plan.INDEXED_UP_TO)
        ).scalar()
        capped = connection.execute(plan.probe, params | listing_plan.probe_params(2)).scalar()
    assert every is not None
    assert every > 3
    assert capped == 3
    assert listing_plan.use_indexed(capped, 2) is listing_plan.use_indexed(every, 2) is False


def test_without_planner_statistics_the_estimate_counts_live_rows(world: World) -> None:
    """PostgreSQL before the package table's first ANALYZE (a new vault's first minute, or a
    server with autovacuum off): the estimate is still the number of packages, from the
    cumulative statistics, not "unknown"."""
    engine = world.vault.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner statistics; SQLite's estimate is its largest rowid")
    # Uploads only: a purge VACUUMs, which sets both statistics itself (and may count rows
    # whose inserts other backends have not reported yet twice, until ANALYZE).
    for cls in C:
        for hnd in (H.H0, H.H2, H.H3):
            upload(world.vault, world["uz.officer"], cls, hnd)
    with engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT count(*) FROM package").scalar()
    assert stored is not None
    assert stored > 10
    # The pool's backends report what they wrote when they end.
    engine.dispose()
    estimate = None
    for _ in range(100):
        with engine.connect() as connection:
            estimate = listing_plan.package_estimate(connection)
        if estimate == stored:
            break
        engine.dispose()
        time.sleep(0.05)
    assert estimate == stored


def test_filters_narrow_both_plans_alike(world: World) -> None:
    callers = build(world)
    vault = world.vault
    for who in (callers["uz.border"], callers["kz.interior"], callers["uz.officer"]):
        for filters in (
            PackageFilter(classification=C.SECRET),
            PackageFilter(handling=H.H1),
            PackageFilter(country="KZ", since=utcnow() - timedelta(hours=1)),
        ):
            results = by_plan(vault, who, filters)
            assert all(rows == results[0] for rows in results)
            assert listed(vault, who, filters) == results[0]


def test_rules_widening_reading_change_both_plans(world: World) -> None:
    """Admin rules: same-country reading adds that branch to the candidates; reading with no
    relation at all leaves no candidate set, and the scan answers alone."""
    callers = build(world)
    vault, admin = world.vault, callers["uz.admin"]
    vault.change_rule(admin, "p, officer, same-country, *, *, *, read, allow", add=True)
    assert vault.access.listing_plan(callers["uz.border"]).indexed is not None
    assert check_every_caller(vault, callers) > 10
    vault.change_rule(admin, "p, officer, none, *, H0, *, read, allow", add=True)
    assert vault.access.listing_plan(callers["tj.officer"]).indexed is None
    assert check_every_caller(vault, callers) > 10
