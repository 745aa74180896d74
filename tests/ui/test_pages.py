"""The pages without a browser: CSRF, sessions and cookies, security headers, escaping, the
not-found page, languages, and the same visibility as the API (every page against the JSON
route that does the same thing, for every role and relation)."""

from __future__ import annotations

import html
import io
import re
import secrets
from typing import Any

import pytest
from fastapi.testclient import TestClient

from blo_vault.api.web.security import CSP
from tests.conftest import PASSWORD, USERS, World
from tests.ui.conftest import Browser
from vault.models import Classification, Handling, Role
from vault.schemas import NewPackage
from vault.service import IncomingFile, local_operator


def upload(world: World, title: str = "Oybek seizure report", **meta: Any) -> str:
    """A package by uz.officer (UZ-CUSTOMS) with one file; its id."""
    result = world.vault.upload(
        world["uz.officer"],
        NewPackage(title=title, **meta),
        [IncomingFile(name="report.txt", reader=io.BytesIO(b"15 kg heroin at Bekabad"))],
    )
    return result.package.id


def normalised(html: str) -> str:
    """A page without what differs between two answers to the same question."""
    html = re.sub(r'name="csrf" value="[^"]+"', "", html)
    return re.sub(r"#\d+", "#N", html)


# --- CSRF ---------------------------------------------------------------------------------


def test_post_without_csrf_token_is_refused_and_changes_nothing(
    world: World, browser: Browser
) -> None:
    package_id = upload(world)
    browser.sign_in("uz.officer")
    before = world.vault.ledger_size()
    for token in (None, "", "forged-" + secrets.token_urlsafe(16)):
        data = {"country": "KZ"} | ({} if token is None else {"csrf": token})
        answer = browser.client.post(
            f"/ui/packages/{package_id}/releases", data=data, follow_redirects=False
        )
        assert answer.status_code == 403
        assert "stale or came from elsewhere" in answer.text
    # Each refused post is in the ledger, as the route's template and the reason only.
    refused = world.vault.unscoped_entries(before, world.vault.ledger_size())
    assert [(e.action, e.decision, e.reason, e.subject) for e in refused] == [
        ("request", "deny", "csrf_refused", "POST /ui/packages/{package_id}/releases")
    ] * 3
    detail, _ = world.vault.get_package(world["uz.officer"], package_id)
    assert detail.releases == []
    # With the token the same form works: the refusal was the token's, not the form's.
    assert (
        browser.post(
            f"/ui/packages/{package_id}/releases", {"country": "KZ"}, csrf_from="/ui/packages"
        ).status_code
        == 303
    )


