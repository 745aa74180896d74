"""The one place that maps vault errors to exit codes and one-line messages."""

from __future__ import annotations

from vault import errors

__all__ = [
    "BY_CODE",
    "EXIT_CODES",
    "exit_code_for",
]

EXIT_CODES: dict[type[errors.VaultError], int] = {
    errors.LedgerCorrupt: 1,
    errors.InvalidInput: 2,
    errors.TooLarge: 2,
    errors.RequestTimeout: 7,
    errors.AuthenticationFailed: 3,
    errors.RateLimited: 3,
    errors.NotFound: 4,
    errors.AccessDenied: 5,
    errors.IntegrityError: 6,
    errors.StorageUnavailable: 7,
    errors.Conflict: 8,
    errors.ConfigError: 9,
    errors.VaultMissing: 10,
}

# The API's error codes, for turning an HTTP error reply back into the same exception.
BY_CODE: dict[str, type[errors.VaultError]] = {cls.code: cls for cls in EXIT_CODES} | {
    errors.VaultError.code: errors.VaultError
}


def exit_code_for(exc: errors.VaultError) -> int:
    """Exit code of a vault error: the most specific class in EXIT_CODES wins; 1 otherwise."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1
