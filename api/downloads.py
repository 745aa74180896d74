"""The one way a file leaves the vault over HTTP, for the JSON API and the web pages alike:
streamed, checked segment by segment, with a safe ``Content-Disposition`` and the handling
code stamped on the response."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from urllib.parse import quote

from fastapi.responses import Response, StreamingResponse

from blo_vault.api import errors as api_errors
from vault.errors import VaultError
from vault.service import Download

log = logging.getLogger("vault.api")
OCTET_STREAM = "application/octet-stream"


def download_response(download: Download) -> Response:
    """Stream an authorised download; a failure after the headers cuts the connection.

    The first two chunks are opened before answering, so a tampered header or first segment
    gets a proper error status instead of a broken stream. A file of one segment has then been
    read, opened and checked against its size and digest whole: it is answered in one piece,
    without the streamed body's trip through the thread pool for every chunk.
    """
    chunks = download.chunks
    first = next(chunks, b"")
    second = next(chunks, None)
    headers = _headers(download)
    if second is None:
        chunks.close()
        return Response(first, media_type=OCTET_STREAM, headers=headers)

    def body() -> Iterator[bytes]:
        try:
            yield first
            yield second
            yield from chunks
        except VaultError as exc:
            # Headers are gone already: all we can do is cut the connection so the client
            # never mistakes a partial body for the file (and recorded it in the ledger).
            log.warning("download cut off: %s", exc.code)
            raise api_errors.StreamAborted(exc.code) from None
        finally:
            chunks.close()  # closes the store's reader if the client went away

    return StreamingResponse(body(), media_type=OCTET_STREAM, headers=headers)


def _headers(download: Download) -> dict[str, str]:
    name = download.file.name
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return {
        "Content-Length": str(download.file.size),
        "Content-Disposition": (
            f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
        ),
        "X-Content-SHA256": download.file.sha256,
        "X-Vault-Handling": download.handling,
        api_errors.RECEIPT_HEADER: str(download.receipt),
        "Cache-Control": "no-store",
    }
