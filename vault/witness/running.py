"""The server's witness publisher: :class:`~vault.witness.publisher.Publisher` rounds on a
thread of their own, their results kept in the vault's database.

Started and stopped with the server (``VAULT_WITNESS_POLICY``); of several server processes
on one vault, only the holder of the publisher lease publishes. Each round signs a checkpoint
if the ledger grew, asks every witness of the policy, stores the cosigned checkpoint when the
quorum is met (:func:`vault.witness.published.store_witnessed`), and stores each witness's lag
when it changed. Appends never wait for any of it: the thread shares nothing with them but
the database, and a witness that is down or slow only delays the next publication.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from vault.config import Settings
from vault.db import session_scope
from vault.errors import ConfigError, VaultError
from vault.ledger.note import NoteError, Verifier, parse_checkpoint, parse_note
from vault.witness.lease import PublisherLease
from vault.witness.ledger_source import LedgerSource
from vault.witness.policy import Policy, load_policy
from vault.witness.published import record_lags, store_witnessed
from vault.witness.publisher import Publisher, WitnessLag, http_post

__all__ = ["PublishingThread", "policy_for"]

log = logging.getLogger("vault.witness")


def policy_for(settings: Settings, verifier: Verifier) -> Policy:
    """The witness policy of ``settings``; ConfigError unless it lists this vault's log key
    (else no checkpoint of ours could ever meet it) and a witness with a URL."""
    assert settings.witness_policy is not None
    try:
        policy = load_policy(settings.witness_policy)
    except VaultError as exc:
        raise ConfigError(f"VAULT_WITNESS_POLICY: {exc.message}") from None
    ours = verifier.public_bytes()
    if not any(
        log_key.public_bytes() == ours and log_key.name == verifier.name
        for log_key, _ in policy.logs
    ):
        raise ConfigError(
            f"VAULT_WITNESS_POLICY does not list this vault's log key: add 'log {verifier.vkey()}'"
        )
    if not any(w.url for w in policy.witnesses.values()):
        raise ConfigError("VAULT_WITNESS_POLICY names no witness with a URL to send checkpoints to")
    return policy


class PublishingThread:
    """Runs publishing rounds every ``cadence`` seconds until stopped; stores their results."""

    def __init__(
        self,
        *,
        engine: Engine,
        publisher: Publisher,
        cadence: float,
        clock: Callable[[], float] = time.time,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        """Publish with ``publisher`` and store into ``engine``'s database."""
        self._engine = engine
        self._publisher = publisher
        self._cadence = cadence
        self._clock = clock
        self._on_close = on_close
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stored_lags: list[WitnessLag] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, engine: Engine, key: Ed25519PrivateKey
    ) -> PublishingThread | None:
        """The publisher ``settings`` ask for (None without VAULT_WITNESS_POLICY)."""
        if settings.witness_policy is None:
            return None
        verifier = Verifier.from_public_key(settings.ledger_origin, key.public_key())
        policy = policy_for(settings, verifier)
        client = httpx.Client(timeout=settings.witness_timeout_seconds, follow_redirects=False)
        publisher = Publisher(
            policy=policy,
            source=LedgerSource(engine=engine, origin=settings.ledger_origin, key=key),
            post=http_post(client=client),
        )
        return cls(
            engine=engine,
            publisher=publisher,
            cadence=settings.witness_cadence_seconds,
            on_close=client.close,
        )

    def lag(self) -> list[WitnessLag]:
        """What the publisher knows of each witness (see Publisher.lag)."""
        return self._publisher.lag()

    def round(self) -> str | None:
        """One publishing round; the checkpoint it published (None below quorum or if idle)."""
        published = self._publisher.publish_once()
        lags = self._publisher.lag()
        now = datetime.fromtimestamp(self._clock(), UTC)
        changed = lags != self._stored_lags
        if published is None and not changed:
            return None
        with session_scope(self._engine) as session:
            if published is not None:
                size = parse_checkpoint(parse_note(published).text).size
                if store_witnessed(session, published, size, now=now):
                    log.info("witnessed checkpoint published", extra={"size": size})
            if changed:
                record_lags(session, lags, now=now)
        if changed:
            for lag in lags:
                if lag.error:
                    log.warning("witness %s at size %d: %s", lag.name, lag.size, lag.error)
        self._stored_lags = lags
        return published

    def _run(self) -> None:
        # Only one process of the vault publishes (see vault.witness.lease); the others keep
        # asking, and take over when it stops.
        lease = PublisherLease(self._engine)
        try:
            while not self._stop.is_set():
                try:
                    if lease.held():
                        self.round()
                except (VaultError, NoteError) as exc:
                    log.error("witness publishing round failed: %s", exc)
                except Exception as exc:  # noqa: BLE001  (the thread must outlive any bad round)
                    log.error("witness publishing round failed: %s", type(exc).__name__)
                self._stop.wait(self._cadence)
        finally:
            lease.release()

    def start(self) -> None:
        """Start publishing on a background thread (the first round runs at once)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="witness-publisher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the round in progress (each witness request is bounded by its timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._on_close()
