"""ASGI entry point for servers (``uvicorn blo_vault.api.asgi:app``); settings from the env."""

from blo_vault.api.app import create_app

__all__ = [
    "app",
]

app = create_app()
