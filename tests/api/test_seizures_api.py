"""The seizure routes through the app: the records part of an upload, the statistics' JSON
shape and their refusals (each recorded), and the crossing points."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from sqlmodel import select

from tests.conftest import World
from vault.models import Package, PackageRecords
from vault.service import local_operator

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette: the httpx-backed TestClient is deprecated
    from fastapi.testclient import TestClient

from blo_vault.api.app import create_app

RECORDS: list[dict[str, Any]] = [
    {"date": "2014-03-12 06:40", "crossing_point": "OYBEK", "direction": "entry",
     "commodity": "heroin", "quantity": 14.8, "unit": "kg", "detained": 2},
    {"date": "12.03.2014", "crossing_point": "oybek", "direction": "выезд",
     "commodity": "Гашиш", "quantity": "500", "unit": "g", "concealment": "в колесе"},
    {"date": "2014-06-02T11:05", "crossing_point": "OYBEK", "direction": "exit",
     "commodity": "methamphetamine", "quantity": 350, "unit": "tablets"},
]  # fmt: skip


@dataclass
class Api:
    world: World
    client: TestClient

    def headers(self, user: str) -> dict[str, str]:
        p = self.world[user]
        token = self.world.vault.tokens.issue(p.user_id, session_id=p.session_id)
        return {"Authorization": f"Bearer {token}"}

    def upload(self, user: str, records: Any) -> Any:
        parts: list[tuple[str, Any]] = [
            ("metadata", (None, json.dumps({"title": "seizures"}), "application/json")),
            ("records", (None, json.dumps(records), "application/json")),
            ("file", ("report.txt", b"report", "text/plain")),
        ]
        return self.client.post("/packages", files=parts, headers=self.headers(user))

    def get(self, user: str, path: str, **params: Any) -> Any:
        return self.client.get(path, params=params, headers=self.headers(user))


@pytest.fixture
def api(world: World) -> Iterator[Api]:
    world.vault.add_crossing_point(
        local_operator(), "OYBEK", country="UZ", name="Oybek", blo_opened=date(2014, 5, 1)
    )
    with TestClient(create_app(vault=world.vault)) as client:
        yield Api(world, client)


def stored_packages(world: World) -> int:
    with world.vault.core.tx(readonly=True) as session:
        return len(session.exec(select(Package)).all()) + len(
            session.exec(select(PackageRecords)).all()
        )


def test_records_part_then_statistics(api: Api) -> None:
    reply = api.upload("uz.officer", RECORDS)
    assert reply.status_code == 201, reply.text
    stats = api.get("uz.officer", "/stats/seizures", by="month,direction,country")
    assert stats.status_code == 200, stats.text
    body = stats.json()
    assert body["receipt"] == int(stats.headers["X-Vault-Receipt"])
    assert (body["by"], body["from"], body["to"]) == (["month", "country", "direction"], None, None)
    assert body["rows"] == [
        {"month": "2014-03", "country": "UZ", "direction": "entry", "records": 1,
         "quantity_kg": 14.8, "quantity_l": 0.0, "quantity_units": 0.0},
        {"month": "2014-03", "country": "UZ", "direction": "exit", "records": 1,
         "quantity_kg": 0.5, "quantity_l": 0.0, "quantity_units": 0.0},
        {"month": "2014-06", "country": "UZ", "direction": "exit", "records": 1,
         "quantity_kg": 0.0, "quantity_l": 0.0, "quantity_units": 350.0},
    ]  # fmt: skip
    narrow = api.get("uz.officer", "/stats/seizures", by="commodity", **{"from": "2014-04-01"})
    assert narrow.json()["rows"] == [
        {"commodity": "methamphetamine", "records": 1, "quantity_kg": 0.0, "quantity_l": 0.0,
         "quantity_units": 350.0}
    ]  # fmt: skip
    assert api.get("kz.officer", "/stats/seizures").json()["rows"] == []
    ba = api.get("uz.officer", "/stats/before-after", crossing_point="OYBEK", window_days=90)
    figure = ba.json()["figures"][0]
    assert (figure["before"]["records"], figure["after"]["records"]) == (2, 1)
    assert figure["change"]["quantity_units"] == {"absolute": 350.0, "relative": None}
    assert api.get("uz.officer", "/crossing-points").json() == [
        {"code": "OYBEK", "country": "UZ", "name": "Oybek", "blo_opened": "2014-05-01"}
    ]


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([{**RECORDS[0], "quantity": -1}], "row 1, column quantity"),
        ([RECORDS[0], {**RECORDS[1], "unit": "tons", "date": "yesterday"}], "row 2, column unit"),
        ([{**RECORDS[0], "crossing_point": "NOWHERE"}], "not registered"),
        ({"not": "a list"}, "JSON list of records"),
        ([{**RECORDS[0], "extra": 1}], "row 1, column extra: unknown column"),
        # Too large for a float or an int: was a 500 with no entry (OverflowError).
        ([{**RECORDS[0], "quantity": 10**400}], "row 1, column quantity"),
        ([{**RECORDS[0], "detained": 10**400}], "row 1, column detained"),
    ],
)
def test_a_bad_records_part_stores_nothing(api: Api, records: Any, expected: str) -> None:
    reply = api.upload("uz.officer", records)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert expected in error["message"]
    assert isinstance(error["receipt"], int)
    assert stored_packages(api.world) == 0


@pytest.mark.parametrize(
    "params",
    [{"by": "year"}, {"by": "month,,commodity"}, {"by": "month, commodity"},
     {"from": "2014-02-01", "to": "2014-01-01"}, {"from": "not-a-date"}, {"group": "month"}],
)  # fmt: skip
def test_bad_statistics_requests_are_refused_and_recorded(api: Api, params: Any) -> None:
    reply = api.get("uz.officer", "/stats/seizures", **params)
    assert reply.status_code == 422, reply.text
    assert isinstance(reply.json()["error"]["receipt"], int)


def test_before_after_of_an_unknown_point_is_404(api: Api) -> None:
    reply = api.get("uz.officer", "/stats/before-after", crossing_point="NOWHERE")
    assert reply.status_code == 404
    assert isinstance(reply.json()["error"]["receipt"], int)
    assert api.get("uz.officer", "/stats/before-after", window_days=0).status_code == 422
