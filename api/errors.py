"""The one place that maps vault errors to HTTP statuses and the one JSON error shape.

Every error body is ``{"error": {"code": ..., "message": ..., "receipt": ...}}``; ``receipt``
is the ledger sequence number of the refusal when one was recorded. No stack traces, paths or
internal names ever reach a client.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from blo_vault.api.routing import client_address, route_template
from vault import errors
from vault.service import Principal, Vault

__all__ = [
    "ERROR_RESPONSES",
    "RECEIPT_HEADER",
    "STATUS",
    "ErrorBody",
    "ErrorDetail",
    "StreamAborted",
    "error_json",
    "error_response",
    "install",
    "internal_error",
    "status_for",
]

log = logging.getLogger("vault.api")

STATUS: dict[type[errors.VaultError], int] = {
    errors.TooLarge: 413,
    errors.RequestTimeout: 408,
    errors.InvalidInput: 422,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.RateLimited: 429,
    errors.AuthenticationFailed: 401,
    errors.AccessDenied: 403,
    errors.LedgerCorrupt: 500,
    errors.IntegrityError: 500,
    errors.StorageUnavailable: 503,
    errors.ConfigError: 500,
}

RECEIPT_HEADER = "X-Vault-Receipt"


class ErrorDetail(BaseModel):
    """What went wrong, in words for people and a code for programs."""

    code: str
    message: str
    receipt: int | None = None


class ErrorBody(BaseModel):
    """The one error shape of the API."""

    error: ErrorDetail


# Documented on every route, so clients generated from /openapi.json get the real error model
# (FastAPI would otherwise describe 422 as its own {"detail": [...]}).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "Malformed request: an unparsable body, Content-Length or framing"),
        (401, "Not authenticated, or the token is invalid or expired"),
        (403, "Known to the caller, but not allowed"),
        (404, "Not found, or not for the caller to know about"),
        (408, "Request body too slow"),
        (409, "Conflicts with the current state"),
        (413, "Request body or file too large"),
        (422, "Invalid input"),
        (429, "Too many failed logins"),
        (431, "Request headers too large"),
        (503, "Database or object store unavailable"),
    )
}


class StreamAborted(Exception):
    """A streamed response failed after its headers were sent; the server drops the connection."""


def status_for(exc: errors.VaultError) -> int:
    """HTTP status of a vault error: the most specific class in STATUS wins."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_json(code: str, message: str, receipt: int | None = None) -> bytes:
    """The one error shape as bytes, for answers written below the app (the limits and server
    modules)."""
    return json.dumps({"error": {"code": code, "message": message, "receipt": receipt}}).encode()


def error_response(
    status: int, code: str, message: str, receipt: int | None = None
) -> JSONResponse:
    """The one error shape."""
    headers = {RECEIPT_HEADER: str(receipt)} if receipt is not None else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "receipt": receipt}},
        headers=headers,
    )


_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def _location(error: Any) -> str:
    """Where a validation error is, as the schema names it: the key of an unexpected field
    (``extra_forbidden``) is the client's own, shown as "?", as is any part that is not an
    index or a plain name."""
    parts = list(error.get("loc", ()))
    if error.get("type") == "extra_forbidden" and parts:
        parts[-1] = "?"
    return ".".join(
        str(p) if isinstance(p, int) or (isinstance(p, str) and _FIELD_NAME.fullmatch(p)) else "?"
        for p in parts
    )


def internal_error() -> JSONResponse:
    """The answer to an error no handler knew: nothing about it leaves the server."""
    return error_response(500, "internal_error", "internal error")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on the request's path."""
    allowed = set()
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.routes):
            allowed.add(method)
    return sorted(allowed)


async def _record_refusal(request: Request, reason: str) -> int | None:
    """Record a refusal of an authenticated caller's request that no operation recorded; None
    for an anonymous request or a token that is not the vault's (its refusal recorded by
    authentication). A token of the vault's that speaks for nobody now (session ended, user
    disabled) raises authentication's error: that is the answer, as it would have been had the
    route looked the caller up before reading the request (the read routes look up the caller
    with the read, after FastAPI has validated the parameters)."""
    vault: Vault = request.app.state.vault
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        # Refused before the route authenticated (a router-wide check such as unknown query
        # parameters): who asked is still known from the token, if it is a valid one.
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            principal = await run_in_threadpool(
                vault.authenticate, token.strip(), client=client_address(request)
            )
        except errors.VaultError:
            if not _signed_by_the_vault(vault, token.strip()):
                return None
            raise
    # The entry is committed before the answer goes out; the wait is not the event loop's.
    return await run_in_threadpool(record_refused_request, vault, principal, request, reason)


def records_refusal(exc: errors.VaultError) -> bool:
    """Whether a refusal the API or the pages made themselves is theirs to record: one that
    nothing recorded, and not an authentication failure or a lockout (the service records
    those) nor a server error."""
    status = status_for(exc)
    return exc.receipt is None and 400 <= status < 500 and status not in (401, 429)


def record_refused_request(
    vault: Vault, principal: Principal, request: Request, reason: str
) -> int:
    """Record ``principal``'s refused ``request`` under its route's template ("unmatched" for
    none): only a template may enter the append-only ledger, never the path as typed (and the
    service keeps a package id only if it is well-formed)."""
    package_id = request.path_params.get("package_id")
    return vault.record_refused_request(
        principal,
        route=f"{request.method} {route_template(request.scope)}",
        reason=reason,
        package_id=package_id if isinstance(package_id, str) else None,
    )


def _signed_by_the_vault(vault: Vault, token: str) -> bool:
    """Whether ``token`` is an unexpired access token the vault signed."""
    try:
        vault.tokens.verify(token)
    except errors.VaultError:
        return False
    return True


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(errors.VaultError)
    async def _vault_error(request: Request, exc: errors.VaultError) -> JSONResponse:
        status = status_for(exc)
        if records_refusal(exc):
            # Refused by the API itself (multipart framing, an unknown query parameter),
            # after the caller was known: recorded like the service's own refusals.
            try:
                exc.receipt = await _record_refusal(request, exc.code)
            except errors.VaultError as unauthenticated:
                return await _vault_error(request, unauthenticated)
        if status >= 500:
            log.error("request failed: %s (%s)", exc.code, type(exc).__name__)
        response = error_response(status, exc.code, exc.message, exc.receipt)
        if isinstance(exc, errors.RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, errors.RequestTimeout):
            # The rest of a too-slow body is never read: the connection can't carry another
            # request, and closing it frees it from the client that trickles.
            response.headers["Connection"] = "close"
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the fields but never echo the submitted values back; nor a name the client
        # made up (an unexpected key of a JSON body), which could carry anything (a name,
        # control and bidi characters): such a part is shown as "?".
        where = sorted({_location(err) for err in exc.errors()})
        try:
            receipt = await _record_refusal(request, errors.InvalidInput.code)
        except errors.VaultError as unauthenticated:
            return await _vault_error(request, unauthenticated)
        return error_response(422, "invalid_input", "invalid request: " + ", ".join(where), receipt)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "authentication_failed"}.get(
            exc.status_code, "http_error"
        )
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        response = error_response(exc.status_code, code, message)
        # Starlette's headers survive the reshaping.
        for name, value in (exc.headers or {}).items():
            response.headers.setdefault(name, value)
        if exc.status_code == 405:
            # RFC 9110 §15.5.6: Allow lists every method of the resource. Starlette names only
            # those of the first route on the path (GET and POST /packages are two routes).
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, StreamAborted):  # already logged where it happened
            log.exception("unexpected error: %s", type(exc).__name__)
        return internal_error()
