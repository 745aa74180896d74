"""The witness's HTTP server: c2sp.org/tlog-witness ``POST /add-checkpoint`` and ``/healthz``.

A separate, tiny Starlette app (not the vault's API): a counterpart country runs it on its own
machine with only its witness directory. Routes are thin: read the body, call
:meth:`vault.witness.core.Witness.add_checkpoint`, and map its errors to statuses here, in one
place.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vault.errors import (
    AccessDenied,
    Conflict,
    InvalidInput,
    NotFound,
    StorageUnavailable,
    VaultError,
)
from vault.witness.core import MAX_BODY_BYTES, InconsistentProof, SizeConflict, Witness

# Most specific first: InconsistentProof is an InvalidInput, SizeConflict a Conflict.
_STATUS: tuple[tuple[type[VaultError], int], ...] = (
    (InconsistentProof, 422),
    (InvalidInput, 400),
    (NotFound, 404),
    (AccessDenied, 403),
    (Conflict, 409),
    (StorageUnavailable, 503),
)


def _text(status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    # The content type is set as a header so Starlette does not add "; charset=" to it:
    # tlog-witness requires exactly ``text/x.tlog.size`` on a size conflict.
    return Response(body.encode(), status_code=status, headers={"content-type": content_type})


def error_response(exc: VaultError) -> Response:
    """The HTTP reply for a refused ``add-checkpoint``."""
    if isinstance(exc, SizeConflict):
        return _text(409, f"{exc.witness_size}\n", "text/x.tlog.size")
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return _text(status, exc.message + "\n")
    return _text(500, "internal error\n")


async def _read_body(request: Request) -> bytes | None:
    """The request body, or None once it grows past MAX_BODY_BYTES (read no further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_witness_app(witness: Witness) -> Starlette:
    """The witness's ASGI app, serving ``witness``."""

    async def add_checkpoint(request: Request) -> Response:
        body = await _read_body(request)
        if body is None:
            return _text(413, f"request body is larger than {MAX_BODY_BYTES} bytes\n")
        try:
            # SQLite and Ed25519 block: run off the event loop.
            lines = await run_in_threadpool(witness.add_checkpoint, body)
        except VaultError as exc:
            return error_response(exc)
        return _text(200, lines)

    async def healthz(request: Request) -> Response:
        return _text(200, "ok\n")

    return Starlette(
        routes=[
            Route("/add-checkpoint", add_checkpoint, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
