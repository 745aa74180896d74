"""The pages at the edges: times at the ends of the calendar are shown and refused as any other
(never a server error), and the refusals the pages make themselves for a signed-in user (a
forged CSRF token, a bad filter or form) are in the ledger, as the API's own refusals are."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlmodel import Session, col, select

from blo_vault.api.web.forms import day_start, local_time
from blo_vault.api.web.i18n import ZONES, Languages
from tests.conftest import World
from tests.ui.conftest import Browser
from vault.errors import InvalidInput
from vault.ledger.entry import Entry
from vault.models import Release
from vault.schemas import NewPackage
from vault.service import IncomingFile

RECEIPT = re.compile(r"#(\d+)")
REFUSED_INPUT = "Some of what was entered is not valid. Nothing was changed."
END_OF_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
START_OF_TIME = datetime(1, 1, 1, tzinfo=UTC)


def upload(world: World) -> str:
    """A package by uz.officer (UZ-CUSTOMS) with one file; its id."""
    result = world.vault.upload(
        world["uz.officer"],
        NewPackage(title="Oybek seizure report"),
        [IncomingFile(name="report.txt", reader=io.BytesIO(b"15 kg heroin at Bekabad"))],
    )
    return result.package.id


def entries_since(world: World, size: int) -> list[Entry]:
    """The ledger entries written since it held ``size``."""
    return world.vault.unscoped_entries(size, world.vault.ledger_size())


# --- times at the ends of the calendar ----------------------------------------------------


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("code", ["en", "ru"])
def test_every_time_the_calendar_holds_is_shown_in_every_zone(zone: str, code: str) -> None:
    language = Languages().by_code[code]
    for moment in (END_OF_TIME, START_OF_TIME, END_OF_TIME.replace(tzinfo=None)):
        shown = language.datetime(moment, zone)
        assert shown, moment
        year = "9999" if moment.year == 9999 else "1"
        assert year in shown, (moment, shown)
    # East of UTC the last second of 9999 is in year 10000: the same moment in UTC, said so.
    if zone != "UTC":
        assert language.datetime(END_OF_TIME, zone).endswith(" UTC")
    # A time whose own offset puts it before year 1 in UTC: its ISO form, as stored.
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    assert language.datetime(early, zone) == "0001-01-01T00:00:00+05:00"


def _expire_at_the_end_of_time(world: World, package_id: str) -> None:
    """Release to KZ, then give the release the last second of the calendar as its expiry,
    as one stored before the service bounded release times would have it."""
    world.vault.release(world["uz.officer"], package_id, country="KZ")
    with Session(world.vault.engine) as session:
        release = session.exec(select(Release).where(col(Release.package_id) == package_id)).one()
        release.expires_at = END_OF_TIME
        session.add(release)
        session.commit()


@pytest.mark.parametrize("language", ["en", "ru"])
def test_a_release_expiring_at_the_end_of_time_still_shows_and_can_be_revoked(
    world: World, browser: Browser, language: str
) -> None:
    package_id = upload(world)
    _expire_at_the_end_of_time(world, package_id)
    browser.client.headers["Accept-Language"] = language
    browser.sign_in("uz.officer")  # shown in Asia/Tashkent, where that second is in year 10000
    page = browser.client.get(f"/ui/packages/{package_id}")
    assert page.status_code == 200, page.text
    assert "9999" in page.text
    assert " UTC</td>" in page.text
    revoke = re.search(r'action="(/ui/packages/[0-9a-f]+/releases/[0-9a-f]+/revoke)"', page.text)
    assert revoke, "no revoke form on the package page"
    path = f"/ui/packages/{package_id}"
    assert browser.post(revoke.group(1), {}, csrf_from=path).status_code == 303
    detail, _ = world.vault.get_package(world["uz.officer"], package_id)
    assert [r.status.value for r in detail.releases] == ["revoked"]


def test_the_audit_view_of_a_release_expiring_at_the_end_of_time(
    world: World, browser: Browser
) -> None:
    package_id = upload(world)
    _expire_at_the_end_of_time(world, package_id)
    browser.sign_in("uz.auditor")
    page = browser.client.get(f"/ui/audit/packages/{package_id}")
    assert page.status_code == 200, page.text
    assert "9999" in page.text


def test_days_and_times_at_the_ends_of_the_calendar_are_invalid_input() -> None:
    # East of UTC, 0001-01-01 starts before year 1 in UTC; the day after 9999-12-31 is none.
    with pytest.raises(InvalidInput):
        day_start("0001-01-01", "Asia/Tashkent")
    with pytest.raises(InvalidInput):
        day_start("9999-12-31", "UTC", after=True)
    with pytest.raises(InvalidInput):
        local_time("0001-01-01T00:00", "Asia/Tashkent")
    with pytest.raises(InvalidInput):
        local_time("9999-12-31T23:59-05:00", "UTC")
    # What the calendar holds still reads.
    assert day_start("9999-12-31", "Asia/Tashkent") == datetime(9999, 12, 30, 19, tzinfo=UTC)
    assert day_start("0001-01-01", "UTC") == START_OF_TIME
    assert local_time("9999-12-31T23:59", "Asia/Tashkent") is not None


@pytest.mark.parametrize(
    ("username", "path"),
    [
        ("uz.officer", "/ui/packages?since=0001-01-01"),
        ("uz.officer", "/ui/packages?until=9999-12-31"),
        ("uz.auditor", "/ui/audit/ledger?since=0001-01-01"),
        ("uz.auditor", "/ui/audit/ledger?until=9999-12-31"),
    ],
)
def test_filters_at_the_ends_of_the_calendar_get_the_error_page(
    browser: Browser, username: str, path: str
) -> None:
    browser.sign_in(username)
    answer = browser.client.get(path)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert REFUSED_INPUT in answer.text


def test_a_release_from_the_first_minute_of_the_calendar_gets_the_error_page(
    world: World, browser: Browser
) -> None:
    package_id = upload(world)
    browser.sign_in("uz.officer")
    path = f"/ui/packages/{package_id}"
    answer = browser.post(
        path + "/releases",
        {"country": "KZ", "not_before": "0001-01-01T00:00"},
        csrf_from=path,
    )
    assert answer.status_code == 422, answer.text
    assert REFUSED_INPUT in answer.text
    detail, _ = world.vault.get_package(world["uz.officer"], package_id)
    assert detail.releases == []


# --- the pages' own refusals are recorded -------------------------------------------------


# Fixed values: pytest-xdist workers must collect the same test ids.
@pytest.mark.parametrize("token", [None, "", "forged-Xq3vN8pL2mR7tK9wY4zB6c"])
def test_a_refused_forgery_against_a_signed_in_user_is_in_the_ledger(
    world: World, browser: Browser, token: str | None
) -> None:
    package_id = upload(world)
    browser.sign_in("uz.officer")
    size = world.vault.ledger_size()
    data = {"country": "KZ"} | ({} if token is None else {"csrf": token})
    answer = browser.client.post(
        f"/ui/packages/{package_id}/releases", data=data, follow_redirects=False
    )
    assert answer.status_code == 403
    [entry] = entries_since(world, size)
    assert (entry.action, entry.decision, entry.reason) == ("request", "deny", "csrf_refused")
    assert entry.actor_user == "uz.officer"
    # The route's template and the well-formed id, never what was posted.
    assert entry.subject == "POST /ui/packages/{package_id}/releases"
    assert entry.package == package_id
    if token:
        assert token.encode() not in entry.encode()
    shown = RECEIPT.search(answer.text)
    assert shown
    assert int(shown.group(1)) == entry.seq
    detail, _ = world.vault.get_package(world["uz.officer"], package_id)
    assert detail.releases == []


def test_a_refused_forgery_of_a_sign_out_and_an_upload_is_in_the_ledger(
    world: World, browser: Browser
) -> None:
    browser.sign_in("uz.officer")
    size = world.vault.ledger_size()
    assert browser.client.post("/ui/signout", data={}, follow_redirects=False).status_code == 403
    forged_upload = browser.client.post(
        "/ui/upload",
        data={"csrf": "forged", "title": "no token"},
        files=[("file", ("a.txt", b"abc", "text/plain"))],
        follow_redirects=False,
    )
    assert forged_upload.status_code == 403
    entries = entries_since(world, size)
    assert [(e.subject, e.reason) for e in entries] == [
        ("POST /ui/signout", "csrf_refused"),
        ("POST /ui/upload", "csrf_refused"),
    ]
    assert world.vault.list_packages(world["uz.officer"]).items == []


def test_a_malformed_id_in_a_refused_path_stays_out_of_the_ledger(
    world: World, browser: Browser
) -> None:
    browser.sign_in("uz.officer")
    size = world.vault.ledger_size()
    typed = "not-an-id-<script>"
    answer = browser.client.post(
        f"/ui/packages/{typed}/releases", data={"csrf": "forged"}, follow_redirects=False
    )
    assert answer.status_code == 403
    [entry] = entries_since(world, size)
    assert entry.package == ""
    assert entry.subject == "POST /ui/packages/{package_id}/releases"
    assert b"script" not in entry.encode()


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/ui/packages?classification=BOGUS-VALUE", "GET /ui/packages"),
        ("/ui/packages?since=BOGUS-VALUE", "GET /ui/packages"),
        ("/ui/packages?since=0001-01-01", "GET /ui/packages"),
        ("/ui/packages?page=0", "GET /ui/packages"),  # refused by FastAPI's validation
        ("/ui/packages?country=BOGUS-VALUE", "GET /ui/packages"),  # over max_length
    ],
)
def test_a_bad_filter_of_a_signed_in_user_is_in_the_ledger(
    world: World, browser: Browser, path: str, template: str
) -> None:
    browser.sign_in("uz.officer")
    size = world.vault.ledger_size()
    answer = browser.client.get(path)
    assert answer.status_code == 422
    [entry] = entries_since(world, size)
    assert (entry.action, entry.decision, entry.reason) == ("request", "deny", "invalid_input")
    assert (entry.actor_user, entry.subject) == ("uz.officer", template)
    assert b"BOGUS" not in entry.encode()
    shown = RECEIPT.search(answer.text)
    assert shown
    assert int(shown.group(1)) == entry.seq


def test_a_bad_form_of_a_signed_in_user_is_in_the_ledger(world: World, browser: Browser) -> None:
    browser.sign_in("uz.officer")
    size = world.vault.ledger_size()
    answer = browser.post("/ui/preferences", {"lang": "xx-BOGUS"}, csrf_from="/ui/account")
    assert answer.status_code == 422
    answer = browser.post("/ui/releases/" + "0" * 32 + "/maybe", {}, csrf_from="/ui/account")
    assert answer.status_code == 422
    entries = entries_since(world, size)
    assert [(e.subject, e.reason) for e in entries] == [
        ("POST /ui/preferences", "invalid_input"),
        ("POST /ui/releases/{release_id}/{decision}", "invalid_input"),
    ]
    assert all(b"BOGUS" not in e.encode() and b"maybe" not in e.encode() for e in entries)


def test_a_refused_upload_form_is_in_the_ledger(world: World, browser: Browser) -> None:
    browser.sign_in("uz.officer")
    size = world.vault.ledger_size()
    answer = browser.client.post(
        "/ui/upload",
        data={"csrf": browser.csrf("/ui/upload"), "title": "x", "classification": "BOGUS"},
        files=[("file", ("a.txt", b"abc", "text/plain"))],
        follow_redirects=False,
    )
    assert answer.status_code == 422
    [entry] = entries_since(world, size)
    assert (entry.subject, entry.decision, entry.reason) == (
        "POST /ui/upload",
        "deny",
        "invalid_input",
    )
    assert world.vault.list_packages(world["uz.officer"]).items == []


def test_a_refused_records_file_is_in_the_ledger_without_its_rows(
    world: World, browser: Browser
) -> None:
    browser.sign_in("uz.officer")
    csrf = browser.csrf("/ui/upload")
    size = world.vault.ledger_size()
    bad = b"date,crossing_point,direction,commodity,quantity,unit\nBOGUS-DAY,X,entry,salt,1,kg\n"
    answer = browser.client.post(
        "/ui/upload",
        data={"csrf": csrf, "title": "Oybek, January"},
        files=[
            ("records", ("bad.csv", bad, "text/csv")),
            ("file", ("report.txt", b"monthly seizures", "text/plain")),
        ],
        follow_redirects=False,
    )
    assert answer.status_code == 422
    assert 'id="records-problems"' in answer.text
    [entry] = entries_since(world, size)  # the refusal; no upload was attempted
    assert (entry.action, entry.subject, entry.decision, entry.reason) == (
        "request",
        "POST /ui/upload",
        "deny",
        "invalid_input",
    )
    assert b"BOGUS" not in entry.encode()
    assert world.vault.list_packages(world["uz.officer"]).items == []


def test_refusals_of_anonymous_visitors_are_not_recorded(world: World, browser: Browser) -> None:
    size = world.vault.ledger_size()
    forged = browser.client.post(
        "/ui/signin",
        data={"csrf": "forged", "username": "uz.officer", "password": "x"},
        follow_redirects=False,
    )
    assert forged.status_code == 403
    assert browser.post("/ui/preferences", {"lang": "xx"}, csrf_from="/ui/signin").status_code == (
        422
    )
    # A signed-in page asked for anonymously leads to the sign-in page, whatever the query.
    assert browser.client.get("/ui/packages?page=0", follow_redirects=False).status_code == 303
    assert world.vault.ledger_size() == size


def test_a_refusal_the_service_recorded_is_not_recorded_twice(
    world: World, browser: Browser
) -> None:
    browser.sign_in("kz.officer")
    size = world.vault.ledger_size()
    answer = browser.client.get("/ui/packages/" + "0" * 32)
    assert answer.status_code == 404
    [entry] = entries_since(world, size)
    assert entry.action != "request"
