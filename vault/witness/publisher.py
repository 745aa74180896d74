"""The log's side of c2sp.org/tlog-witness: collect cosignatures and publish at quorum.

A :class:`Publisher` takes the newest signed checkpoint from a :class:`CheckpointSource`, sends
it to every policy witness that has a URL with a consistency proof from the size that witness
last cosigned (as far as the publisher knows; 0 at first), retries from the size a witness
names in a ``409 text/x.tlog.size`` reply, keeps only cosignatures that verify against that
witness's key (and are not dated in the future), and publishes the merged checkpoint only when
:func:`verify_witnessed` says the policy's quorum is met. It runs on its own thread and cadence;
appends never wait for it, so a witness that is down or slow only delays publication. Whatever
one witness answers fails that witness's round alone: the others' cosignatures still count.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from vault.errors import InvalidInput
from vault.ledger.note import Checkpoint, NoteError, NoteSignature, parse_checkpoint, parse_note
from vault.witness.core import MAX_SIZE
from vault.witness.policy import (
    DEFAULT_MAX_SKEW_S,
    Policy,
    PolicyWitness,
    QuorumNotMet,
    verify_witnessed,
)

__all__ = [
    "DEFAULT_CADENCE_S",
    "MAX_REPLY_BYTES",
    "BadReply",
    "CheckpointSource",
    "Post",
    "Publisher",
    "WitnessLag",
    "http_post",
]

DEFAULT_CADENCE_S = 10.0
_SIZE_TYPE = "text/x.tlog.size"
_DECIMAL = re.compile(r"[0-9]{1,19}")  # ASCII digits only: int() would take "+5", "1_0", "٥"

log = logging.getLogger("vault.witness")

MAX_REPLY_BYTES = 64 * 1024
"""Most of a witness's reply read. A cosignature reply is a line or two (~100 bytes each)."""

Post = Callable[[str, bytes], tuple[int, str, str]]
"""POST ``body`` to a URL; return (status, content type, text). Raises httpx.HTTPError or
BadReply."""


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


def _named_size(reply: str) -> int | None:
    """The size in a ``409 text/x.tlog.size`` reply; None unless a decimal a tree can have
    (the next request asks the log for a proof from it, and the lag stores it)."""
    text = reply.strip()
    if not _DECIMAL.fullmatch(text):
        return None
    size = int(text)
    return size if size <= MAX_SIZE else None


class BadReply(Exception):
    """A witness's reply the publisher gave up on: longer than MAX_REPLY_BYTES, compressed,
    or not whole by the exchange's deadline. The witness failed this round, as on any other
    bad reply."""


def _longest(timeout: httpx.Timeout, fallback: float) -> float:
    finite = [t for t in (timeout.connect, timeout.read, timeout.write, timeout.pool) if t]
    return max(finite, default=fallback)


def http_post(timeout: float = 5.0, *, client: httpx.Client | None = None) -> Post:
    """A Post over httpx on ``client`` if given (its owner closes it), else on a client of its
    own with a ``timeout`` (seconds) for connect, read and write.

    Each exchange, from connecting to the reply's last byte, ends within ``timeout`` (with
    ``client``: its longest timeout), and no more than MAX_REPLY_BYTES of a reply are read;
    past either, BadReply. Witness URLs may be plain http: whoever answers is not trusted to
    be brief or quick."""
    if client is None:
        client = httpx.Client(timeout=timeout)
    else:
        timeout = _longest(client.timeout, timeout)
    http = client  # narrowed for the closure

    def post(url: str, body: bytes) -> tuple[int, str, str]:
        return _exchange(http, url, body, deadline=timeout)

    return post


def _exchange(
    client: httpx.Client, url: str, body: bytes, *, deadline: float
) -> tuple[int, str, str]:
    watchdog = _Watchdog(deadline)
    request = client.build_request(
        "POST",
        url,
        content=body,
        # identity: a compressed reply could inflate far past the cap from a few bytes read.
        # close: a fresh connection per exchange, so the watchdog always learns its socket.
        headers={"accept-encoding": "identity", "connection": "close"},
        extensions={"trace": watchdog.trace},
    )
    response: httpx.Response | None = None
    try:
        with watchdog:
            try:
                response = client.send(request, stream=True)
                reply = _read_reply(response)
            except httpx.HTTPError:
                if not watchdog.expired:
                    raise
            # Also after a reply that looked whole: a body that ends with the connection ends
            # when the watchdog shuts it down.
            if watchdog.expired:
                raise BadReply(f"no whole reply within {deadline:g} s")
            return reply
    finally:
        if response is not None:
            response.close()


