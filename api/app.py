"""FastAPI application factory. Routes parse, call the service, and shape the reply."""

from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from blo_vault.api import errors as api_errors
from blo_vault.api import memory, web
from blo_vault.api.downloads import download_response
from blo_vault.api.limits import BodyLimitMiddleware
from blo_vault.api.multipart import MultipartUpload, boundary_of
from blo_vault.api.observability import Metrics, ObservabilityMiddleware
from blo_vault.api.routing import client_address
from vault import __version__
from vault.authz import ACTIONS
from vault.config import Settings, load_settings
from vault.errors import AuthenticationFailed, InvalidInput, NotFound, VaultError
from vault.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from vault.schemas import (
    USERNAME,
    AuditView,
    CheckpointInfo,
    ConsistencyProof,
    Explanation,
    InclusionProof,
    LedgerEntries,
    LedgerReport,
    LoginResult,
    OneLineText,
    PackageDetail,
    PackageList,
    Receipt,
    ReleaseResult,
    UploadResult,
    WitnessedCheckpointInfo,
)
from vault.service import Principal, Vault
from vault.service.pending import PendingRead
from vault.service.reads import AuditedReads

__all__ = [
    "PrincipalDep",
    "VaultDep",
    "create_app",
    "current_principal",
    "get_vault",
]

log = logging.getLogger("vault.api")
RECEIPT = api_errors.RECEIPT_HEADER

# The forms the service accepts, in the schema too (vault.schemas: check_id, check_username,
# check_country, check_agency; vault.authz.ACTIONS), so a client generated from /openapi.json
# can't send a request the schema allows and the service refuses as malformed.
ID_PATTERN = r"^[0-9a-f]{32}$"
USERNAME_PATTERN = f"^{USERNAME.pattern}$"
COUNTRY_PATTERN = r"^[A-Z]{2}$"
AGENCY_PATTERN = r"^[A-Z0-9][A-Z0-9_-]{1,63}$"
ACTION_PATTERN = "^(" + "|".join(re.escape(a) for a in ACTIONS) + ")$"


def _id(what: str) -> Any:
    return Path(pattern=ID_PATTERN, min_length=32, max_length=32, description=f"{what} id")


PackageId = Annotated[str, _id("package")]
FileId = Annotated[str, _id("file")]
ReleaseId = Annotated[str, _id("release")]
_bearer = HTTPBearer(auto_error=False, description="Token from POST /auth/login")
_metrics_bearer = HTTPBearer(
    auto_error=False, scheme_name="MetricsToken", description="VAULT_METRICS_TOKEN"
)


class LoginRequest(BaseModel):
    """Credentials for a token."""

    model_config = ConfigDict(extra="forbid")
    # A refused login records the name it was tried with: no controls may reach the ledger.
    username: OneLineText = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class ReleaseRequest(BaseModel):
    """Whom to release a package to, and optionally when."""

    model_config = ConfigDict(extra="forbid")
    country: str = Field(min_length=2, max_length=2, pattern=COUNTRY_PATTERN)
    agency: str | None = Field(default=None, min_length=2, max_length=64, pattern=AGENCY_PATTERN)
    not_before: datetime | None = None
    expires_at: datetime | None = None


async def get_vault(request: Request) -> Vault:
    """The service instance of this app."""
    vault: Vault = request.app.state.vault
    return vault


VaultDep = Annotated[Vault, Depends(get_vault)]


