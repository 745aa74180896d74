"""The vault's HTTP API: FastAPI routes, thin over :mod:`vault.service`."""

from blo_vault.api.app import create_app

__all__ = ["create_app"]
