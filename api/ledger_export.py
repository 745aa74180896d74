"""The ledger export over HTTP (issue 18): the public export, or the caller's scoped one.

Thin like the other routes: the service authorises, records the read and writes the
document; the route only carries it. The document is written to a temporary file first (the
service streams it inside one read transaction, which must not wait on a slow client) and then
sent from that file, so memory stays flat however long the ledger is. The file is a
``SealedSpool``: a scoped export's openings never touch the disk in the clear.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from blo_vault.api import errors as api_errors
from blo_vault.api.app import PrincipalDep, VaultDep, known_query_only
from vault.spool import SealedSpool

__all__ = ["router"]

# create_app includes this router (importing this module only then), so the shared
# dependencies come from the app module without a cycle.
router = APIRouter(responses=api_errors.ERROR_RESPONSES, dependencies=[Depends(known_query_only)])


@router.get(
    "/ledger/export",
    tags=["ledger"],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/json": {}}}},
)
def ledger_export(
    vault: VaultDep,
    principal: PrincipalDep,
    scoped: Annotated[bool, Query(description="Add the openings the caller may see.")] = False,
) -> StreamingResponse:
    """The ledger and its latest signed checkpoint as one JSON document ("Ledger export
    format"): the public export, or with ``scoped`` also the openings of the committed
    entries the caller may see (an auditor: their own country's; an admin: those about no
    package). ``blovault ledger verify --export`` checks it offline."""
    spool = SealedSpool()
    try:
        vault.export_ledger(principal, spool, scoped=scoped)
    except BaseException:
        spool.close()
        raise
    return StreamingResponse(spool.chunks(), media_type="application/json")
