"""Request-body limits: size and time, answered with the one JSON error shape.

The streamed upload route enforces its own limits as it reads (per-file and per-package sizes,
and the same per-chunk timeout). Every other route takes small JSON bodies: they are read here
in full, up to ``max_json_bytes`` and with a deadline per chunk, before the app sees them, so
an oversized or trickling body never reaches a route or holds a worker thread.
"""

from __future__ import annotations

import json

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_COUNT = 100


async def send_error(send: Send, status: int, code: str, message: str) -> None:
    """Answer with the API's JSON error shape (see api.errors) and close the connection."""
    body = json.dumps({"error": {"code": code, "message": message, "receipt": None}}).encode()
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


class BodyLimitMiddleware:
    """Refuses oversized header blocks; buffers small request bodies with size and time
    limits; passes streamed uploads through."""

    def __init__(
        self, app: ASGIApp, *, max_json_bytes: int, timeout_seconds: float, streamed: set[str]
    ) -> None:
        self.app = app
        self.max_bytes = max_json_bytes
        self.timeout = timeout_seconds
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
        if (
            scope["type"] != "http"
            or scope["method"] not in _BODY_METHODS
            or (scope["method"], scope["path"]) in {("POST", p) for p in self.streamed}
        ):
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
                with anyio.fail_after(self.timeout):
                    message = await receive()
            except TimeoutError:
                await send_error(send, 408, "request_timeout", "request body too slow")
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
