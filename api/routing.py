"""Which route a request was for, by its path template: what metrics count and the ledger
records, never the path as typed; and which address it came from."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from starlette.requests import HTTPConnection
from starlette.routing import Match
from starlette.types import Scope

__all__ = ["client_address", "flat_routes", "route_template"]


def client_address(request: HTTPConnection) -> str:
    """The address a request came from: the peer's, or the one a trusted proxy named
    (uvicorn's proxy headers, VAULT_TRUSTED_PROXIES); "" if the server does not know."""
    return request.client.host if request.client else ""


def flat_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """The app's routes with included routers opened up (FastAPI >= 0.16x keeps an included
    router as one entry that matches without naming the route; its ``original_router`` holds
    them). Without that attribute a route is taken as it is."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from flat_routes(inner.routes)
        else:
            yield route


def route_template(scope: Scope) -> str:
    """The matched route's path template (the router records the route in the scope)."""
    route = scope.get("route")
    if route is None:
        # Refused before routing (a body too slow, malformed or cut short): look it up, so
        # the refusal counts against the route it was for.
        app = scope.get("app")
        route = next(
            (
                r
                for r in flat_routes(getattr(app, "routes", ()))
                if r.matches(scope)[0] is Match.FULL
            ),
            None,
        )
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
