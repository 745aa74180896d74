"""A package's seizure records at rest: one sealed blob under the package key, in a compact
encoding, and the per-day aggregates the statistics are computed from.

One blob a package rather than a row a record: nothing about a record (not even how many a
package holds, beyond the blob's length) is visible at rest, and statistics open one blob per
package instead of one per record.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from sqlalchemy import select as sa_select
from sqlalchemy.orm import Session
from sqlmodel import col

from vault import crypto
from vault.errors import IntegrityError, InvalidInput
from vault.models import CrossingPoint, PackageRecords
from vault.seizures.schema import UNIT_FAMILY, SeizureRecord

__all__ = [
    "DayTotals",
    "day_totals",
    "decode_records",
    "encode_records",
    "open_day_totals",
    "open_records",
    "records_identity",
    "records_row",
]

_FORMAT = 1  # the first element of the encoded list: the encoding's version


def records_identity(package_id: str) -> bytes:
    """The context a package's sealed records are bound to (a blob moved to another package,
    or swapped with its metadata, does not open)."""
    return f"blo-vault/records/v1\x00{package_id}".encode()


def encode_records(records: Sequence[SeizureRecord]) -> bytes:
    """The records as compact JSON: one array a record, fields in a fixed order."""
    rows: list[object] = [_FORMAT]
    for r in records:
        rows.append(
            [
                r.date.isoformat(timespec="minutes" if not r.date.second else "seconds"),
                r.crossing_point,
                r.direction,
                r.commodity,
                r.quantity,
                r.unit,
                r.concealment,
                r.transport,
                r.detained,
            ]
        )
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode()


def decode_records(data: bytes) -> list[SeizureRecord]:
    """The records :func:`encode_records` wrote (IntegrityError for another format)."""
    rows = json.loads(data)
    if not rows or rows[0] != _FORMAT:
        raise IntegrityError("sealed seizure records have an unknown format")
    names = SeizureRecord.model_fields
    return [SeizureRecord.model_validate(dict(zip(names, row, strict=True))) for row in rows[1:]]


def records_row(
    session: Session, package_id: str, package_key: bytes, records: Sequence[SeizureRecord]
) -> PackageRecords:
    """The sealed row of a package's records; InvalidInput naming every row whose crossing
    point is not registered (rows numbered from 1, as given)."""
    known = set(session.execute(sa_select(col(CrossingPoint.code))).scalars())
    unknown = [n for n, r in enumerate(records, start=1) if r.crossing_point not in known]
    if unknown:
        listed = ", ".join(str(n) for n in unknown[:50]) + (" ..." if len(unknown) > 50 else "")
        raise InvalidInput(
            f"{len(unknown)} seizure record(s) name a crossing point that is not registered "
            f"(blovault admin add-crossing-point), nothing stored: record(s) {listed}"
        )
    sealed = crypto.seal_bytes(
        package_key, encode_records(records), context=records_identity(package_id)
    )
    return PackageRecords(package_id=package_id, version=1, sealed=sealed)


def open_records(package_key: bytes, package_id: str, sealed: bytes) -> list[SeizureRecord]:
    """A package's records opened with its key; IntegrityError if tampered with or moved."""
    return decode_records(
        crypto.open_bytes(package_key, sealed, context=records_identity(package_id))
    )


class DayTotals(NamedTuple):
    """The records of one package that share a day, commodity, crossing point and direction:
    the unit of the statistics cache (the date as an ordinal, so filters compare ints)."""

    day: int
    month: str
    commodity: str
    crossing_point: str
    direction: str
    records: int
    quantity_kg: float
    quantity_l: float
    quantity_units: float


def open_day_totals(package_key: bytes, package_id: str, sealed: bytes) -> tuple[DayTotals, ...]:
    """A package's records opened and grouped by :func:`day_totals`, straight from the
    encoding (they were validated when stored, and the seal proves they are unchanged)."""
    rows = json.loads(crypto.open_bytes(package_key, sealed, context=records_identity(package_id)))
    if not rows or rows[0] != _FORMAT:
        raise IntegrityError("sealed seizure records have an unknown format")
    return _grouped((row[0][:10], row[3], row[1], row[2], row[4], row[5]) for row in rows[1:])


def day_totals(records: Sequence[SeizureRecord]) -> tuple[DayTotals, ...]:
    """The records grouped by day, commodity, crossing point and direction, each group's
    quantities totalled per unit family."""
    return _grouped(
        (f"{r.date:%Y-%m-%d}", r.commodity, r.crossing_point, r.direction, r.quantity, r.unit)
        for r in records
    )


# Where each unit's quantity goes in a group's sums, and its factor to the family's unit.
_SLOT = {unit: (1 + ("kg", "l", "units").index(f), k) for unit, (f, k) in UNIT_FAMILY.items()}


def _grouped(items: Iterable[tuple[str, str, str, str, float, str]]) -> tuple[DayTotals, ...]:
    groups: dict[tuple[str, str, str, str], list[float]] = {}
    for day, commodity, point, direction, quantity, unit in items:
        sums = groups.get((day, commodity, point, direction))
        if sums is None:
            sums = groups[(day, commodity, point, direction)] = [0.0, 0.0, 0.0, 0.0]
        slot, factor = _SLOT[unit]
        sums[0] += 1
        sums[slot] += quantity * factor
    return tuple(
        DayTotals(
            dt.date.fromisoformat(day).toordinal(),
            day[:7],
            commodity,
            point,
            direction,
            int(s[0]),
            s[1],
            s[2],
            s[3],
        )
        for (day, commodity, point, direction), s in sorted(groups.items())
    )