def current_principal(
    request: Request,
    vault: VaultDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The authenticated caller; 401 without a valid bearer token.

    Kept on the request too: a refusal raised later in the request (FastAPI's validation of
    the body or query runs after this) is then recorded against the caller.
    """
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthenticationFailed("a bearer token is required")
    principal = vault.authenticate(credentials.credentials, client=client_address(request))
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def bearer_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's bearer token, its signature and times checked (401 if they fail), for the
    read routes, which look the caller up in the same thread trip and database transaction as
    the read itself (:func:`_read_as`).

    Async: the check is remembered per token (vault.tokens), so it costs no thread-pool trip;
    a token that fails it goes through ``authenticate`` to have its refusal recorded."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthenticationFailed("a bearer token is required")
    vault: Vault = request.app.state.vault
    token = credentials.credentials
    try:
        vault.tokens.verify(token)
    except AuthenticationFailed:
        await anyio.to_thread.run_sync(
            functools.partial(vault.authenticate, token, client=client_address(request))
        )
        raise
    return token


BearerDep = Annotated[str, Depends(bearer_token)]
_Read = TypeVar("_Read")


def _reads(request: Request) -> AuditedReads:
    vault: Vault = request.app.state.vault
    return vault.reads


async def _read_as(
    request: Request, token: str, read: Callable[[Principal], PendingRead[_Read]]
) -> PendingRead[_Read]:
    """``read`` as the caller ``token`` speaks for: the caller's lookup (session alive, user
    enabled, role and clearance as they are now) and the read in one read-only transaction,
    on the loop's thread or in one trip to the thread pool (AuditedReads.inline). What comes
    back still needs its ledger entry (AuditedReads.finish or .receipt); a refusal is raised
    here only once its own entry is committed."""
    reads = _reads(request)

    def remember(caller: Principal) -> None:
        # For a refusal raised later in the request (see current_principal).
        request.state.principal = caller

    def run() -> PendingRead[_Read]:
        return reads.prepare(token, read, remember, client=client_address(request))

    try:
        return run() if reads.inline else await anyio.to_thread.run_sync(run)
    except VaultError as exc:
        await reads.settle(exc)
        raise


def _json(model: BaseModel, receipt: int) -> Response:
    """A read's answer serialised once, by pydantic: returned as a Response, so FastAPI does
    not dump, re-validate and re-encode the model (the route's ``response_model`` still
    documents it)."""
    return Response(
        model.model_dump_json(),
        media_type="application/json",
        headers={RECEIPT: str(receipt)},
    )


def _declared_query(dependant: Any) -> Iterator[str]:
    """Names of the query parameters a route (or any of its dependencies) declares."""
    for field in getattr(dependant, "query_params", ()):
        yield field.alias
    for sub in getattr(dependant, "dependencies", ()):
        yield from _declared_query(sub)


async def known_query_only(request: Request) -> None:
    """InvalidInput (422) for a query parameter the route does not declare: default deny, so
    the schema's parameter list is the whole of what a route reads. Names are not echoed.

    Async on purpose: it only reads the request, and a plain ``def`` dependency would cost
    every request of every route a trip through the thread pool."""
    if not request.query_params:
        return
    route = request.scope.get("route")
    declared = set(_declared_query(getattr(route, "dependant", None)))
    if any(name not in declared for name in request.query_params):
        raise InvalidInput("unknown query parameter")


def _receipt(response: Response, receipt: int) -> None:
    response.headers[RECEIPT] = str(receipt)


router = APIRouter(responses=api_errors.ERROR_RESPONSES, dependencies=[Depends(known_query_only)])


@router.get("/healthz", tags=["operations"])
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"])
def readyz(vault: VaultDep) -> dict[str, str]:
    """Readiness: database and object store answer."""
    vault.check_ready()
    return {"status": "ready"}


@router.post("/auth/login", tags=["auth"])
def login(body: LoginRequest, request: Request, vault: VaultDep, response: Response) -> LoginResult:
    """Start a session: a short-lived bearer token and a refresh token (rate-limited)."""
    result = vault.login(body.username, body.password, client=client_address(request))
    _receipt(response, result.receipt)
    _no_store(response)
    return result


class RefreshRequest(BaseModel):
    """The session's current refresh token."""

    model_config = ConfigDict(extra="forbid")
    refresh_token: str = Field(min_length=1, max_length=200)


@router.post("/auth/refresh", tags=["auth"])
def refresh(
    body: RefreshRequest, request: Request, vault: VaultDep, response: Response
) -> LoginResult:
    """A new bearer token and a new refresh token; the one sent is spent. Sending a spent one
    again ends the whole session (it was copied)."""
    result = vault.refresh(body.refresh_token, client=client_address(request))
    _receipt(response, result.receipt)
    _no_store(response)
    return result


@router.post("/auth/logout", tags=["auth"])
def logout(vault: VaultDep, principal: PrincipalDep, response: Response) -> Receipt:
    """End the caller's session: its bearer and refresh tokens are refused from now on."""
    receipt = vault.logout(principal)
    _receipt(response, receipt)
    return Receipt(receipt=receipt)


class PasswordChange(BaseModel):
    """The caller's current password and the new one."""

    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    new_password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)


@router.post("/auth/password", tags=["auth"])
def change_password(
    body: PasswordChange, vault: VaultDep, principal: PrincipalDep, response: Response
) -> LoginResult:
    """Change the caller's password. Every session of theirs ends; the answer is a new one."""
    result = vault.change_password(principal, body.current_password, body.new_password)
    _receipt(response, result.receipt)
    _no_store(response)
    return result


def _no_store(response: Response) -> None:
    # Tokens in a body: no cache or proxy may keep a copy (RFC 6749, section 5.1).
    response.headers["Cache-Control"] = "no-store"