def test_upload_without_csrf_token_stores_nothing(world: World, browser: Browser) -> None:
    browser.sign_in("uz.officer")
    answer = browser.client.post(
        "/ui/upload",
        data={"title": "no token"},
        files=[("file", ("a.txt", b"abc", "text/plain"))],
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert world.vault.list_packages(world["uz.officer"]).items == []


def test_web_upload_refuses_a_signature_part_after_the_files(
    world: World, browser: Browser
) -> None:
    """Web uploads are unsigned: a trailing ``signature`` part (which ends the file list of an
    API upload) is a stray part in a form, refused, not a quiet end of the files after which
    the rest of the body is ignored."""
    browser.sign_in("uz.officer")
    token = browser.csrf("/ui/upload")
    boundary = "b0undary"

    def part(name: str, value: bytes, filename: str | None = None) -> bytes:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        return (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
        )

    body = b"".join(
        [
            part("csrf", token.encode()),
            part("title", b"stray signature"),
            part("classification", b"UNCLASSIFIED"),
            part("handling", b"H0"),
            part("file", b"abc", "a.txt"),
            part("signature", b"{}"),
            part("file", b"def", "b.txt"),
            f"--{boundary}--\r\n".encode(),
        ]
    )
    answer = browser.client.post(
        "/ui/upload",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        follow_redirects=False,
    )
    assert answer.status_code == 422, answer.text
    assert world.vault.list_packages(world["uz.officer"]).items == []


def test_sign_in_needs_the_session_csrf_token(world: World, browser: Browser) -> None:
    answer = browser.client.post(
        "/ui/signin",
        data={"username": "uz.officer", "password": PASSWORD},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert browser.client.get("/ui/packages", follow_redirects=False).status_code == 303


# --- sessions and cookies -----------------------------------------------------------------


def _cookie(browser: Browser) -> str:
    value = browser.client.cookies.get("vault_session")
    assert isinstance(value, str)
    assert value
    return value


def _with_cookie(client: TestClient, cookie: str) -> int:
    client.cookies.clear()
    client.cookies.set("vault_session", cookie)
    status: int = client.get("/ui/packages", follow_redirects=False).status_code
    return status


def test_old_cookie_no_longer_works_after_sign_out(browser: Browser) -> None:
    browser.sign_in("uz.officer")
    old = _cookie(browser)
    assert _with_cookie(browser.client, old) == 200
    token = browser.csrf("/ui/packages")
    assert (
        browser.client.post("/ui/signout", data={"csrf": token}, follow_redirects=False).status_code
        == 303
    )
    assert _with_cookie(browser.client, old) == 303  # to the sign-in page


@pytest.mark.parametrize("change", ["disable", "role", "password"])
def test_session_ends_on_disable_role_or_password_change(
    world: World, browser: Browser, change: str
) -> None:
    browser.sign_in("kz.officer")
    old = _cookie(browser)
    if change == "disable":
        world.vault.set_user(local_operator(), "kz.officer", disabled=True)
    elif change == "role":
        world.vault.set_user(local_operator(), "kz.officer", role=Role.AUDITOR)
    else:
        world.vault.change_password(world["kz.officer"], PASSWORD, "another long passphrase")
    assert _with_cookie(browser.client, old) == 303
    page = browser.client.get("/ui/packages")
    assert 'id="signin"' in page.text


def test_password_change_in_the_page_keeps_this_browser_and_ends_the_others(
    world: World, browser: Browser
) -> None:
    browser.sign_in("uz.officer")
    with TestClient(browser.client.app) as other_client:
        other = Browser(other_client)
        other.sign_in("uz.officer")
        answer = browser.post(
            "/ui/account/password",
            {"current_password": PASSWORD, "new_password": "a brand new passphrase"},
            csrf_from="/ui/account",
        )
        assert answer.status_code == 200
        assert browser.client.get("/ui/packages", follow_redirects=False).status_code == 200
        assert other.client.get("/ui/packages", follow_redirects=False).status_code == 303
    world.vault.login("uz.officer", "a brand new passphrase")


def test_cookie_attributes_over_tls_and_plain_http(world: World) -> None:
    from blo_vault.api.app import create_app

    app = create_app(vault=world.vault)
    with TestClient(app, base_url="https://testserver") as tls:
        cookie = tls.get("/ui/signin").headers["set-cookie"]
        assert cookie.startswith("__Host-vault_session=")
        for attribute in ("HttpOnly", "Secure", "Path=/", "SameSite=strict"):
            assert attribute in cookie
        assert "Domain" not in cookie
        Browser(tls).sign_in("uz.officer")
    with TestClient(app) as plain:
        cookie = plain.get("/ui/signin").headers["set-cookie"]
        assert cookie.startswith("vault_session=")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Secure" not in cookie


def test_failed_sign_in_is_recorded_and_locks_out_like_the_api(
    world: World, browser: Browser
) -> None:
    limit = world.settings.login_failures_per_user
    statuses = [
        browser.client.post(
            "/ui/signin",
            data={"csrf": browser.csrf(), "username": "uz.officer", "password": "wrong"},
            follow_redirects=False,
        ).status_code
        for _ in range(limit + 1)
    ]
    assert statuses[:limit] == [401] * limit
    assert statuses[-1] == 429
    logins = [
        e
        for e in world.vault.ledger_show(local_operator())
        if e.action == "login" and e.actor_user == "uz.officer"
    ]
    reasons = [e.reason for e in logins if e.decision == "deny"]
    assert reasons.count("bad_credentials") == limit
    assert "rate_limited" in reasons


# --- headers, markup, escaping ------------------------------------------------------------

INLINE = re.compile(r"<script(?![^>]*\bsrc=)|\sstyle=|<style|\son[a-z]+=", re.IGNORECASE)


def _pages(world: World) -> dict[str, list[str]]:
    package_id = upload(world, classification=Classification.CONFIDENTIAL)
    return {
        "": ["/", "/ui/signin", "/ui/nowhere"],
        "uz.officer": [
            "/ui/packages",
            f"/ui/packages/{package_id}",
            f"/ui/packages/{'0' * 32}",
            "/ui/upload",
            "/ui/account",
            "/ui/stats?by=month,commodity,crossing_point,country,direction",
        ],
        "uz.supervisor": ["/ui/inbox"],
        "uz.auditor": [
            "/ui/audit/ledger",
            "/ui/audit/checkpoint",
            f"/ui/audit/explain?user=tj.officer&package={package_id}&action=read",
            f"/ui/audit/packages/{package_id}",
        ],
        "uz.admin": ["/ui/admin"],
    }


def test_security_headers_and_no_inline_code_on_every_page(world: World) -> None:
    from blo_vault.api.app import create_app

    app = create_app(vault=world.vault)
    for user, paths in _pages(world).items():
        with TestClient(app) as client:
            browser = Browser(client)
            if user:
                browser.sign_in(user)
            for path in paths:
                page = client.get(path, follow_redirects=False)
                assert page.headers.get_list("content-security-policy") == [CSP], path
                assert "frame-ancestors 'none'" in CSP
                assert "default-src 'self'" in CSP
                assert "unsafe-inline" not in CSP
                assert page.headers["cache-control"] == "no-store", path
                assert page.headers["x-frame-options"] == "DENY"
                assert page.headers["x-content-type-options"] == "nosniff"
                assert not INLINE.search(page.text), path
    # The JSON API keeps its own policy.
    with TestClient(app) as client:
        api = client.get("/healthz")
        assert (
            api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        )


def test_only_static_files_served_are_cacheable(browser: Browser) -> None:
    # The stylesheet (and its "not modified") may be kept by any cache: it holds no data.
    served = browser.client.get("/ui/static/vault.css")
    assert served.status_code == 200
    assert served.headers["cache-control"] == "public, max-age=3600"
    etag = served.headers["etag"]
    again = browser.client.get("/ui/static/vault.css", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.headers["cache-control"] == "public, max-age=3600"
    # A missing file under the static path gets the error page, rendered with the signed-in
    # reader's name, agency and CSRF token: no shared cache may keep it.
    browser.sign_in("uz.officer")
    csrf = browser.csrf("/ui/account")
    for method in ("GET", "POST"):
        missing = browser.client.request(method, "/ui/static/does-not-exist.css")
        assert missing.status_code in (404, 405), method
        assert "uz.officer" in missing.text
        assert csrf in missing.text
        assert missing.headers["cache-control"] == "no-store", method


def test_every_form_control_has_a_label(world: World) -> None:
    from blo_vault.api.app import create_app

    app = create_app(vault=world.vault)
    for user, paths in _pages(world).items():
        with TestClient(app) as client:
            if user:
                Browser(client).sign_in(user)
            for path in paths:
                html = client.get(path).text
                labelled = set(re.findall(r'<label for="([^"]+)"', html))
                for tag, attributes in re.findall(r"<(input|select|textarea)\b([^>]*)>", html):
                    if 'type="hidden"' in attributes:
                        continue
                    found = re.search(r'\bid="([^"]+)"', attributes)
                    assert found, f"{path}: {tag}{attributes}"
                    assert found.group(1) in labelled, f"{path}: {tag}{attributes}"
                for button in re.findall(r"<button\b[^>]*>(.*?)</button>", html, re.S):
                    assert button.strip(), path


def test_titles_and_filenames_are_escaped(world: World, browser: Browser) -> None:
    title = "<script>alert(1)</script> & <img src=x onerror=alert(2)>"
    package_id = upload(world, title=title, description="<b>bold</b>")
    browser.sign_in("uz.officer")
    for path in ("/ui/packages", f"/ui/packages/{package_id}"):
        html = browser.client.get(path).text
        assert (
            "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(2)&gt;" in html
        )
        assert "<script>alert" not in html
        assert "<img src=x" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in browser.client.get(f"/ui/packages/{package_id}").text


def test_right_to_left_override_in_a_filename_is_refused_and_nothing_stored(
    world: World, browser: Browser
) -> None:
    browser.sign_in("uz.officer")
    token = browser.csrf("/ui/upload")
    answer = browser.client.post(
        "/ui/upload",
        data={"csrf": token, "title": "t", "classification": "UNCLASSIFIED", "handling": "H0"},
        files=[("file", ("invoice\u202etxt.exe", b"x", "application/octet-stream"))],
        follow_redirects=False,
    )
    assert answer.status_code == 422
    assert "\u202e" not in answer.text
    assert world.vault.list_packages(world["uz.officer"]).items == []


def test_not_found_page_is_the_same_for_a_forbidden_and_a_random_id(
    world: World, browser: Browser
) -> None:
    package_id = upload(world)
    browser.sign_in("tj.officer")
    forbidden = browser.client.get(f"/ui/packages/{package_id}")
    random = browser.client.get(f"/ui/packages/{secrets.token_hex(16)}")
    assert forbidden.status_code == random.status_code == 404
    assert normalised(forbidden.text) == normalised(random.text)
    forbidden_file = browser.client.get(f"/ui/packages/{package_id}/files/{'1' * 32}")
    assert forbidden_file.status_code == 404
    assert normalised(forbidden_file.text) == normalised(random.text)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/ui/no-such-page", 404),
        ("GET", "/ui/static/nothing.css", 404),
        ("POST", "/ui/packages", 405),
        # A form posted without a session: no token could match, and none is started.
        ("POST", "/ui/signin", 403),
        ("POST", "/ui/signout", 403),
    ],
)
def test_error_pages_start_no_session_for_a_visitor_without_one(
    world: World, browser: Browser, method: str, path: str, status: int
) -> None:
    rows = world.vault.web_sessions()
    before = rows.count()
    browser.client.headers["Accept-Language"] = "ru"
    # No cookie at all, and one that names no session (a junk or ended one).
    for cookie in ("", secrets.token_urlsafe(32)):
        browser.client.cookies.clear()
        if cookie:
            browser.client.cookies.set("vault_session", cookie)
        answer = browser.client.request(method, path, follow_redirects=False)
        assert answer.status_code == status, answer.text
        assert "set-cookie" not in answer.headers
        assert answer.headers["content-type"].startswith("text/html")
        assert '<html lang="ru">' in answer.text  # the reader's language, from the header
        assert 'name="csrf"' not in answer.text
        assert rows.count() == before
    # A signed-in reader's error page is still theirs (and starts nothing new either).
    browser.client.cookies.clear()
    browser.sign_in("uz.officer")
    signed_in = rows.count()
    answer = browser.client.request(method, path, follow_redirects=False)
    assert answer.status_code == status
    assert "uz.officer" in answer.text
    assert "set-cookie" not in answer.headers
    assert rows.count() == signed_in


# --- languages ----------------------------------------------------------------------------


def test_accept_language_chooses_russian_and_the_session_choice_wins(
    world: World, browser: Browser
) -> None:
    upload(world)
    browser.client.headers["Accept-Language"] = "ru-RU,ru;q=0.9,en;q=0.5"
    assert "Имя пользователя" in browser.client.get("/ui/signin").text
    browser.sign_in("uz.officer")
    page = browser.client.get("/ui/packages").text
    assert "Доступные мне пакеты" in page
    assert 'lang="ru"' in page
    assert "Asia/Tashkent" in page
    answer = browser.post("/ui/preferences", {"lang": "en"}, csrf_from="/ui/account")
    assert answer.status_code == 303
    assert "Packages I may read" in browser.client.get("/ui/packages").text


def test_errors_and_dates_are_russian_too(world: World, browser: Browser) -> None:
    package_id = upload(world)
    browser.client.headers["Accept-Language"] = "ru"
    browser.sign_in("kz.officer")
    missing = browser.client.get(f"/ui/packages/{package_id}")
    assert "Не найдено" in missing.text
    world.vault.release(world["uz.officer"], package_id, country="KZ")
    page = browser.client.get(f"/ui/packages/{package_id}").text
    months = ("янв", "февр", "мар", "апр", "мая", "июн", "июл", "авг", "сент", "окт", "нояб", "дек")
    assert any(month in page for month in months)
    assert "Время указано в поясе Asia/Almaty." in page


# --- the same visibility as the API -------------------------------------------------------


def test_pages_answer_as_the_api_does_for_every_role_and_relation(world: World) -> None:
    """Each package page against the JSON route doing the same, for each user: a page is
    allowed (200) exactly where the API is, and not found (404) exactly where it is."""
    from blo_vault.api.app import create_app

    released = upload(world, title="to KZ", handling=Handling.H0)
    world.vault.release(world["uz.officer"], released, country="KZ")
    to_agency = upload(world, title="to KZ-BORDER", classification=Classification.RESTRICTED)
    world.vault.release(world["uz.officer"], to_agency, country="KZ", agency="KZ-BORDER")
    private = upload(world, title="UZ only", classification=Classification.SECRET)
    files = {
        package_id: world.vault.get_package(world["uz.officer"], package_id)[0].files[0].id
        for package_id in (released, to_agency, private)
    }
    app = create_app(vault=world.vault)
    compared = 0
    seen: set[int] = set()
    for username in USERS:
        token = world.vault.login(username, PASSWORD).access_token
        with TestClient(app) as client:
            Browser(client).sign_in(username)
            for package_id in (released, to_agency, private, secrets.token_hex(16)):
                file_id = files.get(package_id, secrets.token_hex(16))
                pairs = [
                    (f"/ui/packages/{package_id}", f"/packages/{package_id}"),
                    (
                        f"/ui/packages/{package_id}/files/{file_id}",
                        f"/packages/{package_id}/files/{file_id}",
                    ),
                    (f"/ui/audit/packages/{package_id}", f"/packages/{package_id}/audit"),
                ]
                for page, route in pairs:
                    api = client.get(route, headers={"Authorization": f"Bearer {token}"})
                    web = client.get(page, follow_redirects=False)
                    assert web.status_code == api.status_code, (username, page, api.status_code)
                    compared += 1
                    seen.add(api.status_code)
    assert compared == len(USERS) * 4 * 3
    assert {200, 403, 404} <= seen  # every kind of answer occurs: the comparison could fail


def test_role_pages_answer_as_the_api_does_for_every_role(world: World) -> None:
    """The pages that concern no one package (ledger, checkpoint, explain, list, upload form)
    against the JSON route doing the same, for every user: refused exactly where the API
    refuses, with the same status."""
    from blo_vault.api.app import create_app

    package_id = upload(world)
    world.vault.release(world["uz.officer"], package_id, country="KZ")
    app = create_app(vault=world.vault)
    pairs = [
        ("/ui/audit/checkpoint", "/ledger/checkpoint"),
        ("/ui/audit/ledger", "/ledger/entries?start=0&end=1"),
        ("/ui/packages", "/packages"),
        (
            f"/ui/audit/explain?user=tj.officer&package={package_id}&action=read",
            f"/authz/explain?user=tj.officer&package={package_id}&action=read",
        ),
        (
            f"/ui/audit/explain?user=kz.officer&package={package_id}&action=read",
            f"/authz/explain?user=kz.officer&package={package_id}&action=read",
        ),
    ]
    seen: set[int] = set()
    for username in USERS:
        token = world.vault.login(username, PASSWORD).access_token
        with TestClient(app) as client:
            Browser(client).sign_in(username)
            for page, route in pairs:
                api = client.get(route, headers={"Authorization": f"Bearer {token}"})
                web = client.get(page, follow_redirects=False)
                assert web.status_code == api.status_code, (username, page, api.status_code)
                seen.add(api.status_code)
    assert {200, 403} <= seen  # both answers occur: the comparison could fail


def test_h3_restrictions_are_acknowledged_before_the_first_download(
    world: World, browser: Browser
) -> None:
    package_id = upload(world, handling=Handling.H3, handling_note="Only for the Oybek post.")
    world.vault.release(world["uz.officer"], package_id, country="KZ")
    file_id = world.vault.get_package(world["uz.officer"], package_id)[0].files[0].id
    browser.sign_in("kz.officer")
    page = browser.client.get(f"/ui/packages/{package_id}").text
    assert "Only for the Oybek post." in page
    assert 'id="acknowledge"' in page
    assert f"/files/{file_id}" not in page
    assert browser.client.get(f"/ui/packages/{package_id}/files/{file_id}").status_code == 403
    answer = browser.post(f"/ui/packages/{package_id}/acknowledge", {}, csrf_from="/ui/packages")
    assert answer.status_code == 303
    page = browser.client.get(f"/ui/packages/{package_id}").text
    assert 'id="acknowledge"' not in page
    assert f"/files/{file_id}" in page
    download = browser.client.get(f"/ui/packages/{package_id}/files/{file_id}")
    assert download.status_code == 200
    assert download.content == b"15 kg heroin at Bekabad"
    assert download.headers["x-vault-handling"] == "H3"
    assert download.headers["content-disposition"].startswith('attachment; filename="report.txt"')


def test_list_filters_narrow_through_the_service(world: World, browser: Browser) -> None:
    upload(world, title="restricted one", classification=Classification.RESTRICTED)
    upload(world, title="secret one", classification=Classification.SECRET, handling=Handling.H2)
    browser.sign_in("uz.officer")
    everything = browser.client.get("/ui/packages").text
    assert "restricted one" in everything
    assert "secret one" in everything
    assert 'id="banner-top">SECRET<' in everything
    only = browser.client.get("/ui/packages?classification=RESTRICTED").text
    assert "restricted one" in only
    assert "secret one" not in only
    assert 'id="banner-top">RESTRICTED<' in only
    assert "secret one" in browser.client.get("/ui/packages?handling=H2&country=UZ").text
    assert "No packages." in browser.client.get("/ui/packages?country=KZ").text
    assert "No packages." in browser.client.get("/ui/packages?since=2099-01-01").text
    assert "secret one" in browser.client.get("/ui/packages?until=2099-01-01").text
    assert browser.client.get("/ui/packages?classification=TOP").status_code == 422


def test_ledger_page_newest_first_paged_and_filtered(world: World, browser: Browser) -> None:
    upload(world)
    browser.sign_in("uz.auditor")
    first = browser.client.get("/ui/audit/ledger").text
    rows = [int(n) for n in re.findall(r'<tr class="decision-[a-z]+">\s*<td>(\d+)</td>', first)]
    assert len(rows) == 25
    assert rows == sorted(rows, reverse=True)
    # Its own read of page 1 is the newest entry the page could show.
    assert rows[0] == world.vault.ledger_size() - 2
    older_link = re.search(r'rel="next" href="([^"]+)"', first)
    assert older_link
    second = browser.client.get("/ui/audit/ledger" + html.unescape(older_link.group(1))).text
    older = [int(n) for n in re.findall(r'<tr class="decision-[a-z]+">\s*<td>(\d+)</td>', second)]
    assert older[0] == rows[-1] - 1  # the page before, however many reads came since
    uploads = browser.client.get("/ui/audit/ledger?actor=uz.officer&decision=allow").text
    actors = re.findall(
        r'<tr class="decision-([a-z]+)">\s*<td>\d+</td>\s*<td>[^<]*</td>\s*<td>([^<]*)</td>',
        uploads,
    )
    assert actors
    assert all(d == "allow" and a.startswith("uz.officer") for d, a in actors)
    assert "Oybek seizure report" not in uploads


def test_request_release_reject_and_revoke_through_the_pages(world: World) -> None:
    from blo_vault.api.app import create_app

    package_id = upload(world, handling=Handling.H2)
    world.vault.release(world["uz.officer"], package_id, country="KZ")
    app = create_app(vault=world.vault)
    with TestClient(app) as kz_client, TestClient(app) as sup_client:
        kz, sup = Browser(kz_client), Browser(sup_client)
        kz.sign_in("kz.officer")
        page = kz.client.get(f"/ui/packages/{package_id}").text
        assert 'id="request-release"' in page
        assert 'id="release"' not in page
        asked = kz.post(
            f"/ui/packages/{package_id}/release-requests",
            {"country": "tj"},
            csrf_from="/ui/account",
        )
        assert asked.status_code == 303
        sup.sign_in("uz.supervisor")
        inbox = sup.client.get("/ui/inbox").text
        assert package_id in inbox
        # The originating agency's officer may not approve: their inbox stays empty.
        with TestClient(app) as officer_client:
            officer = Browser(officer_client)
            officer.sign_in("uz.officer")
            assert "Nothing is waiting." in officer.client.get("/ui/inbox").text
        release_id = re.search(r'action="/ui/releases/([0-9a-f]{32})/reject"', inbox)
        assert release_id
        rejected = sup.post(f"/ui/releases/{release_id.group(1)}/reject", {}, csrf_from="/ui/inbox")
        assert rejected.status_code == 303
        assert "Nothing is waiting." in sup.client.get("/ui/inbox").text
        releases = world.vault.get_package(world["uz.officer"], package_id)[0].releases
        assert {(r.country, r.status.value) for r in releases} == {
            ("KZ", "active"),
            ("TJ", "rejected"),
        }
        kz_release = next(r.id for r in releases if r.country == "KZ")
        revoked = sup.post(
            f"/ui/packages/{package_id}/releases/{kz_release}/revoke", {}, csrf_from="/ui/inbox"
        )
        assert revoked.status_code == 303
        assert kz.client.get(f"/ui/packages/{package_id}").status_code == 404


def test_the_package_page_says_whether_a_package_is_signed(world: World, browser: Browser) -> None:
    """Issue 13: an unsigned package says so; a signed one names its signer, as the server
    checked it, and points to the command line's check for one that does not trust it."""
    import base64
    import io

    from vault import crypto
    from vault import manifest as m
    from vault.schemas import NewPackage
    from vault.seizures.digest import records_sha256
    from vault.service import IncomingFile
    from vault.service.signatures import SignedManifest

    unsigned = upload(world, title="plain")
    officer = world["uz.officer"]
    key = crypto.new_ed25519_private_key()
    public = base64.b64encode(crypto.ed25519_public_bytes(key.public_key())).decode()
    info = world.vault.register_key(officer, public)
    signed = m.Manifest(
        package_id="c" * 32,
        agency="UZ-CUSTOMS",
        classification="UNCLASSIFIED",
        handling="H0",
        handling_note="",
        title_sha256=m.sha256_text("signed"),
        description_sha256=m.sha256_text(""),
        records_sha256=records_sha256([]),
        files=(m.ManifestFile("a.txt", 1, m.sha256_text("a")),),
    )
    world.vault.upload(
        officer,
        NewPackage(title="signed", package_id="c" * 32),
        [IncomingFile(name="a.txt", reader=io.BytesIO(b"a"))],
        lambda: SignedManifest(info.id, signed.encode(), m.sign(key, signed)),
    )
    browser.sign_in("uz.officer")
    assert "Unsigned: nothing proves" in browser.client.get(f"/ui/packages/{unsigned}").text
    page = browser.client.get(f"/ui/packages/{'c' * 32}").text
    assert f"Signed by uz.officer (UZ-CUSTOMS), key {info.id}" in page
    assert "does not trust the server" in page
