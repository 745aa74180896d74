"""The officers' and supervisors' pages: sign-in, account, package list and page, download,
upload, releases and the supervisor's inbox. Each is as thin as the JSON route beside it:
read the form, call the one service, render the answer."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Form, Query, Request, Response
from pydantic import ValidationError

from blo_vault.api.downloads import download_response
from blo_vault.api.errors import status_for
from blo_vault.api.multipart import MultipartUpload, boundary_of
from blo_vault.api.routing import client_address
from blo_vault.api.web.context import (
    PREFIX,
    Posted,
    PostedSignedIn,
    SignedIn,
    VisitDep,
    check_csrf,
    visit,
)
from blo_vault.api.web.errors import record_refusal
from blo_vault.api.web.forms import PAGE_SIZE, choice, day_start, local_time, optional
from blo_vault.api.web.i18n import ZONES
from vault.errors import AuthenticationFailed, InvalidInput, RateLimited
from vault.listing import PackageFilter
from vault.models import Classification, Handling, Role
from vault.schemas import NewPackage
from vault.seizures.importer import MAX_IMPORT_BYTES, records_from_bytes

router = APIRouter(include_in_schema=False)


class RecordsRefused(InvalidInput):
    """The seizure-records file of a web upload was refused, every bad row and column listed
    in the message; nothing was stored."""


UPLOAD_PATH = PREFIX + "/upload"
HOME = {Role.ADMIN: PREFIX + "/admin", Role.AUDITOR: PREFIX + "/audit/ledger"}
PackageId = Annotated[str, "package id"]


def _home(role: Role) -> str:
    return HOME.get(role, PREFIX + "/packages")


@router.get("/")
def root(current: VisitDep) -> Response:
    """Sign-in, or the signed-in user's first page."""
    if current.principal is None:
        return current.redirect(PREFIX + "/signin")
    return current.redirect(_home(current.principal.role))


@router.get(PREFIX + "/signin")
def signin_form(current: VisitDep) -> Response:
    """The sign-in form."""
    return current.render("signin.html", refused=None, seconds=0)


