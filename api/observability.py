"""Request ids, JSON access logs, security headers and Prometheus metrics, as one ASGI layer.

A pure ASGI middleware (not BaseHTTPMiddleware) so streamed uploads and downloads pass through
untouched. Logs carry the method, the route template, status, duration and request id; never
headers, tokens, query strings or bodies.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blo_vault.api.errors import internal_error
from blo_vault.api.routing import route_template
from vault.service import Vault

__all__ = [
    "ANSWERED",
    "CLIENT_CLOSED_REQUEST",
    "LOG_CONFIG",
    "SECURITY_HEADERS",
    "JsonFormatter",
    "Metrics",
    "ObservabilityMiddleware",
    "access_log",
    "error_log",
]

access_log = logging.getLogger("vault.access")
error_log = logging.getLogger("vault.api")

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"interest-cohort=()"),
]
_API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_DOCS = ("/docs", "/redoc", "/openapi.json")
# Status logged and counted for a request whose client went away before it was answered
# (nginx's convention; never sent, since there is no one to send it to).
CLIENT_CLOSED_REQUEST = 499
# Key in the scope's "extensions" where blo_vault.api.server records a status the HTTP layer
# itself sent while the app was running (kept here: that module imports this one, not the reverse).
ANSWERED = "vault.answered_status"


class Metrics:
    """The app's Prometheus registry."""

    def __init__(self, vault: Vault) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vault_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vault_http_request_seconds",
            "HTTP request latency (to the last byte sent)",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.registry.register(_VaultCollector(vault))


class _VaultCollector(Collector):
    """Numbers read from the service at scrape time."""

    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    def collect(self) -> Iterable[Metric]:
        stats = self._vault.stats()
        decisions = GaugeMetricFamily(
            "vault_decisions",
            "Ledger entries written by this process, by decision",
            labels=["decision"],
        )
        for decision, count in sorted(self._vault.decision_counts().items()):
            decisions.add_metric([decision], count)
        yield decisions
        yield GaugeMetricFamily(
            "vault_refusals_summarised",
            "Refusals of callers not authenticated that this process counted into a summary"
            " entry instead of an entry each (over the budget of VAULT_REFUSAL_ENTRIES_*)",
            value=self._vault.refusals_summarised(),
        )
        yield GaugeMetricFamily(
            "vault_ledger_entries", "Entries in the ledger", value=stats["ledger_entries"]
        )
        yield GaugeMetricFamily(
            "vault_packages", "Packages stored (not purged)", value=stats["packages"]
        )
        yield GaugeMetricFamily(
            "vault_bytes_stored", "Plaintext bytes of stored packages", value=stats["bytes"]
        )
        yield from _witness_metrics(self._vault)


def _witness_metrics(vault: Vault) -> Iterator[Metric]:
    """Lag of the witnesses (VAULT_WITNESS_POLICY), as the server's publisher last saw it."""
    status = vault.witness_status()
    if status.witnessed_size is not None and status.witnessed_at is not None:
        yield GaugeMetricFamily(
            "vault_witnessed_checkpoint_size",
            "Entries covered by the newest checkpoint a quorum of witnesses cosigned",
            value=status.witnessed_size,
        )
        yield GaugeMetricFamily(
            "vault_witnessed_checkpoint_published_timestamp_seconds",
            "When the newest witnessed checkpoint was published (Unix time)",
            value=status.witnessed_at.timestamp(),
        )
    families = {
        "size": GaugeMetricFamily(
            "vault_witness_cosigned_size",
            "Tree size of the last checkpoint each witness cosigned",
            labels=["witness"],
        ),
        "behind": GaugeMetricFamily(
            "vault_witness_behind_entries",
            "Ledger entries not yet covered by each witness's last cosignature",
            labels=["witness"],
        ),
        "age": GaugeMetricFamily(
            "vault_witness_cosignature_age_seconds",
            "Seconds since each witness's last cosignature",
            labels=["witness"],
        ),
        "up": GaugeMetricFamily(
            "vault_witness_up",
            "1 if the witness's last round succeeded, 0 if it failed",
            labels=["witness"],
        ),
    }
    for lag in status.witnesses:
        families["size"].add_metric([lag.name], lag.size)
        families["behind"].add_metric([lag.name], lag.behind)
        if lag.age_seconds is not None:
            families["age"].add_metric([lag.name], lag.age_seconds)
        families["up"].add_metric([lag.name], 0 if lag.error else 1)
    yield from families.values()


class ObservabilityMiddleware:
    """Adds a request id, security headers and no-store caching; logs and measures each request."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = secrets.token_hex(8)
        status = 500
        response_started = False
        gone_unanswered = False  # the client left before any response was started
        path = scope.get("path", "")

        async def receive_wrapper() -> Message:
            nonlocal gone_unanswered
            message = await receive()
            if message["type"] == "http.disconnect" and not response_started:
                gone_unanswered = True
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in names)
                # The web pages (api/web) set their own policy, which must be the only one.
                if not path.startswith(_DOCS) and b"content-security-policy" not in names:
                    headers.append(_API_CSP)
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception as exc:
            if response_started:
                raise  # mid-stream: the server cuts the connection; nothing more can be sent
            # An error no handler knew. Answered here rather than by Starlette's outermost
            # middleware so the 500 carries the request id and security headers too; logged
            # by type only (a traceback may quote values and paths) and not re-raised, so the
            # server doesn't print one either.
            error_log.error(
                "unexpected error",
                extra={"request_id": request_id, "exception": type(exc).__name__},
            )
            await internal_error()(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            # Count what the client got, not what the app tried to answer: the HTTP layer's
            # own refusal (e.g. 400 for a malformed chunked body), or nothing at all.
            answered = scope.get("extensions", {}).get(ANSWERED)
            if isinstance(answered, int):
                status = answered
            elif gone_unanswered:
                status = CLIENT_CLOSED_REQUEST
            route = route_template(scope)
            method = _method(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            client = scope.get("client")
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "client": client[0] if client else None,
                },
            )


# HTTP's methods; anything else is counted and logged as OTHER. The method is a label of every
# series: as typed (h11 takes any token up to 16 KiB), made-up ones grew /metrics and the
# server's memory without bound, a new series each, and without signing in.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method(scope: Scope) -> str:
    method = scope.get("method", "")
    return method if method in _METHODS else "OTHER"


class JsonFormatter(logging.Formatter):
    """One JSON object per log line; extra fields passed with ``extra=`` are included."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
    converter = time.gmtime  # type: ignore[assignment]

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: tracebacks may quote values and paths.
            data["exception"] = record.exc_info[0].__name__
        return json.dumps(data, default=str)


LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "blo_vault.api.observability.JsonFormatter"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "vault": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
    },
}
