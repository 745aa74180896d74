"""``blovault serve``: run the API server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from blo_vault.cli.render import err
from vault.config import load_settings
from vault.service import Vault

# Unnamed: ``blo_vault.cli.main`` merges its command into the top level.
app = typer.Typer()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
) -> None:
    """Run the API server (embedded defaults unless VAULT_* settings say otherwise).

    X-Forwarded-For is believed only from the proxies in VAULT_TRUSTED_PROXIES (none by
    default); header, body and rate limits come from the VAULT_* settings as well.
    """
    import uvicorn

    from blo_vault.api.observability import LOG_CONFIG
    from blo_vault.api.server import server_options

    settings = load_settings()
    # Open once here so configuration errors (e.g. development keys in production) stop us
    # before the server binds, with a clear message.
    vault = Vault.open(settings, create=False)
    try:
        for warning in vault.deployment_warnings():
            err.print(f"warning: {warning}")
    finally:
        vault.close()
    if os.environ.get("FORWARDED_ALLOW_IPS") and not settings.trusted_proxies:
        err.print("FORWARDED_ALLOW_IPS is ignored: set VAULT_TRUSTED_PROXIES to trust a proxy")
    elif settings.env == "production" and not tls_cert and not settings.trusted_proxies:
        # Production without TLS here means a TLS proxy in front: untrusted, it is every
        # client's address, and one password guesser locks out everyone.
        err.print(
            "warning: no VAULT_TRUSTED_PROXIES: behind a TLS proxy every client has the "
            "proxy's address, so one password guesser locks out every user"
        )
    err.print(f"BLO Vault listening on {'https' if tls_cert else 'http'}://{host}:{port}")
    uvicorn.run(
        "blo_vault.api.asgi:app",
        host=host,
        port=port,
        workers=workers,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        access_log=False,  # blo_vault.api.observability logs each request as JSON instead
        log_config=LOG_CONFIG,
        **server_options(settings),
    )
