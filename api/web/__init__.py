"""The web interface: server-rendered pages over the same service as the JSON API.

``install(app)`` adds the pages (under ``/ui``, and ``/`` leading to them), their static
files, their error pages and their security headers to the vault's app.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from blo_vault.api.web import audit, errors, pages, stats
from blo_vault.api.web.context import PREFIX, STATIC_PREFIX, Web
from blo_vault.api.web.pages import UPLOAD_PATH
from blo_vault.api.web.security import PageSecurityMiddleware

__all__ = ["PREFIX", "UPLOAD_PATH", "install"]

# Resolved: an editable install links each file into build/__editable__, and StaticFiles
# refuses (404) a file whose real path is outside its directory.
STATIC_DIR = Path(__file__).resolve().parent / "static"


def install(app: FastAPI) -> None:
    """Mount the pages on ``app`` (whose ``state.vault`` is set)."""
    app.state.web = Web.build(app.state.vault)
    app.include_router(pages.router)
    app.include_router(audit.router)
    app.include_router(stats.router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="static")
    errors.install(app)
    app.add_middleware(PageSecurityMiddleware, prefix=PREFIX, static_prefix=STATIC_PREFIX)
