"""Password hashing with argon2id (argon2-cffi)."""

from __future__ import annotations

import threading

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from vault.errors import InvalidInput

__all__ = [
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "Passwords",
]

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024


class Passwords:
    """Hashes and checks passwords; unknown users cost the same as wrong passwords.

    At most ``max_concurrent`` hashes or checks run at once; the rest wait their turn. Each
    holds ``memory_kib`` for its whole run, and the server answers requests on up to 40
    threads: unbounded, 40 wrong logins at once took 2.3 GiB (64 MiB each), enough for
    anyone who can reach the login form to get a small server killed. The CPU is the limit
    either way, so waiting costs no throughput.
    """

    def __init__(
        self, *, time_cost: int, memory_kib: int, parallelism: int, max_concurrent: int = 4
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        self._turns = threading.BoundedSemaphore(max_concurrent)
        # Verified against when the user does not exist, so both paths do the same work.
        self._dummy = self._hasher.hash("blo-vault dummy password for unknown users")

    def hash(self, password: str) -> str:
        """An argon2id hash of a new password; InvalidInput if it is too short or long."""
        if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
            raise InvalidInput(
                f"passwords must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
            )
        with self._turns:
            return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; with no stored hash, burns the same time and fails."""
        candidate = password[:MAX_PASSWORD_LENGTH]
        try:
            with self._turns:
                ok = self._hasher.verify(stored_hash or self._dummy, candidate)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return ok and stored_hash is not None