@router.get("/packages", tags=["packages"], response_model=PackageList)
async def list_packages(
    request: Request,
    token: BearerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Response:
    """The packages the caller may read, newest first."""
    reads = _reads(request)
    pending = await _read_as(
        request, token, lambda caller: reads.listing(caller, limit=limit, offset=offset)
    )
    result = await reads.finish(pending)
    return _json(result, result.receipt)


@router.post(
    "/packages",
    status_code=201,
    tags=["packages"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["metadata", "file"],
                        "properties": {
                            "metadata": {
                                "type": "string",
                                "description": "JSON of NewPackage; must be the first part",
                            },
                            "records": {
                                "type": "string",
                                "description": "optional, second: a JSON list of seizure "
                                "records (date, crossing_point, direction, commodity, "
                                "quantity, unit, concealment, transport, detained)",
                            },
                            "file": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            },
                        },
                    },
                    "encoding": {"metadata": {"contentType": "application/json"}},
                }
            },
        }
    },
)
async def upload_package(
    request: Request,
    response: Response,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> UploadResult:
    """Upload a package: a ``metadata`` JSON part, optionally a ``records`` JSON part (seizure
    records), then one ``file`` part per file, streamed."""
    vault: Vault = request.app.state.vault
    principal = await anyio.to_thread.run_sync(current_principal, request, vault, credentials)
    body = MultipartUpload(
        request.stream(),
        boundary_of(request.headers.get("content-type")),
        max_metadata_bytes=vault.settings.max_metadata_bytes,
        timeout_seconds=vault.settings.body_timeout_seconds,
    )

    def run() -> UploadResult:
        meta = body.metadata()
        records, files = body.records_then_files()
        return vault.upload(principal, meta, files, body.signature, records=records)

    result = await body.run(run)
    _receipt(response, result.receipt)
    return result


@router.get("/packages/{package_id}", tags=["packages"], response_model=PackageDetail)
async def show_package(package_id: PackageId, request: Request, token: BearerDep) -> Response:
    """One package the caller may read; 404 if it does not exist or may not be known."""
    reads = _reads(request)
    pending = await _read_as(request, token, lambda caller: reads.package(caller, package_id))
    detail, receipt = await reads.finish(pending)
    return _json(detail, receipt)


@router.get(
    "/packages/{package_id}/files/{file_id}",
    tags=["packages"],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download_file(
    package_id: PackageId, file_id: FileId, request: Request, token: BearerDep
) -> Response:
    """Stream one file's plaintext; ``X-Content-SHA256`` carries the digest to check."""
    reads = _reads(request)
    pending = await _read_as(
        request, token, lambda caller: reads.start_download(caller, package_id, file_id)
    )
    receipt = await reads.receipt(pending)
    # The key is unwrapped and the first segments read (a small file whole) in one trip to
    # the thread pool: the store may be across a network (MinIO).
    return await anyio.to_thread.run_sync(lambda: download_response(pending.answer(receipt)))


@router.post("/packages/{package_id}/releases", status_code=201, tags=["releases"])
def release_package(
    package_id: PackageId,
    body: ReleaseRequest,
    vault: VaultDep,
    principal: PrincipalDep,
    response: Response,
) -> ReleaseResult:
    """Release a package to a country, or one agency of it."""
    result = vault.release(
        principal,
        package_id,
        country=body.country,
        agency=body.agency,
        not_before=body.not_before,
        expires_at=body.expires_at,
    )
    _receipt(response, result.receipt)
    return result


class ReleaseRequestBody(BaseModel):
    """Whom a recipient asks the originating agency to release the package to."""

    model_config = ConfigDict(extra="forbid")
    country: str = Field(min_length=2, max_length=2, pattern=COUNTRY_PATTERN)
    agency: str | None = Field(default=None, min_length=2, max_length=64, pattern=AGENCY_PATTERN)


@router.post("/packages/{package_id}/release-requests", status_code=201, tags=["releases"])
def request_release(
    package_id: PackageId,
    body: ReleaseRequestBody,
    vault: VaultDep,
    principal: PrincipalDep,
    response: Response,
) -> ReleaseResult:
    """Ask the originating agency to release the package onward (H2); a supervisor decides."""
    result = vault.request_release(principal, package_id, country=body.country, agency=body.agency)
    _receipt(response, result.receipt)
    return result


@router.post("/releases/{release_id}/approve", tags=["releases"])
def approve_release(
    release_id: ReleaseId, vault: VaultDep, principal: PrincipalDep, response: Response
) -> ReleaseResult:
    """Approve a pending release (a supervisor of the originating agency, not the requester)."""
    result = vault.decide_release(principal, release_id, approve=True)
    _receipt(response, result.receipt)
    return result


@router.post("/releases/{release_id}/reject", tags=["releases"])
def reject_release(
    release_id: ReleaseId, vault: VaultDep, principal: PrincipalDep, response: Response
) -> ReleaseResult:
    """Reject a pending release."""
    result = vault.decide_release(principal, release_id, approve=False)
    _receipt(response, result.receipt)
    return result


@router.post("/packages/{package_id}/releases/{release_id}/revoke", tags=["releases"])
def revoke_release(
    package_id: PackageId,
    release_id: ReleaseId,
    vault: VaultDep,
    principal: PrincipalDep,
    response: Response,
) -> ReleaseResult:
    """Revoke a release; it stops granting access on the next request."""
    result = vault.revoke_release(principal, package_id, release_id)
    _receipt(response, result.receipt)
    return result


@router.post("/packages/{package_id}/acknowledge", tags=["packages"])
def acknowledge(
    package_id: PackageId, vault: VaultDep, principal: PrincipalDep, response: Response
) -> Receipt:
    """Acknowledge an H3 package's restrictions (needed before the first download)."""
    receipt = vault.acknowledge(principal, package_id)
    _receipt(response, receipt)
    return Receipt(receipt=receipt)


@router.get("/packages/{package_id}/audit", tags=["audit"])
def audit_package(
    package_id: PackageId, vault: VaultDep, principal: PrincipalDep, response: Response
) -> AuditView:
    """Package metadata for auditors: who, when, how sensitive, to whom; never content."""
    view, receipt = vault.audit_package(principal, package_id)
    _receipt(response, receipt)
    return view


@router.get("/authz/explain", tags=["audit"])
def explain(
    vault: VaultDep,
    principal: PrincipalDep,
    response: Response,
    user: Annotated[str, Query(min_length=2, max_length=64, pattern=USERNAME_PATTERN)],
    package: Annotated[str, Query(min_length=32, max_length=32, pattern=ID_PATTERN)],
    action: Annotated[str, Query(min_length=1, max_length=32, pattern=ACTION_PATTERN)],
) -> Explanation:
    """Why a user may or may not do an action to a package (full answer for auditors, admins)."""
    result, receipt = vault.explain(principal, username=user, package_id=package, action=action)
    _receipt(response, receipt)
    return result


@router.get("/ledger/verify", tags=["ledger"])
def verify_ledger(vault: VaultDep, principal: PrincipalDep, response: Response) -> LedgerReport:
    """Verify chain, Merkle tree and signed checkpoints (auditors and admins); recorded."""
    # On the ledger service itself: the facade's verify (the CLI's) records nothing, so that
    # it can run on a copy of a suspect database, and the facade has no room for a variant.
    report = vault.ledger.verify_ledger(principal, recorded=True)
    if report.receipt is not None:
        _receipt(response, report.receipt)
    return report


@router.get("/ledger/checkpoint", tags=["ledger"])
def ledger_checkpoint(
    vault: VaultDep, principal: PrincipalDep, response: Response
) -> CheckpointInfo:
    """The latest signed checkpoint (C2SP signed note) and the log's verifier key."""
    result = vault.latest_checkpoint(principal)
    if result.receipt is not None:
        _receipt(response, result.receipt)
    return result


@router.get("/ledger/entries", tags=["ledger"])
def ledger_entries(
    vault: VaultDep,
    principal: PrincipalDep,
    start: Annotated[int, Query(ge=0, le=2**62)],
    end: Annotated[int, Query(ge=0, le=2**62)],
    response: Response,
) -> LedgerEntries:
    """Entries ``[start, end)``, base64 of their exact bytes: at most 1000 (a longer range is
    cut to its first 1000; ask again from ``start`` + the number returned), none if ``end`` is
    not above ``start``."""
    result = vault.ledger_entries(principal, start, end)
    if result.receipt is not None:
        _receipt(response, result.receipt)
    return result


@router.get("/ledger/proof/inclusion/{seq}", tags=["ledger"])
def ledger_inclusion(
    seq: Annotated[int, Path(ge=0, le=2**62)],
    vault: VaultDep,
    principal: PrincipalDep,
    response: Response,
) -> InclusionProof:
    """RFC 9162 inclusion proof of an entry against the latest checkpoint."""
    result = vault.inclusion_proof(principal, seq)
    if result.receipt is not None:
        _receipt(response, result.receipt)
    return result


@router.get("/ledger/witnessed-checkpoint", tags=["ledger"])
def ledger_witnessed_checkpoint(
    vault: VaultDep, principal: PrincipalDep, response: Response
) -> WitnessedCheckpointInfo:
    """The newest checkpoint a quorum of witnesses cosigned (VAULT_WITNESS_POLICY): the
    log-signed note with the witnesses' cosignature lines. 404 until one is published."""
    result = vault.witnessed_checkpoint(principal)
    if result.receipt is not None:
        _receipt(response, result.receipt)
    return result


class ConsistencyRequest(BaseModel):
    """A checkpoint the caller saved earlier."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: str = Field(min_length=1, max_length=10_000)


@router.post("/ledger/proof/consistency", tags=["ledger"])
def ledger_consistency(
    body: ConsistencyRequest,
    vault: VaultDep,
    principal: PrincipalDep,
    response: Response,
) -> ConsistencyProof:
    """RFC 9162 consistency proof from a saved checkpoint to the latest one."""
    result = vault.consistency_proof(principal, body.checkpoint)
    if result.receipt is not None:
        _receipt(response, result.receipt)
    return result


async def _checkpoint_cadence(vault: Vault) -> None:
    """Sign a checkpoint every interval while the ledger grows (no-op when it has not)."""
    while True:
        await anyio.sleep(vault.settings.checkpoint_interval_seconds)
        try:
            await anyio.to_thread.run_sync(vault.checkpoint)
        except VaultError as exc:
            log.error("checkpoint not signed: %s", exc.message)


def _metrics_route(app: FastAPI, service: Vault, metrics: Metrics) -> None:
    """``GET /metrics``: this process's Prometheus metrics, behind the metrics token."""

    @app.get(
        "/metrics",
        tags=["operations"],
        dependencies=[Depends(known_query_only)],
        # Not response_class=PlainTextResponse: FastAPI would then document the JSON errors
        # as text/plain too.
        response_class=Response,
        responses={
            **api_errors.ERROR_RESPONSES,
            200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}},
        },
    )
    def prometheus_metrics(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_metrics_bearer)],
    ) -> PlainTextResponse:
        """Prometheus metrics of this process (requests, latencies, decisions, ledger, bytes).

        Needs the bearer token of ``VAULT_METRICS_TOKEN``; 404 when none is configured.
        """
        expected = service.settings.metrics_token
        if expected is None:
            raise NotFound("metrics are off: no VAULT_METRICS_TOKEN is configured")
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            raise AuthenticationFailed("the metrics token is required")
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


