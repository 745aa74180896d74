"""Verifying a ledger export against a witness policy, offline (``ledger verify --policy``).

The export (README, "Ledger export format") carries the log-signed checkpoint of its last
entry and, once witnesses have cosigned one, ``witnessed_checkpoint``. With a policy, the log
key comes from the policy's ``log`` line for the export's origin, the witnessed checkpoint must
meet the policy's quorum (no cosignature dated in the future), and the exported entries must
produce its root at its size: a split view or a rollback the witnesses did not sign fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vault.errors import VaultError
from vault.ledger.verify import VerifyResult, verify_export
from vault.witness.policy import DEFAULT_MAX_SKEW_S, Policy, WitnessedCheckpoint, verify_witnessed

__all__ = ["WitnessedExport", "verify_export_with_policy"]


@dataclass(frozen=True)
class WitnessedExport:
    """The export's verification, and the witnessed checkpoint that passed the policy."""

    result: VerifyResult
    witnessed: WitnessedCheckpoint | None

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form: the verification plus ``witnessed_size`` and ``cosigned_by``."""
        data = self.result.as_dict()
        data["witnessed_size"] = None if self.witnessed is None else self.witnessed.checkpoint.size
        data["cosigned_by"] = {} if self.witnessed is None else dict(self.witnessed.cosigned_at)
        return data


def _rejected(problem: str) -> WitnessedExport:
    return WitnessedExport(
        VerifyResult(ok=False, size=0, root="", checkpoint_size=None, problem=problem), None
    )


def verify_export_with_policy(
    document: dict[str, object],
    policy: Policy,
    *,
    now: int,
    vkey: str | None = None,
    max_skew: int = DEFAULT_MAX_SKEW_S,
    progress: Callable[[int], None] | None = None,
    saved: str | None = None,
) -> WitnessedExport:
    """Verify ``document`` with the log key of ``policy`` (or ``vkey``, if given, which must
    then be one of the policy's logs) and require its witnessed checkpoint to meet the quorum.
    The entries must extend ``saved`` too, if given (see verify_export)."""
    origin = document.get("origin")
    logs = {v.vkey(): v for v, _ in policy.logs if v.name == origin}
    if not logs:
        return _rejected(f"the policy lists no log for the export's origin {origin!r}")
    if vkey is not None and vkey not in logs:
        return _rejected("--vkey is not one of the policy's log keys for this origin")
    witnessed_note = document.get("witnessed_checkpoint")
    if not isinstance(witnessed_note, str):
        return _rejected("the export carries no witnessed checkpoint (none was published yet)")
    try:
        witnessed = verify_witnessed(witnessed_note, policy, now=now, max_skew=max_skew)
    except VaultError as exc:
        return _rejected(f"witnessed checkpoint rejected: {exc.message}")
    if witnessed.checkpoint.origin != origin:
        return _rejected("the witnessed checkpoint is of another log")
    result = verify_export(
        document, vkey or next(iter(logs)), progress, extra=[witnessed.checkpoint], saved=saved
    )
    return WitnessedExport(result, witnessed if result.ok else None)
