"""Officers' signing keys over HTTP (issue 13): register, revoke, look up, history.

Thin routes like the rest: parse, call the service (which authorises and writes the ledger),
shape the reply. Included by :func:`blo_vault.api.app.create_app`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from blo_vault.api import errors as api_errors
from blo_vault.api.app import (
    ID_PATTERN,
    USERNAME_PATTERN,
    PrincipalDep,
    VaultDep,
    known_query_only,
)
from vault.schemas import KeyHistory, OfficerKeyInfo

__all__ = ["router"]

router = APIRouter(responses=api_errors.ERROR_RESPONSES, dependencies=[Depends(known_query_only)])
KeyId = Annotated[str, Path(pattern=ID_PATTERN, min_length=32, max_length=32, description="key id")]


class KeyRegistration(BaseModel):
    """The public half of an officer's new Ed25519 key."""

    model_config = ConfigDict(extra="forbid")
    # Exactly the canonical base64 of 32 bytes (the last character before "=" carries only
    # 4 bits), so the schema admits no string the service refuses.
    public_key: str = Field(
        min_length=44,
        max_length=44,
        pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$",
        description="base64 of the 32 raw bytes of an Ed25519 public key",
    )


def _receipt(response: Response, receipt: int | None) -> None:
    if receipt is not None:
        response.headers[api_errors.RECEIPT_HEADER] = str(receipt)


@router.post("/keys", status_code=201, tags=["keys"])
def register_key(
    body: KeyRegistration, vault: VaultDep, principal: PrincipalDep, response: Response
) -> OfficerKeyInfo:
    """Register the caller's signing key; 409 while another of theirs is active."""
    info = vault.register_key(principal, body.public_key)
    _receipt(response, info.registered_seq)
    return info


@router.get("/keys/history", tags=["keys"])
def key_history(
    vault: VaultDep,
    principal: PrincipalDep,
    response: Response,
    user: Annotated[str | None, Query(pattern=USERNAME_PATTERN, max_length=64)] = None,
) -> KeyHistory:
    """Every key.register / key.revoke ledger entry naming ``user`` (default: the caller),
    each with its inclusion proof; for the user themself or an auditor of their agency."""
    result = vault.key_history(principal, user)
    _receipt(response, result.receipt)
    return result


@router.get("/keys/{key_id}", tags=["keys"])
def show_key(
    key_id: KeyId, vault: VaultDep, principal: PrincipalDep, response: Response
) -> OfficerKeyInfo:
    """A registered key, with the inclusion proof of its registration entry."""
    info = vault.show_key(principal, key_id)
    _receipt(response, info.receipt)
    return info


@router.post("/keys/{key_id}/revoke", tags=["keys"])
def revoke_key(
    key_id: KeyId, vault: VaultDep, principal: PrincipalDep, response: Response
) -> OfficerKeyInfo:
    """Revoke one of the caller's keys."""
    info = vault.revoke_key(principal, key_id)
    _receipt(response, info.revoked_seq)
    return info