# FastAPI's native OpenTelemetry follows any provider configured in the process and would
# export every request's path and query string (package ids, search terms). The vault's record
# of requests is its ledger and its own metrics; and with it off, no request pays for looking
# the providers up.
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def create_app(settings: Settings | None = None, *, vault: Vault | None = None) -> FastAPI:
    """Build the app around a service instance (opened from settings when not given)."""
    owned = vault is None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service: Vault = app.state.vault
        if publisher is not None:
            publisher.start()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_checkpoint_cadence, service)
            tasks.start_soon(memory.trim_every, service.settings.malloc_trim_seconds, trim)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
                if publisher is not None:
                    await anyio.to_thread.run_sync(publisher.stop)
        if owned:
            service.close()

    app = FastAPI(
        title="BLO Vault",
        version=__version__,
        description="Encrypted, access-controlled, audited exchange between Border Liaison Offices",
        lifespan=lifespan,
        telemetry=NO_TELEMETRY,
    )
    # The server never creates a vault: 'blovault admin init' does, once.
    service = vault if vault is not None else Vault.open(settings or load_settings(), create=False)
    app.state.vault = service
    # Built here, not in the lifespan, so a bad VAULT_WITNESS_POLICY stops the start at once.
    publisher = service.witness_publisher()
    trim = memory.glibc_trim()
    api_errors.install(app)
    app.include_router(router)
    # Imported here: these routes use this module's dependencies (issues 16, 13 and 18).
    from blo_vault.api import keys, ledger_export, seizures

    for extra in (seizures.router, keys.router, ledger_export.router):
        app.include_router(extra)
    web.install(app)  # the pages (api/web): their routes, static files and security headers
    metrics = Metrics(service)
    _metrics_route(app, service, metrics)
    app.add_middleware(
        BodyLimitMiddleware,
        max_json_bytes=service.settings.max_json_bytes,
        timeout_seconds=service.settings.body_timeout_seconds,
        min_rate=service.settings.body_min_rate,
        rate_window_seconds=service.settings.body_rate_window_seconds,
        streamed={"/packages", web.UPLOAD_PATH},
    )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return app
