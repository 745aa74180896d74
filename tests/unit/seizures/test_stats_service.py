"""Seizure statistics through the service: every figure equals one computed independently, in
the test, from exactly the records released to the caller; revoking or purging changes the
figures on the next request; a record the caller may not read changes nothing."""

from __future__ import annotations

import io
import random
from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import select

from tests.conftest import World
from vault.errors import AccessDenied, Conflict, InvalidInput, NotFound
from vault.models import Package, PackageRecords
from vault.schemas import NewPackage
from vault.seizures.figures import SeizureStats
from vault.seizures.schema import COMMODITIES, UNITS, SeizureRecord
from vault.service import IncomingFile, Principal, local_operator

POINTS = {
    "OYBEK": ("UZ", "Oybek", date(2014, 5, 1)),
    "BEKABAD": ("UZ", "Bekabad", date(2016, 3, 15)),
    "KORDAY": ("KZ", "Korday", date(2015, 9, 1)),
}
FAMILY = {"g": ("kg", 0.001), "kg": ("kg", 1.0), "l": ("l", 1.0)}
FAMILY |= {"tablets": ("units", 1.0), "units": ("units", 1.0)}


def make_records(rng: random.Random, points: list[str], n: int) -> list[SeizureRecord]:
    start = datetime(2013, 1, 1)
    return [
        SeizureRecord(
            date=start + timedelta(days=rng.randrange(0, 365 * 5), minutes=rng.randrange(1440)),
            crossing_point=rng.choice(points),
            direction=rng.choice(["entry", "exit"]),
            commodity=rng.choice(COMMODITIES),
            quantity=round(rng.uniform(0.1, 500), 3),
            unit=rng.choice(UNITS),
            concealment="под запасным колесом",
            detained=rng.randrange(0, 4),
        )
        for _ in range(n)
    ]


def upload(world: World, user: str, records: list[SeizureRecord]) -> str:
    result = world.vault.upload(
        world[user],
        NewPackage(title="seizures"),
        [IncomingFile("report.txt", io.BytesIO(b"report"))],
        records=records,
    )
    return result.package.id


def expected(records: list[SeizureRecord], by: tuple[str, ...], **span: date) -> dict[Any, Any]:
    """The figures computed from the records themselves, without the service's code."""
    out: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for r in records:
        day = r.date.date()
        if ("date_from" in span and day < span["date_from"]) or (
            "date_to" in span and day > span["date_to"]
        ):
            continue
        values = {
            "month": r.date.strftime("%Y-%m"),
            "commodity": r.commodity,
            "crossing_point": r.crossing_point,
            "country": POINTS[r.crossing_point][0],
            "direction": r.direction,
        }
        sums = out[tuple(values[k] for k in by)]
        family, factor = FAMILY[r.unit]
        sums[0] += 1
        sums[{"kg": 1, "l": 2, "units": 3}[family]] += r.quantity * factor
    return dict(out)


def figures(stats: SeizureStats) -> dict[Any, Any]:
    return {
        tuple(row.keys[k] for k in stats.by): [
            row.totals.records,
            row.totals.quantity_kg,
            row.totals.quantity_l,
            row.totals.quantity_units,
        ]
        for row in stats.rows
    }


def assert_same(got: dict[Any, Any], want: dict[Any, Any]) -> None:
    assert got.keys() == want.keys()
    for key, sums in want.items():
        assert got[key][0] == sums[0], key
        assert got[key][1:] == pytest.approx(sums[1:], abs=1e-5), key


def register_points(world: World) -> None:
    for code, (country, name, opened) in POINTS.items():
        world.vault.add_crossing_point(
            world["uz.admin"], code, country=country, name=name, blo_opened=opened
        )


