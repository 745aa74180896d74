"""The witness's HTTP server: c2sp.org/tlog-witness ``POST /add-checkpoint`` and ``/healthz``.

A separate, tiny Starlette app (not the vault's API): a counterpart country runs it on its own
machine with only its witness directory. Routes are thin: read the body, call
:meth:`vault.witness.core.Witness.add_checkpoint`, and map its errors to statuses here, in one
place.

The witness faces the network alone (a proxy in front is the operator's choice), so it is
served with the vault's own HTTP protocol and limits (:func:`blo_vault.api.server.protocol_options`:
a deadline for request headers, keep-alive and header size limits) plus what the vault's app
does itself and this app must do here: a deadline for the whole request body (408), a cap on
open connections (in all, and per client address) kept below the process's file descriptor
limit, and a bound on how many checks run in threads at once. Without them a few hundred
half-sent requests held the witness's descriptors until it could accept nothing.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from blo_vault.api.errors import error_json
from blo_vault.api.server import VaultH11Protocol, protocol_options
from vault.errors import (
    AccessDenied,
    Conflict,
    InvalidInput,
    NotFound,
    StorageUnavailable,
    VaultError,
)
from vault.witness.core import MAX_BODY_BYTES, InconsistentProof, SizeConflict, Witness

__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "connection_cap",
    "create_witness_app",
    "error_response",
    "witness_server_options",
]

DEFAULT_HEADER_TIMEOUT_S = 10.0
"""As the vault's own default (VAULT_HEADER_TIMEOUT_SECONDS)."""
DEFAULT_BODY_TIMEOUT_S = 10.0
"""A body is at most 64 KiB: 10 s still lets it through a 7 KB/s link."""
DEFAULT_MAX_CONNECTIONS = 256
"""A witness hears from a few logs every few seconds; 256 is generous and far from the usual
1024 descriptors."""
# Checks in threads at once: they serialise on SQLite's write lock anyway, and each holds the
# database's three files open.
_CHECKS_AT_ONCE = 4
# Descriptors the process needs beside its client connections: the listening socket, stdio,
# logs, the event loop's own, and the SQLite files of the checks running at once.
_RESERVED_FDS = 16 + 3 * _CHECKS_AT_ONCE
_BUSY_BODY = error_json("unavailable", "too many connections")
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncache-control: no-store\r\ncontent-length: %d\r\n\r\n%s"
) % (len(_BUSY_BODY), _BUSY_BODY)


def _peer_host(protocol: object) -> str | None:
    # uvicorn's set of connections is typed as a union of its protocols; all of ours are h11.
    client = getattr(protocol, "client", None)
    return client[0] if client else None


def connection_cap(requested: int) -> int:
    """At most ``requested`` connections, and few enough that accepting more can't fail for
    want of a file descriptor (an EMFILE on accept stops all accepting for a second, and
    asyncio logs a traceback for each attempt).

    Half the free descriptors: the other half is for connections accepted in a burst and not
    yet refused (asyncio accepts up to the listen backlog before any is seen by the protocol;
    :func:`witness_server_options` keeps that backlog to a quarter of the cap)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(4, min(requested, (soft - _RESERVED_FDS) // 2))


def witness_server_options(
    *, header_timeout: float = DEFAULT_HEADER_TIMEOUT_S, max_connections: int
) -> dict[str, Any]:
    """uvicorn options for a witness: the vault's protocol and limits, with ``max_connections``
    open at once (a quarter of them per client address). Give it :func:`connection_cap`'s."""
    return {
        **protocol_options(
            header_timeout=header_timeout,
            protocol=_WitnessH11Protocol,
            max_connections=max_connections,
        ),
        # Also how many connections asyncio accepts at once, before the protocol can refuse
        # any (uvicorn's 2048 would take every descriptor in one burst).
        "backlog": max(16, max_connections // 4),
    }


class _WitnessH11Protocol(VaultH11Protocol):
    """The vault's protocol, refusing connections past the caps as soon as they are made.

    A refused connection costs a descriptor only for the moment it takes to answer 503 and
    close it. The cap per address keeps one client from filling the whole cap, so the logs'
    publishers (other addresses) still get in while it tries."""

    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_connections = max_connections
        self._max_per_address = max(1, max_connections // 4)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Connections already refused are closing, and no longer count.
        peers = [
            _peer_host(other) for other in self.connections if not other.transport.is_closing()
        ]
        same_peer = peers.count(_peer_host(self))
        if len(peers) > self._max_connections or same_peer > self._max_per_address:
            # Not logged: under a flood that would be a line per connection.
            transport.write(_BUSY)
            transport.close()


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


def _closing(status: int, body: str) -> Response:
    # The rest of the body is never read: close rather than keep a half-read connection alive.
    reply = _text(status, body)
    reply.headers["connection"] = "close"
    return reply


def create_witness_app(
    witness: Witness, *, body_timeout: float = DEFAULT_BODY_TIMEOUT_S
) -> Starlette:
    """The witness's ASGI app, serving ``witness``; a body not whole ``body_timeout`` seconds
    after its headers is answered 408 and its connection closed."""
    checks = anyio.CapacityLimiter(_CHECKS_AT_ONCE)

    async def add_checkpoint(request: Request) -> Response:
        try:
            # A deadline for the whole body, not a rate: it is small (MAX_BODY_BYTES), and a
            # client trickling it must not hold the connection for longer.
            with anyio.fail_after(body_timeout):
                body = await _read_body(request)
        except TimeoutError:
            return _closing(408, "request body too slow\n")
        except ClientDisconnect:
            return _closing(400, "request body incomplete\n")  # nobody is left to read it
        if body is None:
            return _closing(413, f"request body is larger than {MAX_BODY_BYTES} bytes\n")
        try:
            # SQLite and Ed25519 block: run off the event loop, a few at a time.
            lines = await anyio.to_thread.run_sync(witness.add_checkpoint, body, limiter=checks)
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
