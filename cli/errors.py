"""The one place that maps vault errors to exit codes and one-line messages; and the CLI's
own error, a server reply that is not a vault's, with the checked reads of a reply that
raise it."""

from __future__ import annotations

from typing import Any, TypeVar

from vault import errors

__all__ = [
    "BY_CODE",
    "EXIT_CODES",
    "BadServerReply",
    "MissingMember",
    "Reply",
    "count",
    "exit_code_for",
    "field",
    "obj",
    "objects",
]

T = TypeVar("T")


class BadServerReply(errors.VaultError):
    """The server answered, but not as a vault server does: a body that is not JSON (a proxy's
    login page), undecodable, or JSON without the fields the route always sends."""

    code = "bad_server_reply"


class MissingMember(BadServerReply, KeyError):
    """A member a route always sends is missing from its reply (still a KeyError, for code
    that asks and handles its absence)."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return self.message


class Reply(dict[str, Any]):
    """A JSON object of a server's reply: a member read that is not there is a bad reply
    (exit 7, one line), not a crash of whatever command read it."""

    def __missing__(self, key: str) -> Any:
        raise MissingMember(f"the server's reply has no {key!r}")


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
    # Grouped with "server unavailable": whatever answered is not a vault server one can use.
    BadServerReply: 7,
}

# The API's error codes, for turning an HTTP error reply back into the same exception. The
# CLI's own BadServerReply is left out: no server sends it.
BY_CODE: dict[str, type[errors.VaultError]] = {
    cls.code: cls for cls in EXIT_CODES if cls is not BadServerReply
} | {errors.VaultError.code: errors.VaultError}


def exit_code_for(exc: errors.VaultError) -> int:
    """Exit code of a vault error: the most specific class in EXIT_CODES wins; 1 otherwise."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


# --- checked reads of a server's JSON reply -------------------------------------------------
# A reply may come from a broken proxy or a hostile server: a command that indexed it blindly
# died with a KeyError or TypeError traceback. These raise BadServerReply instead (one error
# line, exit 7), naming the field that was missing or of the wrong type, never its value.


def obj(value: object, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object; BadServerReply naming ``what`` otherwise."""
    if not isinstance(value, dict):
        raise BadServerReply(f"the server's {what} is not a JSON object")
    return value


def field(reply: object, name: str, kind: type[T], what: str = "reply") -> T:
    """``reply[name]``, checked to be present and a ``kind`` (for ``int``, a bool is not
    one); BadServerReply otherwise. ``what`` names the reply in the message."""
    value = obj(reply, what).get(name, _MISSING)
    if value is _MISSING:
        raise BadServerReply(f"the server's {what} has no {name!r}")
    # JSON's true and false are ints to Python; no field the CLI counts with is a bool.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadServerReply(f"the server's {what}: {name!r} is not of type {kind.__name__}")
    return value


def count(reply: object, name: str, what: str = "reply") -> int:
    """``reply[name]`` as a non-negative int (a size, a number of entries); BadServerReply
    otherwise."""
    value = field(reply, name, int, what)
    if value < 0:
        raise BadServerReply(f"the server's {what}: {name!r} is negative")
    return value


def objects(reply: object, name: str, what: str = "reply") -> list[dict[str, Any]]:
    """``reply[name]`` as a list of JSON objects; BadServerReply otherwise."""
    items = field(reply, name, list, what)
    return [obj(item, f"{what}'s {name!r} item") for item in items]


_MISSING = object()
