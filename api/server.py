"""The HTTP server around the app: uvicorn's h11 protocol, configured from the settings.

``blovault serve`` and the tests' servers both take their uvicorn options from
:func:`server_options`, so what is tested is what runs; ``blovault witness serve`` takes the
same protocol and limits from :func:`protocol_options`. Two things the app can't do itself
happen here, in a small subclass of uvicorn's h11 protocol:

* a deadline for the request *headers* (uvicorn has none: headers trickled a byte every few
  seconds would hold a connection forever); the body's pace is checked by the app
  (``blo_vault.api.limits``), which sees it as it arrives;
* a large request body is received in larger pieces than uvicorn's (see :class:`_BodyFlow`);
* the refusals the server sends before or beside the app (a bad request line, headers too
  large, a malformed chunked body, headers too slow) carry the API's one JSON error shape
  instead of uvicorn's plain text, and a refusal in the middle of a request's body is handed
  to the app's access log and metrics (``ANSWERED``) so they count what the client got.

What stays outside the JSON shape: a connection closed before a whole request line arrives
(nothing can be answered), and a failure after a response has begun (the connection is cut).
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
from typing import Any

import h11
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol

from blo_vault.api.errors import error_json
from blo_vault.api.observability import ANSWERED, SECURITY_HEADERS
from vault.config import Settings

__all__ = [
    "MAX_HEADER_BYTES",
    "VaultH11Protocol",
    "protocol_options",
    "server_options",
]

log = logging.getLogger("vault.api")

MAX_HEADER_BYTES = 16 * 1024
# How much of a request body may wait for the app before reading from the socket pauses
# (uvicorn's own limit is 64 KiB), and the most one read from the socket takes (asyncio's is
# 256 KiB). Memory per connection stays bounded by their sum.
BODY_HIGH_WATER = 2 * 1024 * 1024
RECV_BYTES = 1024 * 1024


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options for serving the vault: protocol, proxies, limits and timeouts."""
    return {
        **protocol_options(header_timeout=settings.header_timeout_seconds),
        # Forwarded headers only from configured proxies; with none, uvicorn's proxy layer is
        # off altogether (FORWARDED_ALLOW_IPS in the environment is then ignored too).
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": list(settings.trusted_proxies) or None,
    }


def protocol_options(
    *,
    header_timeout: float,
    protocol: type[VaultH11Protocol] | None = None,
    **protocol_kwargs: Any,
) -> dict[str, Any]:
    """uvicorn options every server of ours takes (the vault's, a witness's): the protocol
    with its header deadline, keep-alive and header size limits, no Server header.

    ``protocol`` (a VaultH11Protocol subclass) and ``protocol_kwargs`` let another server add
    its own limits on top without copying these."""
    return {
        "http": functools.partial(
            protocol or VaultH11Protocol, header_timeout=header_timeout, **protocol_kwargs
        ),
        "server_header": False,
        "timeout_keep_alive": 5,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }


class VaultH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and JSON refusals."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._max_incomplete = self.config.h11_max_incomplete_event_size or MAX_HEADER_BYTES

    # -- the header deadline: armed whenever the connection waits for a request's headers --

    def _sync_header_timer(self) -> None:
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_timeout, self._headers_late)
        elif not waiting and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._refuse(408, "request_timeout", "request headers too slow")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _BodyFlow(transport, self)
        self._sync_header_timer()

    def handle_events(self) -> None:
        super().handle_events()
        self._sync_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._sync_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    # -- refusals by the server itself ---------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """h11 could not parse what the client sent: answer in the JSON shape and close."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.close()  # a response is under way or done: nothing more can be said
            return
        # SEND_RESPONSE: the request's headers were read and its app is running, unanswered.
        cycle = self.cycle if self.conn.our_state is h11.SEND_RESPONSE else None
        in_body = cycle is not None
        buffered, _ = self.conn.trailing_data
        if len(buffered) > self._max_incomplete:
            status, code, message = 431, "too_large", "request headers too large"
        elif in_body:
            status, code, message = 400, "invalid_input", "malformed request body framing"
        else:
            status, code, message = 400, "invalid_input", "malformed HTTP request"
        if cycle is not None:
            extensions: dict[str, Any] = cycle.scope.setdefault("extensions", {})
            extensions[ANSWERED] = status
        self._refuse(status, code, message)

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Write a whole JSON error response by hand and close: the request is beyond h11's
        state machine (unparsable, or not there yet), so h11 can't frame the answer."""
        body = error_json(code, message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"cache-control", b"no-store"),
            *SECURITY_HEADERS,
        ]
        reason = http.HTTPStatus(status).phrase.encode()
        head = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        log.warning("refused by the HTTP layer", extra={"status": status, "code": code})
        self.transport.write(head + b"\r\n" + body)
        self.transport.close()


class _BodyFlow(FlowControl):
    """uvicorn's flow control, but a request body pauses reading only past BODY_HIGH_WATER,
    and a connection that has sent a large body is read RECV_BYTES at a time.

    uvicorn pauses reading as soon as more than 64 KiB of body wait for the app, and resumes
    when the app takes them: during an upload that is two ``epoll_ctl`` calls per socket read,
    a fifth of the event loop's time (py-spy). Pausing still happens, at a larger bound, so an
    app that stops reading still stops the client. The larger reads are kept to connections
    that have sent a large body (small requests keep asyncio's reads).
    """

    def __init__(self, transport: asyncio.Transport, protocol: VaultH11Protocol) -> None:
        super().__init__(transport)
        self._protocol = protocol
        self._reader = transport
        self._large_reads = False

    def pause_reading(self) -> None:
        protocol = self._protocol
        cycle = protocol.cycle
        if (
            # uvicorn pauses mid-body only because of its 64 KiB limit (pipelining pauses
            # happen between requests, when the client's state is no longer SEND_BODY).
            protocol.conn.their_state is h11.SEND_BODY
            and cycle is not None
            and len(cycle.body) <= BODY_HIGH_WATER
        ):
            self._read_large()
            return
        super().pause_reading()

    def _read_large(self) -> None:
        transport = self._reader
        if not self._large_reads and isinstance(getattr(transport, "max_size", None), int):
            # asyncio's selector transport reads at most max_size per recv (256 KiB): the
            # rest of the upload arrives in fewer pieces, with less work per byte on the loop.
            transport.max_size = max(transport.max_size, RECV_BYTES)  # type: ignore[attr-defined]
        self._large_reads = True