@pytest.fixture
def two_countries(world: World) -> dict[str, Any]:
    """UZ customs uploads three packages, KZ border guards two; part of each is released."""
    register_points(world)
    rng = random.Random(16)
    uz = ["OYBEK", "BEKABAD"]
    data = {
        "uz_a": make_records(rng, uz, 40),
        "uz_b": make_records(rng, uz, 30),
        "uz_secret": make_records(rng, uz, 25),
        "kz_c": make_records(rng, ["KORDAY"], 35),
        "kz_d": make_records(rng, ["KORDAY", "OYBEK"], 20),
    }
    owner = {"uz_a": "uz.officer", "uz_b": "uz.officer", "uz_secret": "uz.officer"}
    owner |= {"kz_c": "kz.officer", "kz_d": "kz.officer"}
    ids = {name: upload(world, owner[name], recs) for name, recs in data.items()}
    v = world.vault
    releases = {
        "a_to_kz": v.release(world["uz.officer"], ids["uz_a"], country="KZ").release.id,
        "b_to_kz_interior": v.release(
            world["uz.officer"], ids["uz_b"], country="KZ", agency="KZ-INTERIOR"
        ).release.id,
        "c_to_uz": v.release(world["kz.officer"], ids["kz_c"], country="UZ").release.id,
    }
    return {"data": data, "ids": ids, "releases": releases}


# Who may read what, by the releases above (officers read their own agency's packages).
READABLE = {
    "uz.officer": ["uz_a", "uz_b", "uz_secret", "kz_c"],
    "uz.border": ["kz_c"],
    "kz.officer": ["kz_c", "kz_d", "uz_a"],
    "kz.interior": ["uz_a", "uz_b"],
    "tj.officer": [],
}
GROUPINGS = [
    ("month", "commodity"),
    ("country", "direction"),
    ("crossing_point",),
    (),
    ("month", "commodity", "crossing_point", "country", "direction"),
]


@pytest.mark.parametrize("user", sorted(READABLE))
def test_each_callers_figures_equal_those_of_exactly_the_records_released_to_them(
    world: World, two_countries: dict[str, Any], user: str
) -> None:
    records = [r for name in READABLE[user] for r in two_countries["data"][name]]
    for by in GROUPINGS:
        stats, receipt = world.vault.seizure_stats(world[user], by=by)
        assert stats.by == by
        assert receipt > 0
        assert_same(figures(stats), expected(records, by) if records else {})
    span = {"date_from": date(2014, 3, 1), "date_to": date(2016, 6, 30)}
    stats, _ = world.vault.seizure_stats(world[user], by=["commodity", "month"], **span)
    assert stats.by == ("month", "commodity")
    assert_same(figures(stats), expected(records, ("month", "commodity"), **span))


def test_revoking_a_release_changes_the_figures_on_the_next_request(
    world: World, two_countries: dict[str, Any]
) -> None:
    data, by = two_countries["data"], ("month", "commodity")
    kz = world["kz.officer"]
    before, _ = world.vault.seizure_stats(kz, by=by)
    assert_same(figures(before), expected(data["kz_c"] + data["kz_d"] + data["uz_a"], by))
    world.vault.revoke_release(
        world["uz.officer"], two_countries["ids"]["uz_a"], two_countries["releases"]["a_to_kz"]
    )
    after, _ = world.vault.seizure_stats(kz, by=by)
    assert_same(figures(after), expected(data["kz_c"] + data["kz_d"], by))
    assert figures(after) != figures(before)
    # Released again, counted again: the cached totals were kept, only the set changed.
    world.vault.release(world["uz.officer"], two_countries["ids"]["uz_a"], country="KZ")
    again, _ = world.vault.seizure_stats(kz, by=by)
    assert figures(again) == figures(before)


def test_a_record_the_caller_may_not_read_changes_nothing_not_even_a_count(
    world: World, two_countries: dict[str, Any]
) -> None:
    v = world.vault
    callers = ["kz.officer", "kz.interior", "uz.border", "tj.officer"]
    seen = {u: v.seizure_stats(world[u], by=("month", "commodity"))[0] for u in callers}
    seen_ba = {u: v.seizure_before_after(world[u])[0] for u in callers}
    # More UZ records at the same points, months and commodities, released to nobody.
    upload(world, "uz.officer", make_records(random.Random(7), ["OYBEK", "KORDAY"], 60))
    for u in callers:
        assert v.seizure_stats(world[u], by=("month", "commodity"))[0].rows == seen[u].rows
        assert v.seizure_before_after(world[u])[0] == seen_ba[u]
    assert seen["tj.officer"].rows == []
    # The ledger's entries of stats reads carry no count either.
    entries = v.unscoped_entries()
    reads = [e for e in entries if e.action == "stats.read"]
    assert reads
    assert all("count" not in (e.subject or "") for e in reads)
    assert {e.decision for e in reads} == {"allow"}


