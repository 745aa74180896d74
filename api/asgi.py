"""ASGI entry point for servers (``uvicorn blo_vault.api.asgi:app``); settings from the env."""

from blo_vault.api import heapdump, memory
from blo_vault.api.app import create_app

__all__ = [
    "app",
]

heapdump.install_from_environment()  # a diagnostic, off unless VAULT_HEAP_SNAPSHOT_DIR is set
app = create_app()
memory.settle_startup_objects()  # after the app is built: see its docstring
