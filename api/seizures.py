"""Routes of the seizure statistics and crossing points (issue 16): thin, like the rest."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from blo_vault.api import errors as api_errors
from blo_vault.api.app import PrincipalDep, VaultDep, known_query_only
from vault.errors import InvalidInput
from vault.schemas import OneLineText, Receipt
from vault.seizures.figures import GROUP_KEYS
from vault.seizures.jsonshape import before_after_json, stats_json

__all__ = ["router"]

CROSSING_POINT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{1,31}$"
_KEY = "(" + "|".join(GROUP_KEYS) + ")"
BY_PATTERN = f"^({_KEY}(,{_KEY})*)?$"
# Days as YYYY-MM-DD only: pydantic's lax date would also take "0" as a Unix timestamp.
DAY_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def _day(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput("dates are YYYY-MM-DD, e.g. 2014-05-01") from None


# create_app includes this router (importing this module only then), so the shared
# dependencies come from the app module without a cycle.
router = APIRouter(responses=api_errors.ERROR_RESPONSES, dependencies=[Depends(known_query_only)])


class NewCrossingPoint(BaseModel):
    """A border-crossing point to register, and the date its BLO opened."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=CROSSING_POINT_PATTERN)
    country: str = Field(min_length=2, max_length=2, pattern=r"^[A-Z]{2}$")
    name: OneLineText = Field(min_length=1, max_length=200, pattern=r"\S")
    blo_opened: date = Field(ge=date(1990, 1, 1), le=date(2100, 12, 31))


class CrossingPointOut(BaseModel):
    """A registered crossing point."""

    code: str
    country: str
    name: str
    blo_opened: date


@router.post("/crossing-points", status_code=201, tags=["seizures"])
def add_crossing_point(
    body: NewCrossingPoint, vault: VaultDep, principal: PrincipalDep, response: Response
) -> Receipt:
    """Register a crossing point (admins)."""
    receipt = vault.add_crossing_point(
        principal, body.code, country=body.country, name=body.name, blo_opened=body.blo_opened
    )
    response.headers[api_errors.RECEIPT_HEADER] = str(receipt)
    return Receipt(receipt=receipt)


@router.get("/crossing-points", tags=["seizures"])
def crossing_points(
    vault: VaultDep, principal: PrincipalDep, response: Response
) -> list[CrossingPointOut]:
    """Every registered crossing point, by code."""
    points, receipt = vault.crossing_points(principal)
    response.headers[api_errors.RECEIPT_HEADER] = str(receipt)
    return [
        CrossingPointOut(code=p.code, country=p.country, name=p.name, blo_opened=p.blo_opened)
        for p in points
    ]


@router.get("/stats/seizures", tags=["seizures"])
def seizure_stats(
    vault: VaultDep,
    principal: PrincipalDep,
    response: Response,
    by: Annotated[
        str,
        Query(
            max_length=100,
            pattern=BY_PATTERN,
            description=f"comma-separated grouping keys: {', '.join(GROUP_KEYS)}",
        ),
    ] = "month,commodity",
    date_from: Annotated[str | None, Query(alias="from", pattern=DAY_PATTERN)] = None,
    date_to: Annotated[str | None, Query(alias="to", pattern=DAY_PATTERN)] = None,
) -> dict[str, Any]:
    """Totals of the seizure records the caller may read, grouped; nothing else counts.
    ``from`` and ``to`` (YYYY-MM-DD) are inclusive."""
    stats, receipt = vault.seizure_stats(
        principal, by=by.split(","), date_from=_day(date_from), date_to=_day(date_to)
    )
    response.headers[api_errors.RECEIPT_HEADER] = str(receipt)
    return {**stats_json(stats), "receipt": receipt}


@router.get("/stats/before-after", tags=["seizures"])
def seizure_before_after(
    vault: VaultDep,
    principal: PrincipalDep,
    response: Response,
    crossing_point: Annotated[str | None, Query(pattern=CROSSING_POINT_PATTERN)] = None,
    window_days: Annotated[int | None, Query(ge=1, le=730)] = None,
) -> dict[str, Any]:
    """Readable totals in equal windows before and after each crossing point's BLO opened."""
    figures, receipt = vault.seizure_before_after(
        principal, crossing_point=crossing_point, window_days=window_days
    )
    response.headers[api_errors.RECEIPT_HEADER] = str(receipt)
    return {"figures": [before_after_json(f) for f in figures], "receipt": receipt}