def test_purging_a_package_removes_its_records_from_every_figure(
    world: World, two_countries: dict[str, Any]
) -> None:
    data, ids = two_countries["data"], two_countries["ids"]
    v = world.vault
    v.purge(world["uz.admin"], ids["uz_a"])
    stats, _ = v.seizure_stats(world["kz.officer"], by=("commodity",))
    assert_same(figures(stats), expected(data["kz_c"] + data["kz_d"], ("commodity",)))
    with v.core.tx(readonly=True) as session:
        assert session.get(PackageRecords, ids["uz_a"]) is None
        assert session.get(PackageRecords, ids["uz_b"]) is not None


def test_before_after_uses_equal_windows_around_each_opening_date(
    world: World, two_countries: dict[str, Any]
) -> None:
    records = [r for name in READABLE["uz.officer"] for r in two_countries["data"][name]]
    figures_, receipt = world.vault.seizure_before_after(world["uz.officer"], window_days=365)
    assert receipt > 0
    assert [f.crossing_point for f in figures_] == sorted(POINTS)
    for f in figures_:
        opened = POINTS[f.crossing_point][2]
        low, high = opened - timedelta(days=365), opened + timedelta(days=365)
        here = [r for r in records if r.crossing_point == f.crossing_point]
        before = [r for r in here if low <= r.date.date() < opened]
        after = [r for r in here if opened <= r.date.date() < high]
        assert (f.window_days, f.before.records, f.after.records) == (365, len(before), len(after))
        want = expected(after, ())
        assert f.after.quantity_kg == pytest.approx(want[()][1] if want else 0.0, abs=1e-5)
        absolute, relative = f.change("records")
        assert absolute == len(after) - len(before)
        assert relative == ((len(after) - len(before)) / len(before) if before else None)
    one, _ = world.vault.seizure_before_after(world["uz.officer"], crossing_point="korday")
    assert [f.crossing_point for f in one] == ["KORDAY"]
    # The default window runs from the opening to today, capped at two years.
    assert one[0].window_days == 730


def test_bad_requests_are_refused_and_recorded(world: World, two_countries: dict[str, Any]) -> None:
    v, officer = world.vault, world["uz.officer"]
    with pytest.raises(InvalidInput) as bad:
        v.seizure_stats(officer, by=["month", "year"])
    assert bad.value.receipt is not None
    twice, _ = v.seizure_stats(officer, by=["month", " month", "commodity"])
    assert twice.by == ("month", "commodity")
    with pytest.raises(InvalidInput):
        v.seizure_stats(officer, by=(), date_from=date(2020, 1, 2), date_to=date(2020, 1, 1))
    with pytest.raises(InvalidInput):
        v.seizure_before_after(officer, window_days=0)
    with pytest.raises(NotFound):
        v.seizure_before_after(officer, crossing_point="NOWHERE")
    for user in ("uz.auditor", "uz.admin"):
        with pytest.raises(AccessDenied) as denied:
            v.seizure_stats(world[user], by=("month",))
        assert denied.value.receipt is not None


def test_crossing_points_are_managed_by_admins_only(world: World) -> None:
    v = world.vault
    receipt = v.add_crossing_point(
        world["uz.admin"], "oybek", country="UZ", name="Oybek", blo_opened=date(2014, 5, 1)
    )
    assert receipt > 0
    assert [
        (p.code, p.country, p.blo_opened) for p in v.crossing_points(world["kz.officer"])[0]
    ] == [("OYBEK", "UZ", date(2014, 5, 1))]
    with pytest.raises(Conflict):
        v.add_crossing_point(
            local_operator(), "OYBEK", country="UZ", name="x", blo_opened=date(2014, 5, 1)
        )
    with pytest.raises(InvalidInput):
        v.add_crossing_point(
            local_operator(), "NEW", country="AF", name="x", blo_opened=date(2014, 5, 1)
        )
    with pytest.raises(AccessDenied):
        v.add_crossing_point(
            world["uz.officer"], "OTHER", country="UZ", name="x", blo_opened=date(2014, 5, 1)
        )