@router.post(PREFIX + "/signin")
def signin(
    request: Request,
    current: Posted,
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """Sign in through the service's login (same lockout and ledger records as the API)."""
    try:
        tokens = current.vault.login(username, password, client=client_address(request))
    except AuthenticationFailed as exc:
        # The form again, with the reason in the reader's language (and 401 or 429).
        seconds = exc.retry_after if isinstance(exc, RateLimited) else 0
        return current.render(
            "signin.html", status=status_for(exc), refused=exc.code, seconds=seconds
        )
    current.restart().hold(tokens)
    current.principal = current.vault.authenticate(
        tokens.access_token, client=client_address(request)
    )
    return current.redirect(_home(current.principal.role))


@router.post(PREFIX + "/signout")
def signout(current: Posted) -> Response:
    """End the service session and the web session."""
    if current.principal is not None:
        current.vault.logout(current.principal)
    current.restart()
    return current.redirect(PREFIX + "/signin")


@router.get(PREFIX + "/account")
def account(current: SignedIn) -> Response:
    """Language, time zone and password."""
    return current.render("account.html", zones=ZONES, done=None)


@router.post(PREFIX + "/preferences")
def preferences(
    current: Posted,
    lang: Annotated[str, Form(max_length=16)] = "",
    tz: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """Keep the reader's language (and zone) in the session."""
    if lang:
        if lang not in current.web.languages.by_code:
            raise InvalidInput("not one of the languages offered")
        current.session.remember(lang=lang)
    if tz:
        if tz not in ZONES:
            raise InvalidInput("not one of the time zones offered")
        current.session.remember(tz=tz)
    back = PREFIX + "/account" if current.principal else PREFIX + "/signin"
    return current.redirect(back)


@router.post(PREFIX + "/account/password")
def change_password(
    current: PostedSignedIn,
    current_password: Annotated[str, Form(max_length=1024)] = "",
    new_password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """Change one's password: every session ends; this browser goes on in a new one."""
    tokens = current.vault.change_password(current.user, current_password, new_password)
    current.restart().hold(tokens)
    return current.render("account.html", zones=ZONES, done=tokens.receipt)


@router.get(PREFIX + "/packages")
def packages(
    current: SignedIn,
    country: Annotated[str, Query(max_length=2)] = "",
    agency: Annotated[str, Query(max_length=64)] = "",
    classification: Annotated[str, Query(max_length=16)] = "",
    handling: Annotated[str, Query(max_length=2)] = "",
    since: Annotated[str, Query(max_length=10)] = "",
    until: Annotated[str, Query(max_length=10)] = "",
    page: Annotated[int, Query(ge=1, le=10**6)] = 1,
) -> Response:
    """The packages the user may read, newest first, narrowed by the filters."""
    filters = PackageFilter(
        country=optional(country),
        agency=optional(agency),
        classification=choice(Classification, classification),
        handling=choice(Handling, handling),
        since=day_start(since, current.zone),
        until=day_start(until, current.zone, after=True),
    )
    found = current.vault.list_packages(
        current.user, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE, filters=filters
    )
    items = found.items[:PAGE_SIZE]
    shown = [Classification.UNCLASSIFIED, *(item.classification for item in items)]
    query = {
        "country": country,
        "agency": agency,
        "classification": classification,
        "handling": handling,
        "since": since,
        "until": until,
    }
    return current.render(
        "packages.html",
        classification=max(shown, key=lambda c: c.rank),
        items=items,
        page=page,
        more=len(found.items) > PAGE_SIZE,
        query=query,
        classifications=list(Classification),
        handlings=list(Handling),
        receipt=found.receipt,
    )


@router.get(PREFIX + "/packages/{package_id}")
def package(package_id: str, current: SignedIn) -> Response:
    """One package: files, markings, handling notices, releases, and the view's receipt."""
    detail, receipt = current.vault.get_package(current.user, package_id)
    originator = detail.agency == current.user.agency
    acknowledged = True
    if detail.handling == Handling.H3 and not originator:
        # Whether the first download still waits for the acknowledgement: the service's own
        # answer for this user (only ever about themselves and a package they may read).
        answer, _ = current.vault.explain(
            current.user, username=current.user.username, package_id=detail.id, action="download"
        )
        acknowledged = answer.allowed
    return current.render(
        "package.html",
        classification=detail.classification,
        package=detail,
        receipt=receipt,
        originator=originator,
        acknowledged=acknowledged,
        pending=[r for r in detail.releases if r.status == "pending"],
        in_force=[r for r in detail.releases if r.in_force],
    )


@router.get(PREFIX + "/packages/{package_id}/files/{file_id}")
def download(package_id: str, file_id: str, current: SignedIn) -> Response:
    """Stream one file exactly as the API does (H1 stamped, safe Content-Disposition)."""
    return download_response(current.vault.download(current.user, package_id, file_id))


@router.post(PREFIX + "/packages/{package_id}/acknowledge")
def acknowledge(package_id: str, current: PostedSignedIn) -> Response:
    """Accept an H3 package's restrictions before the first download."""
    current.vault.acknowledge(current.user, package_id)
    return current.redirect(f"{PREFIX}/packages/{package_id}")


@router.post(PREFIX + "/packages/{package_id}/releases")
def release(
    package_id: str,
    current: PostedSignedIn,
    country: Annotated[str, Form(max_length=2)] = "",
    agency: Annotated[str, Form(max_length=64)] = "",
    not_before: Annotated[str, Form(max_length=32)] = "",
    expires_at: Annotated[str, Form(max_length=32)] = "",
) -> Response:
    """Release to a country or one of its agencies, optionally between two times."""
    current.vault.release(
        current.user,
        package_id,
        country=country.strip().upper(),
        agency=optional(agency.upper()),
        not_before=local_time(not_before, current.zone),
        expires_at=local_time(expires_at, current.zone),
    )
    return current.redirect(f"{PREFIX}/packages/{package_id}")


@router.post(PREFIX + "/packages/{package_id}/release-requests")
def request_release(
    package_id: str,
    current: PostedSignedIn,
    country: Annotated[str, Form(max_length=2)] = "",
    agency: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """Ask the originating agency to release onward (H2)."""
    current.vault.request_release(
        current.user, package_id, country=country.strip().upper(), agency=optional(agency.upper())
    )
    return current.redirect(f"{PREFIX}/packages/{package_id}")


@router.post(PREFIX + "/packages/{package_id}/releases/{release_id}/revoke")
def revoke(package_id: str, release_id: str, current: PostedSignedIn) -> Response:
    """Withdraw a release."""
    current.vault.revoke_release(current.user, package_id, release_id)
    return current.redirect(f"{PREFIX}/packages/{package_id}")


@router.get(PREFIX + "/inbox")
def inbox(current: SignedIn) -> Response:
    """A supervisor's pending releases to approve or reject."""
    pending, receipt = current.vault.pending_releases(current.user)
    return current.render("inbox.html", pending=pending, receipt=receipt)


@router.post(PREFIX + "/releases/{release_id}/{decision}")
def decide(release_id: str, decision: str, current: PostedSignedIn) -> Response:
    """Approve or reject a pending release."""
    if decision not in ("approve", "reject"):
        raise InvalidInput("approve or reject")
    current.vault.decide_release(current.user, release_id, approve=decision == "approve")
    return current.redirect(PREFIX + "/inbox")


@router.get(UPLOAD_PATH)
def upload_form(current: SignedIn) -> Response:
    """The upload form."""
    return current.render(
        "upload.html",
        classifications=list(Classification),
        handlings=list(Handling),
        records_problems="",
    )


@router.post(UPLOAD_PATH)
async def upload(request: Request) -> Response:
    """Upload streamed exactly like the API's: the form's fields first (the CSRF token
    checked before a byte of a file is read), then each file sealed as it arrives."""
    current = await anyio.to_thread.run_sync(visit, request)
    principal = current.user
    vault = current.vault
    body = MultipartUpload(
        request.stream(),
        boundary_of(request.headers.get("content-type")),
        max_metadata_bytes=vault.settings.max_metadata_bytes,
        timeout_seconds=vault.settings.body_timeout_seconds,
    )

    def run() -> str:
        fields, records_file, files = body.form_with_records_file(
            check=lambda fields: check_csrf(current, fields.get("csrf", "")),
            max_records_bytes=MAX_IMPORT_BYTES,
        )
        try:
            meta = NewPackage(
                title=fields.get("title", ""),
                description=fields.get("description", ""),
                classification=choice(Classification, fields.get("classification"))
                or Classification.UNCLASSIFIED,
                handling=choice(Handling, fields.get("handling")) or Handling.H0,
                handling_note=fields.get("handling_note", ""),
            )
        except ValidationError:
            raise InvalidInput("invalid package details") from None
        try:
            records = (
                records_from_bytes(records_file[1], name=records_file[0]) if records_file else []
            )
        except InvalidInput as exc:
            raise RecordsRefused(exc.message) from None
        return vault.upload(principal, meta, files, records=records).package.id

    try:
        package_id = await body.run(run)
    except RecordsRefused as exc:
        # Refused before the service saw the upload, so recorded here like any refusal the
        # pages make; then the import's own list of rows and columns, so the file can be put
        # right (the list stays out of the ledger: only the route and the reason go in).
        await anyio.to_thread.run_sync(record_refusal, current, exc)
        return current.render(
            "upload.html",
            status=422,
            classifications=list(Classification),
            handlings=list(Handling),
            records_problems=exc.message,
        )
    return current.redirect(f"{PREFIX}/packages/{package_id}")
