"""The log's side of c2sp.org/tlog-witness: collect cosignatures and publish at quorum.

A :class:`Publisher` takes the newest signed checkpoint from a :class:`CheckpointSource`, sends
it to every policy witness that has a URL with a consistency proof from the size that witness
last cosigned (as far as the publisher knows; 0 at first), retries from the size a witness
names in a ``409 text/x.tlog.size`` reply, keeps only cosignatures that verify against that
witness's key, and publishes the merged checkpoint only when :func:`verify_witnessed` says the
policy's quorum is met. It runs on its own thread and cadence; appends never wait for it, so a
witness that is down or slow only delays publication.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

from vault.errors import InvalidInput
from vault.ledger.note import Checkpoint, NoteError, NoteSignature, parse_checkpoint, parse_note
from vault.witness.policy import Policy, PolicyWitness, QuorumNotMet, verify_witnessed

__all__ = [
    "DEFAULT_CADENCE_S",
    "CheckpointSource",
    "Post",
    "Publisher",
    "WitnessLag",
    "http_post",
]

DEFAULT_CADENCE_S = 10.0
_SIZE_TYPE = "text/x.tlog.size"

Post = Callable[[str, bytes], tuple[int, str, str]]
"""POST ``body`` to a URL; return (status, content type, text). Raises httpx.HTTPError."""


class CheckpointSource(Protocol):
    """Where the publisher reads the log: its newest signed checkpoint and proofs."""

    def latest_checkpoint(self) -> str:
        """The newest signed checkpoint note."""
        ...

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 6962 consistency proof between two sizes of the log."""
        ...


@dataclass
class WitnessLag:
    """What the publisher knows of one witness: its last cosigned size and time, last error."""

    name: str
    size: int = 0
    cosigned_at: int | None = None
    error: str | None = None


def _printable(text: str) -> str:
    """A witness's reply text made safe to log or print: short, no control characters."""
    return "".join(ch if ch.isprintable() else "?" for ch in text.strip()[:200])


def http_post(timeout: float = 5.0, *, client: httpx.Client | None = None) -> Post:
    """A Post over httpx with a bounded ``timeout`` (seconds) for connect, read and write;
    on ``client`` if given (its owner closes it), else on a client of its own."""
    client = client if client is not None else httpx.Client(timeout=timeout)

    def post(url: str, body: bytes) -> tuple[int, str, str]:
        reply = client.post(url, content=body)
        return reply.status_code, reply.headers.get("content-type", ""), reply.text

    return post


class Publisher:
    """Sends checkpoints to a policy's witnesses and keeps the newest one that met quorum."""

    def __init__(
        self,
        *,
        policy: Policy,
        source: CheckpointSource,
        post: Post,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 3,
    ) -> None:
        """Publish checkpoints of ``source`` under ``policy``, talking to witnesses via ``post``."""
        self._policy = policy
        self._source = source
        self._post = post
        self._clock = clock
        self._max_attempts = max_attempts
        self._lock = threading.Lock()
        self._lag = {name: WitnessLag(name) for name in policy.witnesses}
        self.published: str | None = None
        self.published_size: int | None = None

    def lag(self) -> list[WitnessLag]:
        """Per witness: size and time of its last cosignature known here, and its last error."""
        with self._lock:
            return [WitnessLag(**vars(lag)) for lag in self._lag.values()]

    def publish_once(self) -> str | None:
        """One round: ask every witness, publish if the quorum is met; return what was published.

        Returns None, publishing nothing, below quorum, or when the log has not grown since the
        last publication and every witness is caught up."""
        note = self._source.latest_checkpoint()
        try:
            text = parse_note(note).text
            checkpoint = parse_checkpoint(text)
        except NoteError as exc:
            raise InvalidInput(f"log checkpoint is malformed: {exc}") from None
        with self._lock:
            idle = checkpoint.size == self.published_size and all(
                self._lag[w.name].size >= checkpoint.size
                for w in self._policy.witnesses.values()
                if w.url
            )
        if idle:
            return None
        lines = []
        for witness in self._policy.witnesses.values():
            if witness.url:
                lines.extend(self._ask(witness, note, text, checkpoint))
        merged = note + "".join(lines)
        try:
            verify_witnessed(merged, self._policy, now=int(self._clock()))
        except QuorumNotMet:
            return None
        with self._lock:
            self.published, self.published_size = merged, checkpoint.size
        return merged

    def _record(self, name: str, **changes: object) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._lag[name], key, value)

    def _ask(
        self, witness: PolicyWitness, note: str, text: str, checkpoint: Checkpoint
    ) -> list[str]:
        """Cosignature lines of ``witness`` for ``checkpoint`` (verified), or [] if it refused."""
        assert witness.url is not None
        url = witness.url.rstrip("/") + "/add-checkpoint"
        with self._lock:
            old = self._lag[witness.name].size
        for _ in range(self._max_attempts):
            if old > checkpoint.size:
                self._record(witness.name, size=old, error=f"witness is ahead, at size {old}")
                return []
            proof = self._source.consistency_proof(old, checkpoint.size) if old else []
            body = f"old {old}\n" + "".join(base64.b64encode(h).decode() + "\n" for h in proof)
            try:
                status, content_type, reply = self._post(url, (body + "\n" + note).encode())
            except httpx.HTTPError as exc:
                self._record(witness.name, error=f"unreachable: {type(exc).__name__}")
                return []
            if status == 409 and content_type.split(";")[0].strip() == _SIZE_TYPE:
                try:
                    old = int(reply.strip())
                except ValueError:
                    break
                self._record(witness.name, size=old)
                continue  # tlog-witness: retry from the size the witness names
            if status != 200:
                self._record(witness.name, error=f"HTTP {status}: {_printable(reply)}")
                return []
            good = self._verified_lines(witness, text, reply)
            if not good:
                self._record(witness.name, error="reply has no valid cosignature")
                return []
            timestamp = max(witness.verifier.verify(text, sig) for sig in good)
            self._record(witness.name, size=checkpoint.size, cosigned_at=timestamp, error=None)
            return [sig.line() for sig in good]
        self._record(witness.name, error="size conflicts did not settle")
        return []

    @staticmethod
    def _verified_lines(witness: PolicyWitness, text: str, reply: str) -> list[NoteSignature]:
        """Lines of ``reply`` that are valid cosignatures by ``witness``; others are ignored."""
        try:
            sigs = parse_note(text + "\n" + reply).signatures
        except NoteError:
            return []
        good = []
        for sig in sigs:
            if witness.verifier.matches(sig):
                try:
                    witness.verifier.verify(text, sig)
                except NoteError:
                    continue
                good.append(sig)
        return good

    def run(self, stop: threading.Event, cadence: float = DEFAULT_CADENCE_S) -> None:
        """Publish every ``cadence`` seconds until ``stop`` is set (for a background thread)."""
        while not stop.is_set():
            # A malformed checkpoint from the source is retried next round.
            with contextlib.suppress(InvalidInput):
                self.publish_once()
            stop.wait(cadence)
