"""Security headers of the pages: a strict Content-Security-Policy (no inline script or style,
nothing from another origin, no framing) and no caching of anything that may show package data.

Pure ASGI, so the streamed downloads and uploads under the pages pass through untouched.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def is_page(path: str, prefix: str) -> bool:
    """Whether a path belongs to the web interface (the root and everything under prefix)."""
    return path == "/" or path == prefix or path.startswith(prefix + "/")


def cache_control(static: bool, status: int) -> str:
    """The ``Cache-Control`` of a page's answer: public only for a static file served (2xx, or
    304 "not modified"). Anything else under the static prefix is an error page, rendered with
    the visitor's session (name, agency, CSRF token): a shared cache must not keep it."""
    served = 200 <= status < 300 or status == 304
    return "public, max-age=3600" if static and served else "no-store"


class PageSecurityMiddleware:
    """Adds :data:`PAGE_HEADERS` to every response of the pages; ``Cache-Control: no-store``
    to all of them but the static files served (which hold no package data)."""

    def __init__(self, app: ASGIApp, *, prefix: str, static_prefix: str) -> None:
        self.app = app
        self.prefix = prefix
        self.static_prefix = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not is_page(path, self.prefix):
            await self.app(scope, receive, send)
            return
        static = path.startswith(self.static_prefix + "/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in PAGE_HEADERS.items():
                    headers[name] = value
                headers["Cache-Control"] = cache_control(static, int(message["status"]))
            await send(message)

        await self.app(scope, receive, send_with_headers)