def _read_reply(response: httpx.Response) -> tuple[int, str, str]:
    content_type = response.headers.get("content-type", "")
    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
        raise BadReply("reply is compressed")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_REPLY_BYTES:
        raise BadReply(f"reply longer than {MAX_REPLY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_raw():  # raw: nothing decoded, each chunk one socket read
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise BadReply(f"reply longer than {MAX_REPLY_BYTES} bytes")
        chunks.append(chunk)
    return response.status_code, content_type, b"".join(chunks).decode("utf-8", "replace")


class _Watchdog:
    """Cuts an exchange off at its deadline, in whatever phase it is.

    httpx's timeouts bound each read, not the exchange: a witness trickling a byte every few
    seconds would hold the publisher, and every witness asked after it, for as long as it
    liked. At the deadline the connection's socket is shut down (not closed, so its descriptor
    can't be reused under httpx), which ends any read or write in progress."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._finished = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: keep the socket of the connection just made (TLS: wrapped)."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            sock = info["return_value"].get_extra_info("socket")
            with self._lock:
                self._socket = sock
                if self.expired:
                    self._shut()

    def _expire(self) -> None:
        with self._lock:
            if not self._finished:
                self.expired = True
                self._shut()

    def _shut(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                # socket.socket's own shutdown, also for an SSLSocket: its override would drop
                # the TLS state under the thread still reading.
                socket.socket.shutdown(self._socket, socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Before the response is closed and its socket freed: never shut a reused descriptor.
        with self._lock:
            self._finished = True
        self._timer.cancel()


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
                lines.extend(self._ask_safely(witness, note, text, checkpoint))
        merged = note + "".join(lines)
        try:
            # The same skew as _verified_lines used, so no line kept there fails here (unless
            # the clock stepped back meanwhile: then this round is lost, not the next).
            verify_witnessed(
                merged, self._policy, now=int(self._clock()), max_skew=DEFAULT_MAX_SKEW_S
            )
        except QuorumNotMet:
            return None
        with self._lock:
            self.published, self.published_size = merged, checkpoint.size
        return merged

    def _record(self, name: str, **changes: object) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._lag[name], key, value)

    def _ask_safely(
        self, witness: PolicyWitness, note: str, text: str, checkpoint: Checkpoint
    ) -> list[str]:
        """_ask; a failure it did not foresee (a bug, the source failing) becomes this
        witness's error for the round, and is logged, instead of losing every witness's
        cosignature with the round."""
        try:
            return self._ask(witness, note, text, checkpoint)
        except Exception as exc:  # one witness must never abort the round
            log.exception("asking witness %s failed", witness.name)
            self._record(
                witness.name, error=f"internal error: {type(exc).__name__}: {_printable(str(exc))}"
            )
            return []

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
                # It has cosigned a larger tree of this log than the log has: a rollback or a
                # split view, or a lie. Not remembered as its size: kept, this witness would
                # look caught up and never be asked again; asked each round, it is flagged
                # each round, and counts again once it answers for the log's real tree.
                log.error(
                    "witness %s claims size %d; the log has %d", witness.name, old, checkpoint.size
                )
                self._record(
                    witness.name,
                    error=f"witness is ahead, at size {old} (log size {checkpoint.size})",
                )
                return []
            proof = self._source.consistency_proof(old, checkpoint.size) if old else []
            body = f"old {old}\n" + "".join(base64.b64encode(h).decode() + "\n" for h in proof)
            try:
                status, content_type, reply = self._post(url, (body + "\n" + note).encode())
            except httpx.HTTPError as exc:
                self._record(witness.name, error=f"unreachable: {type(exc).__name__}")
                return []
            except BadReply as exc:
                self._record(witness.name, error=f"bad reply: {exc}")
                return []
            if status == 409 and content_type.split(";")[0].strip() == _SIZE_TYPE:
                named = _named_size(reply)
                if named is None:
                    self._record(witness.name, error=f"bad size in 409 reply: {_printable(reply)}")
                    return []
                old = named
                if named <= checkpoint.size:
                    self._record(witness.name, size=named)
                continue  # tlog-witness: retry from the size the witness names
            if status != 200:
                self._record(witness.name, error=f"HTTP {status}: {_printable(reply)}")
                return []
            good, error = self._verified_lines(witness, text, reply)
            if not good:
                self._record(witness.name, error=error)
                return []
            newest = max(timestamp for _, timestamp in good)
            self._record(witness.name, size=checkpoint.size, cosigned_at=newest, error=None)
            return [sig.line() for sig, _ in good]
        self._record(witness.name, error="size conflicts did not settle")
        return []

    def _verified_lines(
        self, witness: PolicyWitness, text: str, reply: str
    ) -> tuple[list[tuple[NoteSignature, int]], str]:
        """Lines of ``reply`` that are valid cosignatures by ``witness``, each with its
        timestamp, and why there are none if so. Other lines are ignored."""
        try:
            sigs = parse_note(text + "\n" + reply).signatures
        except NoteError:
            return [], "reply has no valid cosignature"
        # verify_witnessed rejects the whole checkpoint for one cosignature dated past the
        # skew: kept, a lying or fast-clocked witness would block the quorum the others met.
        latest = int(self._clock()) + DEFAULT_MAX_SKEW_S
        good: list[tuple[NoteSignature, int]] = []
        future: int | None = None
        for sig in sigs:
            if witness.verifier.matches(sig):
                try:
                    timestamp = witness.verifier.verify(text, sig)
                except NoteError:
                    continue
                if timestamp > latest:
                    future = timestamp
                    continue
                good.append((sig, timestamp))
        if not good and future is not None:
            return [], f"cosignature dated in the future ({future})"
        return good, "reply has no valid cosignature"

    def run(self, stop: threading.Event, cadence: float = DEFAULT_CADENCE_S) -> None:
        """Publish every ``cadence`` seconds until ``stop`` is set (for a background thread)."""
        while not stop.is_set():
            # A malformed checkpoint from the source is retried next round.
            with contextlib.suppress(InvalidInput):
                self.publish_once()
            stop.wait(cadence)
