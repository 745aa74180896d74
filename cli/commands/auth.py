"""``blovault login``, ``logout`` and ``passwd``: the officer's session with a server."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import httpx
import typer

from blo_vault.cli import render
from blo_vault.cli import session as stored
from blo_vault.cli.client import ApiClient
from blo_vault.cli.commands._common import read_password
from blo_vault.cli.render import err
from vault.errors import AuthenticationFailed, StorageUnavailable

# Unnamed: ``blo_vault.cli.main`` merges its commands into the top level.
app = typer.Typer()


def cleartext_to_another_host(server: str) -> bool:
    """Whether ``server`` is a plain-HTTP URL of a host other than this machine (loopback is
    fine: nothing crosses a network)."""
    try:
        url = httpx.URL(server)
    except httpx.InvalidURL:
        return False  # the client refuses it, with the reason
    if url.scheme != "http":
        return False
    host = url.host
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return True


@app.command()
def login(
    server: Annotated[str, typer.Option(help="Vault server URL, e.g. https://vault.example:8443")],
    username: Annotated[str, typer.Option(help="Your username.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
) -> None:
    """Log in: a session that renews itself until idle too long or the shift is over.

    Kept in the config directory (mode 0600); 'blovault logout' ends it.
    """
    password = read_password(password_stdin)
    if cleartext_to_another_host(server):
        err.print(
            render.line(
                "warning: ",
                render.text(server),
                " is plain HTTP to another machine: your password and tokens cross the network "
                "readable by anyone on the way (use https://, e.g. behind a TLS proxy)",
            )
        )
    with ApiClient(server) as client:
        result = client.login(username, password)
    path = stored.save(stored.from_tokens(server, username, result))
    # Only shown: a lifetime the reply lacks is printed as "?" (from_tokens checked the token).
    lifetime = result.get("expires_in", "?")
    err.print(
        render.line(
            f"logged in as {username}; session kept in {path} (ends after "
            f"{result.get('refresh_expires_in', lifetime)} s idle, at most "
            f"{result.get('session_expires_in', lifetime)} s)"
        )
    )


@app.command()
def logout() -> None:
    """End the session on the server and forget it here (even if the server can't be told)."""
    saved = stored.load()
    try:
        with ApiClient(saved.server, session=saved) as client:
            client.logout()
    except AuthenticationFailed:
        # Already over on the server (timed out, revoked): nothing there to end.
        stored.delete()
        err.print("warning: the session had already ended on the server; forgotten here")
        return
    except StorageUnavailable:
        stored.delete()
        err.print(
            "warning: the server could not be reached, so the session was NOT ended there: "
            "it stays usable by whoever holds a copy of its tokens until it times out. "
            "Forgotten here."
        )
        raise
    stored.delete()
    err.print(render.line(f"logged out {saved.username}; the session has ended"))


@app.command()
def passwd(
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="Read the current, then the new password from stdin."
        ),
    ] = False,
) -> None:
    """Change your password. Every session of yours ends; this one continues in a new one."""
    saved = stored.load()
    if password_stdin:
        current, new = read_password(True), read_password(True)
    else:
        current = typer.prompt("Current password", hide_input=True)
        new = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    with ApiClient(saved.server, session=saved) as client:
        result = client.change_password(current, new)
    stored.save(stored.from_tokens(saved.server, saved.username, result))
    err.print(
        render.line(
            f"password changed for {saved.username}; every other session of yours has ended "
            f"(ledger #{result.get('receipt')})"
        )
    )
