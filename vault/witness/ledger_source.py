"""The vault's own ledger as a :class:`~vault.witness.publisher.CheckpointSource`.

Reads through :mod:`vault.ledger.log` on the vault's engine directly, not through the service
facade: the publisher's reads are machinery, and recording each one in the ledger (as an
auditor's reads are) would grow the log on every publishing round.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from vault.db import session_scope
from vault.ledger import log

__all__ = ["LedgerSource"]


class LedgerSource:
    """Newest checkpoint (signed if the tree grew) and consistency proofs of the vault's ledger."""

    def __init__(self, *, engine: Engine, origin: str, key: Ed25519PrivateKey) -> None:
        """Read the ledger on ``engine``; sign checkpoints of ``origin`` with ``key``."""
        self._engine = engine
        self._origin = origin
        self._key = key

    def latest_checkpoint(self) -> str:
        """The newest signed checkpoint note (one is signed now if the tree grew since)."""
        with session_scope(self._engine) as session:
            return log.sign_checkpoint(session, origin=self._origin, key=self._key).note

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 6962 consistency proof between two sizes of the ledger."""
        with session_scope(self._engine, readonly=True) as session:
            return log.consistency_proof(session, old_size, new_size)
