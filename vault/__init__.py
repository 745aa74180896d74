"""BLO Vault: encrypted, access-controlled, audited exchange of intelligence packages.

The core never imports the web framework or the command line; both are thin layers over
:mod:`vault.service`.
"""

# The one place the version is written: the build reads it (pyproject.toml) and so does the API.
__version__ = "0.1.0"
