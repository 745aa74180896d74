"""The ledger export over HTTP (issue 18): the public export, or the caller's scoped one.

Thin like the other routes: the service authorises, records the read and writes the
document; the route only carries it. The document is written to a private temporary file
first (the service streams it inside one read transaction, which must not wait on a slow
client) and then sent from that file, so memory stays flat however long the ledger is.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO, Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from blo_vault.api import errors as api_errors
from blo_vault.api.app import PrincipalDep, VaultDep, known_query_only

__all__ = ["router"]

_CHUNK = 256 * 1024

# create_app includes this router (importing this module only then), so the shared
# dependencies come from the app module without a cycle.
router = APIRouter(responses=api_errors.ERROR_RESPONSES, dependencies=[Depends(known_query_only)])


def _send(handle: IO[str]) -> Iterator[bytes]:
    try:
        while chunk := handle.read(_CHUNK):
            yield chunk.encode("utf-8")
    finally:
        handle.close()


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
    handle = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - closed by _send
    try:
        vault.export_ledger(principal, handle, scoped=scoped)
        handle.seek(0)
    except BaseException:
        handle.close()
        raise
    return StreamingResponse(_send(handle), media_type="application/json")