def test_records_at_an_unregistered_crossing_point_store_nothing(world: World) -> None:
    register_points(world)
    records = make_records(random.Random(3), ["OYBEK", "NOWHERE"], 10)
    officer: Principal = world["uz.officer"]
    with pytest.raises(InvalidInput, match="not registered") as refused:
        upload(world, "uz.officer", records)
    assert refused.value.receipt is not None
    with world.vault.core.tx(readonly=True) as session:
        assert session.exec(select(Package)).first() is None
        assert session.exec(select(PackageRecords)).first() is None
    assert world.vault.list_packages(officer).items == []


def test_no_record_field_is_stored_in_clear(world: World, two_countries: dict[str, Any]) -> None:
    """The SQLite file holds neither the concealment text nor a commodity nor a date."""
    if world.settings.database_url:
        pytest.skip("reads the SQLite file")
    world.vault.close()
    raw = b"".join(p.read_bytes() for p in world.settings.data_dir.rglob("*.db*"))
    assert raw
    dates = [r.date.isoformat(timespec="minutes") for r in two_countries["data"]["uz_a"]]
    for needle in ["под запасным колесом", "methamphetamine", "cannabis resin", *dates]:
        assert needle.encode() not in raw, needle


def test_date_ranges_that_hold_or_miss_whole_packages(
    world: World, two_countries: dict[str, Any]
) -> None:
    """A range holding every record of a package takes its kept grouping, one missing all of
    them skips it, one cutting through regroups it: all three agree with the records."""
    data, by = two_countries["data"], ("month", "commodity")
    records = data["kz_c"] + data["kz_d"] + data["uz_a"]
    v, kz = world.vault, world["kz.officer"]
    for span in (
        {"date_from": date(1990, 1, 1), "date_to": date(2100, 1, 1)},
        {"date_from": date(2019, 1, 1)},
        {"date_to": date(2012, 12, 31)},
        {"date_from": date(2015, 1, 1)},
        {"date_to": date(2015, 1, 1)},
    ):
        stats, _ = v.seizure_stats(kz, by=by, **span)
        assert_same(figures(stats), expected(records, by, **span))
    assert v.seizure_stats(kz, by=by, date_from=date(2019, 1, 1))[0].rows == []


def test_the_cache_is_bounded_by_the_rows_it_holds(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache counts rows (day totals and the groupings made of them), not packages: one
    officer's own uploads of 50,000 records each could hold 55 MiB a package for good. Past
    the bound the least recently used packages go; figures are the same either way."""
    register_points(world)
    rng = random.Random(7)
    uploads = [make_records(rng, list(POINTS), 300) for _ in range(4)]
    for records in uploads:
        upload(world, "uz.officer", records)
    every = [r for records in uploads for r in records]
    service = world.vault.seizures
    groupings = [("month",), ("month", "commodity"), ("crossing_point", "direction"), ()]

    def held() -> int:
        return sum(entry.rows for entry in service._totals.values())

    # Unbounded enough: every package stays, and the count matches what they hold.
    for by in groupings:
        stats, _ = world.vault.seizure_stats(world["uz.officer"], by=by)
        assert_same(figures(stats), expected(every, by))
    assert len(service._totals) == 4
    assert service._rows == held()
    whole = service._rows

    # A bound of about two packages' worth: once the cache grows again (groupings not asked
    # yet), the least recently used are dropped.
    monkeypatch.setattr(service, "_max_rows", whole // 2)
    for by in [("commodity",), ("direction",), ("month", "country"), ("month",)]:
        stats, _ = world.vault.seizure_stats(world["uz.officer"], by=by)
        assert_same(figures(stats), expected(every, by))
        assert service._rows == held()
        assert service._rows <= whole // 2 or len(service._totals) == 1
    assert len(service._totals) < 4
