"""The one error hierarchy of the vault.

Every failure a caller can act on is a :class:`VaultError`. The API maps each subclass to an
HTTP status in one place (``api/errors.py``) and the CLI maps it to an exit code in one place
(``cli/errors.py``); nothing else builds error replies by hand.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "AuthenticationFailed",
    "ConfigError",
    "Conflict",
    "IntegrityError",
    "InvalidInput",
    "LedgerCorrupt",
    "NotFound",
    "RateLimited",
    "RequestTimeout",
    "StorageUnavailable",
    "TooLarge",
    "VaultError",
    "VaultMissing",
]


class VaultError(Exception):
    """Base class: a failure with a stable machine code and a message safe to show a user."""

    code = "vault_error"

    def __init__(self, message: str, *, receipt: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Sequence number of the ledger entry that recorded this refusal, when there is one.
        self.receipt = receipt


class InvalidInput(VaultError):
    """The request is malformed or names something impossible."""

    code = "invalid_input"


class TooLarge(InvalidInput):
    """The request body or a file is larger than the configured limit."""

    code = "too_large"


class RequestTimeout(InvalidInput):
    """The client sent its request too slowly."""

    code = "request_timeout"


class NotFound(VaultError):
    """The item does not exist, or the caller may not learn that it exists."""

    code = "not_found"


class Conflict(VaultError):
    """The request clashes with the current state (duplicate name, wrong release state)."""

    code = "conflict"


class AuthenticationFailed(VaultError):
    """No valid credentials or token."""

    code = "authentication_failed"


class RateLimited(AuthenticationFailed):
    """Too many failed attempts: refused without checking, until ``retry_after`` seconds pass."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AccessDenied(VaultError):
    """The caller is known and may know the item exists, but may not do this to it."""

    code = "access_denied"


class IntegrityError(VaultError):
    """Stored data failed authentication: tampered, truncated, swapped or under a wrong key."""

    code = "integrity_error"


class LedgerCorrupt(IntegrityError):
    """The ledger's chain, tree or checkpoint does not verify."""

    code = "ledger_corrupt"

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


class StorageUnavailable(VaultError):
    """The object store or database could not be reached; the action was not performed."""

    code = "storage_unavailable"


class ConfigError(VaultError):
    """The vault is configured wrongly or unsafely (for example development keys in production)."""

    code = "config_error"


class VaultMissing(ConfigError):
    """There is no vault where the settings point: nothing was created (only ``admin init``
    creates one)."""

    code = "vault_missing"
