"""Errors on the pages: the API's one mapping of vault errors to HTTP statuses, shown as a
page in the reader's language. The message is chosen by the error's code (the service's
English messages are for logs and the API), so every error reads in every language."""

from __future__ import annotations

import inspect
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from blo_vault.api.errors import record_refused_request, records_refusal, status_for
from blo_vault.api.web.context import (
    PREFIX,
    SignInRequired,
    Visit,
    existing_visit,
    passing_visit,
)
from blo_vault.api.web.i18n import N_
from blo_vault.api.web.security import is_page
from vault import errors

# By error code. A package one may not know exists and a random id both say "not_found".
MESSAGES = {
    "not_found": N_("Not found. There is nothing here, or nothing you may see."),
    "access_denied": N_("You may not do this."),
    "csrf_refused": N_("The form was stale or came from elsewhere. Nothing was changed."),
    "authentication_failed": N_("Unknown user or wrong password."),
    "rate_limited": N_("Too many failed attempts. Try again in %(seconds)s s."),
    "invalid_input": N_("Some of what was entered is not valid. Nothing was changed."),
    "too_large": N_("Too large: the file or package is over the size limit."),
    "request_timeout": N_("The upload was too slow and was stopped. Nothing was stored."),
    "conflict": N_("This can't be done in the current state (it may have been done already)."),
    "integrity_error": N_("Stored data failed its integrity check. Nothing was sent."),
    "ledger_corrupt": N_("Stored data failed its integrity check. Nothing was sent."),
    "storage_unavailable": N_("The vault is unavailable just now. Nothing was changed."),
    "config_error": N_("The vault is misconfigured. Tell the administrator."),
    "vault_missing": N_("The vault is misconfigured. Tell the administrator."),
}


def error_page(
    current: Visit, status: int, code: str, receipt: int | None, **values: Any
) -> Response:
    """The error page for ``code`` in the reader's language."""
    message = MESSAGES.get(
        code, MESSAGES["invalid_input"] if status < 500 else MESSAGES["storage_unavailable"]
    )
    return current.render(
        "error.html",
        status=status,
        message=current.language.gettext(message, **values),
        receipt=receipt,
        code=code,
    )


def record_refusal(current: Visit, exc: errors.VaultError) -> None:
    """Record, as the API records its own, a refusal the pages made of a signed-in user's
    request that nothing recorded (a forged or missing CSRF token, a bad filter or form):
    ``exc.receipt`` is then its ledger entry. Anonymous visits are not recorded (failed
    sign-ins are, by the service's login). Raises the service's error if recording fails.
    """
    if current.principal is not None and records_refusal(exc):
        exc.receipt = record_refused_request(
            current.vault, current.principal, current.request, exc.code
        )


async def _visitor(request: Request) -> Visit | None:
    """Who is asking, for an error page: the page's own visit, or, if the request failed
    before the page's dependencies ran, the browser's session if it has a live one. Never a
    new session: an error page must not store one for every request a junk cookie or none at
    all makes (see :func:`passing_visit`)."""
    current: Visit | None = getattr(request.state, "visit", None)
    if current is None:
        # The database, so not on the event loop.
        current = await run_in_threadpool(existing_visit, request)
    return current


async def _refused_page(request: Request, exc: errors.VaultError) -> Response:
    """The error page for a refusal, recorded first if the pages made it (see
    :func:`record_refusal`); a failure to record is answered instead."""
    current = await _visitor(request)
    if current is not None:
        try:
            await run_in_threadpool(record_refusal, current, exc)
        except errors.VaultError as failure:
            # Fail closed, as the API does: a refusal that can't be recorded answers with why.
            exc = failure
    values = {"seconds": exc.retry_after} if isinstance(exc, errors.RateLimited) else {}
    page = current or passing_visit(request)
    return error_page(page, status_for(exc), exc.code, exc.receipt, **values)


async def _delegate(handler: Any, request: Request, exc: Exception) -> Response:
    """Answer through the API's own handler (sync or async)."""
    result = handler(request, exc)
    if inspect.isawaitable(result):
        result = await result
    return cast(Response, result)


def install(app: FastAPI) -> None:
    """Answer errors on the pages with pages; the API's handlers keep everything else."""
    api_vault_error = app.exception_handlers[errors.VaultError]
    api_invalid = app.exception_handlers[RequestValidationError]
    api_http = app.exception_handlers[StarletteHTTPException]

    def on_page(request: Request) -> bool:
        return is_page(request.url.path, PREFIX)

    async def vault_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.VaultError)
        if not on_page(request):
            return await _delegate(api_vault_error, request, exc)
        return await _refused_page(request, exc)

    async def invalid(request: Request, exc: Exception) -> Response:
        if not on_page(request):
            return await _delegate(api_invalid, request, exc)
        # Which field, and what was typed there, stays out of the ledger and the page.
        return await _refused_page(request, errors.InvalidInput("invalid form or query"))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not on_page(request):
            return await _delegate(api_http, request, exc)
        current = await _visitor(request)
        return error_page(
            current or passing_visit(request),
            exc.status_code,
            "not_found" if exc.status_code == 404 else "invalid_input",
            None,
        )

    async def sign_in(request: Request, exc: Exception) -> Response:
        current: Visit | None = getattr(request.state, "visit", None)
        response = RedirectResponse(PREFIX + "/signin", status_code=303)
        return current.finish(response) if current else response

    app.add_exception_handler(errors.VaultError, vault_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(SignInRequired, sign_in)
