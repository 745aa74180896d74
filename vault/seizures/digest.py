"""The SHA-256 a signed manifest states for a package's seizure records (issue 13).

The client and the server each compute it from the *validated* records
(:class:`vault.seizures.schema.SeizureRecord`), so a record given as "01.05.2024" or
"героин" hashes as the stored "2024-05-01T00:00:00" and "heroin" do. Canonical encoding::

    "blo-vault seizure records v1" 0x00 || JSON

where JSON is an array with one array a record, fields in this order: date (ISO 8601,
``YYYY-MM-DDTHH:MM:SS``, no zone), crossing point, direction, commodity, quantity (a JSON
number as Python's shortest round-trip ``repr`` writes it), unit, concealment, transport,
detained; UTF-8, no spaces, nothing escaped but what JSON requires. A package with no records
hashes the empty array. Kept apart from the storage encoding (vault.seizures.store), which may
change without changing what officers signed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from vault.seizures.schema import SeizureRecord

__all__ = ["DOMAIN", "canonical_records", "records_sha256"]

DOMAIN = b"blo-vault seizure records v1\x00"


def canonical_records(records: Sequence[SeizureRecord]) -> bytes:
    """The canonical bytes of ``records`` (the module docstring's layout)."""
    rows = [
        [
            r.date.strftime("%Y-%m-%dT%H:%M:%S"),
            r.crossing_point,
            r.direction,
            r.commodity,
            r.quantity,
            r.unit,
            r.concealment,
            r.transport,
            r.detained,
        ]
        for r in records
    ]
    return DOMAIN + json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def records_sha256(records: Sequence[SeizureRecord]) -> str:
    """Lowercase hex SHA-256 of :func:`canonical_records`."""
    return hashlib.sha256(canonical_records(records)).hexdigest()
