"""Request-body limits: size and time, answered with the one JSON error shape.

The streamed upload route enforces its own size limits as it reads (per-file and per-package
sizes). Every other route takes small JSON bodies: they are read here in full, up to
``max_json_bytes``, before the app sees them, so an oversized or trickling body never reaches
a route or holds a worker thread.

Time, for every body (:class:`PacedReceive`): nothing for ``body_timeout_seconds`` is too
slow, and so is less than ``body_min_rate`` bytes/s on average over each
``body_rate_window_seconds`` the server spends waiting for the body. A minimum rate rather than
a total deadline: a deadline short enough to stop a trickle would cut off a legitimate 2 GiB
upload over a slow border link, while a rate lets it run as long as it keeps moving. Only time
spent waiting for the client counts, not time the app spends storing what it already got.
"""

from __future__ import annotations

import time

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blo_vault.api.errors import error_json
from vault.errors import RequestTimeout

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_HEADER_COUNT",
    "BodyLimitMiddleware",
    "PacedReceive",
    "send_error",
]

_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_COUNT = 100


async def send_error(send: Send, status: int, code: str, message: str) -> None:
    """Answer with the API's JSON error shape (blo_vault.api.errors) and close the connection."""
    body = error_json(code, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class PacedReceive:
    """``receive`` that raises RequestTimeout when the body stalls or arrives too slowly."""

    def __init__(
        self, receive: Receive, *, idle_seconds: float, min_rate: int, window_seconds: float
    ) -> None:
        self._receive = receive
        self._idle = idle_seconds
        self._need = min_rate * window_seconds  # bytes per window; 0: no minimum
        self._window = window_seconds
        self._waited = 0.0  # seconds spent waiting for the client in the current window
        self._got = 0  # bytes received in the current window

    async def __call__(self) -> Message:
        idle_left = self._idle
        while True:
            limit = min(idle_left, self._window - self._waited) if self._need else idle_left
            started = time.monotonic()
            with anyio.move_on_after(limit):
                message = await self._receive()
                self._count(time.monotonic() - started, len(message.get("body", b"")))
                return message
            waited = time.monotonic() - started
            idle_left -= waited
            if idle_left <= 0:
                raise RequestTimeout("request body too slow: nothing received in time")
            self._count(waited, 0)

    def _count(self, waited: float, size: int) -> None:
        self._waited += waited
        self._got += size
        if self._need and self._waited >= self._window:
            if self._got < self._need:
                raise RequestTimeout(
                    f"request body too slow: under {self._need / self._window:.0f} bytes/s"
                )
            self._waited, self._got = 0.0, 0


class BodyLimitMiddleware:
    """Refuses oversized header blocks; buffers small request bodies with size and time
    limits; passes streamed uploads through."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_json_bytes: int,
        timeout_seconds: float,
        min_rate: int,
        rate_window_seconds: float,
        streamed: set[str],
    ) -> None:
        self.app = app
        self.max_bytes = max_json_bytes
        self.timeout = timeout_seconds
        self.min_rate = min_rate
        self.window = rate_window_seconds
        self.streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            len(scope["headers"]) > MAX_HEADER_COUNT
            or sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > MAX_HEADER_BYTES
        ):
            # uvicorn's own limit only bites while headers are still arriving; a large header
            # block delivered in one packet gets through it, so it is checked here as well.
            await send_error(send, 431, "too_large", "request headers too large")
            return
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        receive = PacedReceive(
            receive, idle_seconds=self.timeout, min_rate=self.min_rate, window_seconds=self.window
        )
        if (scope["method"], scope["path"]) in {("POST", p) for p in self.streamed}:
            # The route reads as it goes; a RequestTimeout from receive ends it as a 408.
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await send_error(send, 400, "invalid_input", "invalid Content-Length")
                return
            if int(declared) > self.max_bytes:
                await send_error(
                    send, 413, "too_large", f"request body over {self.max_bytes} bytes"
                )
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            try:
                message = await receive()
            except RequestTimeout as exc:
                await send_error(send, 408, exc.code, exc.message)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_error(
                    send, 413, "too_large", f"request body over {self.max_bytes} bytes"
                )
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for disconnect, as Starlette expects

        await self.app(scope, replay, send)
