"""The command groups of ``blovault``, one module each; ``blo_vault.cli.main`` assembles them.

A module holds the commands of one group, on its own ``typer.Typer``: named groups (``admin``,
``ledger``, ...) are added to the app under their name, unnamed ones (``server``, ``auth``,
``release``, ``audit.package_app``) merge their commands into the group that adds them.
Commands reach the server only through :class:`blo_vault.cli.client.ApiClient`, the local
vault only through :func:`blo_vault.cli.commands._common.local_vault`, and print only through
:mod:`blo_vault.cli.render`.
"""
