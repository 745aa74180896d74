"""ASGI entry point for servers (``uvicorn api.asgi:app``): settings from the environment."""

from api.app import create_app

__all__ = [
    "app",
]

app = create_app()
