"""FastAPI's native OpenTelemetry stays off, even when the process has a provider configured:
nothing about a request (its path, its query) leaves through an exporter the vault never
chose."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.metrics import Meter, MeterProvider, NoOpMeter
from opentelemetry.trace import NoOpTracer, Tracer, TracerProvider

from tests.conftest import PASSWORD, World


class RecordingTracerProvider(TracerProvider):
    """A configured provider, as an SDK or an auto-instrumentation agent would install."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get_tracer(self, instrumenting_module_name: str, *args: Any, **kwargs: Any) -> Tracer:
        self.asked.append(instrumenting_module_name)
        return NoOpTracer()


class RecordingMeterProvider(MeterProvider):
    def __init__(self) -> None:
        self.asked: list[str] = []

    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> Meter:
        self.asked.append(name)
        return NoOpMeter(name)


def test_requests_reach_no_configured_telemetry_provider(
    world: World, live_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracers, meters = RecordingTracerProvider(), RecordingMeterProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: tracers)
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: meters)
    with httpx.Client(base_url=live_server) as client:
        assert client.get("/healthz").status_code == 200
        login = client.post("/auth/login", json={"username": "kz.officer", "password": PASSWORD})
        assert login.status_code == 200
        token = login.json()["access_token"]
        listed = client.get(
            "/packages", params={"limit": 5}, headers={"Authorization": f"Bearer {token}"}
        )
        assert listed.status_code == 200
    assert tracers.asked == []
    assert meters.asked == []
