"""The vault's HTTP API: FastAPI routes, thin over :mod:`vault.service`."""

from api.app import create_app

__all__ = ["create_app"]
