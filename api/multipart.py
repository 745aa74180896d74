"""Streaming multipart parsing for uploads: nothing is buffered whole or spooled to disk.

FastAPI's ``UploadFile`` spools bodies to a temporary file, which would put plaintext on disk.
Instead the upload runs in a worker thread (:meth:`MultipartUpload.run`) that feeds
python-multipart's push parser; each file part becomes a reader the service seals as it reads.

The metadata or form fields are pulled from the event loop one body chunk at a time, so nothing
beyond them is received before they are checked. Once the files start, a task on the event loop
(:class:`_BodyPump`) keeps receiving while the thread parses, hashes, seals and writes, at most
``_PUMP_BYTES`` ahead: pulling each chunk through ``anyio.from_thread`` instead stalled the
socket for a thread round trip per chunk (uvicorn stops reading past 64 KiB until the app takes
it), which made a large upload wait on the network and the disk in turn.
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
from pydantic import ValidationError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from vault.errors import InvalidInput, RequestTimeout, TooLarge, VaultError
from vault.schemas import NewPackage
from vault.seizures.schema import MAX_RECORDS, SeizureRecord, validate_records
from vault.service import IncomingFile
from vault.service.signatures import MAX_SIGNATURE_PART, SignedManifest, parse_part

__all__ = [
    "MultipartUpload",
    "boundary_of",
]

_END = object()
# How far the body pump may run ahead of the thread that seals: bounded memory per upload.
_PUMP_BYTES = 8 * 1024 * 1024
# Before the files, a chunk goes to the parser this much at a time, as its events are taken:
# however large a chunk the server hands over, its many small parts are checked one by one
# (and the first one too many refused), never all turned into queued events at once.
_PARSE_STEP = 64 * 1024
T = TypeVar("T")


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary of a Content-Type header; InvalidInput if absent or not multipart."""
    if not content_type:
        raise InvalidInput("upload must be multipart/form-data")
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary or len(boundary) > 200:
        raise InvalidInput("upload must be multipart/form-data with a boundary")
    return boundary


# The records part of an upload: some 50,000 records of JSON (vault.seizures.MAX_RECORDS).
MAX_RECORDS_BYTES = 16 * 1024 * 1024
# What a records part of MAX_RECORDS real records holds at most, counted before it is parsed:
# no lists, and every field a key and a string value (four quotes); each record is allowed two
# brackets and four quotes more inside its text, where a count in the bytes sees them too.
_RECORD_FIELDS = len(SeizureRecord.model_fields)
_MAX_RECORD_BRACKETS = 2 * MAX_RECORDS
_MAX_RECORD_QUOTES = (4 * _RECORD_FIELDS + 4) * MAX_RECORDS
_TOO_MANY_RECORDS = f"at most {MAX_RECORDS} seizure records a package, each a flat JSON object"

# The web upload form's text fields are csrf, title, description, classification, handling and
# handling_note (api/web/templates/upload.html); this leaves room for a few more, and is far too
# few for a body of many small parts to cost the server anything.
MAX_FORM_FIELDS = 16


class _BodyPump:
    """Receives the body on the event loop into a bounded buffer the worker thread drains.

    The loop side (:meth:`run`) stops receiving while ``limit`` bytes wait, until the thread
    has taken them; errors (timeout, client gone) and the end travel through the buffer, so the
    thread sees them in order. :meth:`stop` (on the loop) wakes a waiting thread for good.
    """

    def __init__(self, receive: Callable[[], Any], limit: int = _PUMP_BYTES) -> None:
        self._receive = receive  # the loop-side coroutine function giving the next chunk
        self._limit = limit
        self._items: collections.deque[object] = collections.deque()
        self._buffered = 0
        self._cond = threading.Condition()
        self._room: anyio.Event | None = None
        self._stopped = False

    def _put(self, item: object) -> anyio.Event | None:
        """Queue ``item``; the event to wait on when the buffer is now full."""
        with self._cond:
            self._items.append(item)
            if isinstance(item, bytes):
                self._buffered += len(item)
            self._cond.notify()
            if self._buffered >= self._limit:
                self._room = anyio.Event()
            return self._room

    async def run(self) -> None:
        """Receive until the end of the body or the first error (loop side)."""
        try:
            while True:
                chunk = await self._receive()
                if chunk is _END:
                    self._put(_END)
                    return
                if chunk and (room := self._put(chunk)) is not None:
                    await room.wait()
        except VaultError as exc:
            self._put(exc)
        finally:
            self.stop()  # also when cancelled: the thread must never wait for nothing

    def stop(self) -> None:
        """The upload is over (loop side): a thread still waiting gets an error, not a hang."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def take(self) -> list[object]:
        """Everything received so far, waiting for at least one item (thread side)."""
        with self._cond:
            while not self._items:
                if self._stopped:
                    raise InvalidInput("the client went away before the upload was complete")
                self._cond.wait()
            items = list(self._items)
            self._items.clear()
            self._buffered = 0
            room, self._room = self._room, None
        if room is not None:
            anyio.from_thread.run_sync(room.set)
        return items


class MultipartUpload:
    """Thread-side view of a streamed multipart body: a metadata part, then file parts."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        boundary: bytes,
        *,
        max_metadata_bytes: int,
        timeout_seconds: float,
        pull: Callable[[Callable[[], Any]], Any] = anyio.from_thread.run,
    ) -> None:
        self._timeout = timeout_seconds
        self._body = body
        self._pull = pull
        self._events: collections.deque[tuple[str, Any]] = collections.deque()
        self._headers: list[tuple[bytes, bytes]] = []
        self._field = b""
        self._value = b""
        self._max_metadata = max_metadata_bytes
        self._finished = False
        self._held = b""  # a chunk received before the files, fed on in steps from _held_at
        self._held_at = 0
        self._signature_seen = False
        self._pump: _BodyPump | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
            max_header_count=8,
            max_header_size=4096,
        )

    # parser callbacks (run in the worker thread, inside parser.write)
    def _on_part_begin(self) -> None:
        self._headers = []

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers.append((self._field.lower(), self._value))
        self._field, self._value = b"", b""

    def _on_headers_finished(self) -> None:
        self._events.append(("part", dict(self._headers)))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(("data", bytes(data[start:end])))

    def _on_part_end(self) -> None:
        self._events.append(("part_end", None))

    def _on_end(self) -> None:
        self._events.append(("end", None))

    async def _next_body_chunk(self) -> bytes | object:
        try:
            with anyio.fail_after(self._timeout):
                return await self._body.__anext__()
        except StopAsyncIteration:
            return _END
        except ClientDisconnect:
            raise InvalidInput("the client went away before the upload was complete") from None
        except TimeoutError:
            raise RequestTimeout("request body too slow: nothing received in time") from None

    async def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` (which reads this upload) in a worker thread; its result or error.

        The body pump, once the files start, runs in a task group here; it is stopped when
        ``work`` ends, however it ends.
        """
        outcome: T | BaseException
        async with anyio.create_task_group() as group:
            self._task_group = group
            try:
                outcome = await anyio.to_thread.run_sync(work)
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
                outcome = exc
            finally:
                group.cancel_scope.cancel()
                if self._pump is not None:
                    self._pump.stop()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _start_pump(self) -> None:
        """From now on receive ahead of the parser (thread side; only inside :meth:`run`)."""
        if self._pump is None and self._task_group is not None and not self._finished:
            self._pump = _BodyPump(self._next_body_chunk)
            self._pull(lambda: _start_soon(self._task_group, self._pump))

    def _chunks(self) -> list[object]:
        if self._pump is not None:
            return self._pump.take()
        return [self._pull(self._next_body_chunk)]

    def _next_event(self) -> tuple[str, Any]:
        while not self._events:
            if self._held:
                start = self._held_at
                self._held_at += _PARSE_STEP
                if self._held_at >= len(self._held):
                    piece, self._held, self._held_at = self._held[start:], b"", 0
                else:
                    piece = self._held[start : self._held_at]
                self._write(piece)
                continue
            if self._finished:
                raise InvalidInput("multipart body is truncated")
            for chunk in self._chunks():
                if isinstance(chunk, VaultError):
                    raise chunk
                if not isinstance(chunk, bytes):  # _END
                    self._finished = True
                    break
                if self._pump is None:
                    self._held = chunk  # the only chunk: pulled one at a time until the files
                else:
                    self._write(chunk)
        return self._events.popleft()

    def _write(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except Exception:  # noqa: BLE001 - python-multipart raises several types here
            raise InvalidInput("malformed multipart body") from None

    def _expect_part(self) -> dict[bytes, bytes] | None:
        kind, value = self._next_event()
        if kind == "end":
            return None
        if kind != "part":
            raise InvalidInput("malformed multipart body")
        headers: dict[bytes, bytes] = value
        return headers

    def metadata(self) -> NewPackage:
        """Read the first part, which must be ``metadata`` holding the package's JSON."""
        headers = self._expect_part()
        if headers is None or _disposition(headers)[0] != "metadata":
            raise InvalidInput("the first part of an upload must be 'metadata' (JSON)")
        raw = self._part_bytes(self._max_metadata, "package metadata is too large")
        try:
            return NewPackage.model_validate(json.loads(bytes(raw).decode("utf-8")))
        except (ValueError, ValidationError, RecursionError) as exc:  # deep nesting too
            fields = ""
            if isinstance(exc, ValidationError):
                fields = ": " + ", ".join(
                    sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
                )
            raise InvalidInput("invalid package metadata" + fields) from None

    def _part_bytes(self, limit: int, too_large: str) -> bytes:
        """The rest of the current part, at most ``limit`` bytes (TooLarge beyond)."""
        raw = bytearray()
        while (event := self._next_event())[0] == "data":
            raw += event[1]
            if len(raw) > limit:
                raise TooLarge(too_large)
        if event[0] != "part_end":
            raise InvalidInput("malformed multipart body")
        return bytes(raw)

    def signature(self) -> SignedManifest | None:
        """After the files: the ``signature`` part's signed manifest, or None if the body
        ended without one. Nothing may follow it."""
        if not self._signature_seen:
            return None
        signed = parse_part(self._part_bytes(MAX_SIGNATURE_PART, "signature part is too large"))
        if self._expect_part() is not None:
            raise InvalidInput("nothing may follow the 'signature' part")
        return signed

    def files(self) -> Iterator[IncomingFile]:
        """Each following part as an IncomingFile; the service must read one before the next."""
        yield from self._files_from(self._expect_part(), signed=True)

    def records_then_files(self) -> tuple[list[SeizureRecord], Iterator[IncomingFile]]:
        """An optional ``records`` part (a JSON list of seizure records, right after the
        metadata), every record checked by the one schema; then the files as :meth:`files`.
        InvalidInput naming every bad record and field."""
        headers = self._expect_part()
        if headers is None or _disposition(headers) != ("records", None):
            return [], self._files_from(headers, signed=True)
        raw = self._part_bytes(
            MAX_RECORDS_BYTES, f"the records part is larger than {MAX_RECORDS_BYTES} bytes"
        )
        try:
            rows = _load_records(raw)
        except (ValueError, RecursionError):
            raise InvalidInput("the records part must be a JSON list of records") from None
        if not isinstance(rows, list):
            raise InvalidInput("the records part must be a JSON list of records")
        return validate_records(rows), self._files_from(self._expect_part(), signed=True)

    def form(self) -> tuple[dict[str, str], Iterator[IncomingFile]]:
        """An HTML form's text fields, which must come first (at most ``MAX_FORM_FIELDS`` of
        them, with their headers at most ``max_metadata_bytes`` in all), and then its file
        parts as :meth:`files` gives them (the web upload)."""
        fields, headers = self._form_fields()
        return fields, self._files_from(headers)

    def form_with_records_file(
        self, *, check: Callable[[dict[str, str]], None], max_records_bytes: int
    ) -> tuple[dict[str, str], tuple[str, bytes] | None, Iterator[IncomingFile]]:
        """The web upload with a seizure-records file: the form's text fields (passed to
        ``check`` as soon as the ``csrf`` field is in, else after the last field; in any case
        before a byte of any file is read), then an optional ``records`` file part (its
        filename and bytes, at most ``max_records_bytes``; None when the field was left
        empty), then the files as :meth:`files` gives them."""
        fields, headers = self._form_fields(check)
        records = None
        if headers is not None and _disposition(headers)[0] == "records":
            filename = _disposition(headers)[1] or ""
            raw = self._part_bytes(
                max_records_bytes, f"the records file is larger than {max_records_bytes} bytes"
            )
            # A browser sends an empty part (no name, no bytes) for a file field left empty.
            records = (filename, raw) if filename or raw else None
            headers = self._expect_part()
        return fields, records, self._files_from(headers)

    def _form_fields(
        self, check: Callable[[dict[str, str]], None] | None = None
    ) -> tuple[dict[str, str], dict[bytes, bytes] | None]:
        """The form's text fields and the headers of the first file part (None if none).

        Whatever is kept while they are read counts: each part's headers (its name among them)
        as well as its value, all within ``max_metadata_bytes``, and at most MAX_FORM_FIELDS
        parts; counting only the values let a body of empty parts with long names grow the
        heap with its size. ``check`` runs once the ``csrf`` field is in (a form with none gets
        it after the last field), so a forged form is refused before the rest is read.
        """
        fields: dict[str, str] = {}
        size = 0
        too_large = "the form's fields are too large"
        while (headers := self._expect_part()) is not None:
            name, filename = _disposition(headers)
            if filename is not None:
                break
            if len(fields) == MAX_FORM_FIELDS:
                raise TooLarge(f"a form has at most {MAX_FORM_FIELDS} fields")
            size += sum(len(key) + len(value) for key, value in headers.items())
            if size > self._max_metadata:
                raise TooLarge(too_large)
            raw = self._part_bytes(self._max_metadata - size, too_large)
            size += len(raw)
            if name in fields:
                raise InvalidInput("malformed form")
            try:
                fields[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput("form fields must be valid UTF-8") from None
            if name == "csrf" and check is not None:
                check(fields)
                check = None
        if check is not None:
            check(fields)
        return fields, headers

    def _files_from(
        self, headers: dict[bytes, bytes] | None, *, signed: bool = False
    ) -> Iterator[IncomingFile]:
        """The file parts from ``headers`` on. With ``signed`` (the API's upload), a
        ``signature`` part ends them; a form (the web upload) has none, so there it is refused
        like any other stray part instead of quietly ending the file list."""
        # The fields before the files have been checked by now: receive ahead from here on.
        self._start_pump()
        while headers is not None:
            name, filename = _disposition(headers)
            if signed and name == "signature" and filename is None:
                self._signature_seen = True  # the trailing signed manifest (issue 13)
                return
            if name != "file" or filename is None:
                raise InvalidInput("after 'metadata', every part must be a 'file' with a filename")
            reader = _PartReader(self._next_event)
            yield IncomingFile(name=filename, reader=reader)
            reader.drain()
            headers = self._expect_part()
        if not self._finished:
            # Anything after the closing boundary is ignored by the parser; nothing to read.
            return


def _load_records(raw: bytes) -> Any:
    """The records part's JSON; InvalidInput once it holds more than MAX_RECORDS flat records
    could, before the parser builds the rest.

    check_rows counts the records only after json.loads has built them all: 16 MiB of
    ``[{},{},...]`` became 5.6 million dicts, 26 times the bytes (``[],``, ``"ab",`` and
    ``1.5,`` cost 8 to 21 times theirs). Objects and numbers are counted by the parser's hooks,
    which stop it at the first one too many. It has none for lists and strings, so their
    brackets and quotes are counted in the bytes first: an upper bound, as one inside a string
    counts too (hence the room for some in _MAX_RECORD_BRACKETS and _MAX_RECORD_QUOTES).
    """
    if raw.count(b"[") > _MAX_RECORD_BRACKETS or raw.count(b'"') > _MAX_RECORD_QUOTES:
        raise InvalidInput(_TOO_MANY_RECORDS)
    left = {"objects": MAX_RECORDS, "numbers": _RECORD_FIELDS * MAX_RECORDS}

    def counted(kind: str, make: Callable[[Any], object]) -> Callable[[Any], object]:
        def hook(value: Any) -> object:
            left[kind] -= 1
            if left[kind] < 0:
                raise InvalidInput(_TOO_MANY_RECORDS)
            return make(value)

        return hook

    return json.loads(
        raw.decode("utf-8"),
        object_hook=counted("objects", lambda record: record),
        parse_int=counted("numbers", int),
        parse_float=counted("numbers", float),
        parse_constant=counted("numbers", float),
    )


async def _start_soon(group: anyio.abc.TaskGroup | None, pump: _BodyPump | None) -> None:
    if group is not None and pump is not None:
        group.start_soon(pump.run)


class _PartReader:
    """``read(n)`` over the data events of one part.

    The pieces received are kept as they are (a piece split by a read as views of it) and
    joined once per read: a ``read`` of a sealing segment is one copy of the bytes, not three
    (append, slice, bytes) as through a bytearray, and a piece that is exactly what was asked
    for is handed on without any.
    """

    def __init__(self, next_event: Callable[[], tuple[str, Any]]) -> None:
        self._next_event = next_event
        self._pieces: collections.deque[bytes | memoryview] = collections.deque()
        self._buffered = 0
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        while not self._done and (size < 0 or self._buffered < size):
            kind, value = self._next_event()
            if kind == "data":
                self._pieces.append(value)
                self._buffered += len(value)
            elif kind == "part_end":
                self._done = True
            else:
                raise InvalidInput("malformed multipart body")
        if size < 0 or size >= self._buffered:
            size = self._buffered
        taken: list[bytes | memoryview] = []
        need = size
        while need:
            piece = self._pieces.popleft()
            if len(piece) > need:
                view = memoryview(piece)
                self._pieces.appendleft(view[need:])
                piece = view[:need]
            taken.append(piece)
            need -= len(piece)
        self._buffered -= size
        if len(taken) == 1 and isinstance(taken[0], bytes):
            return taken[0]
        return b"".join(taken)

    def drain(self) -> None:
        """Skip whatever the consumer left unread (it stops only on error)."""
        while self.read(1 << 20):
            pass


def _disposition(headers: dict[bytes, bytes]) -> tuple[str, str | None]:
    raw = headers.get(b"content-disposition")
    if raw is None:
        raise InvalidInput("multipart part without Content-Disposition")
    kind, params = parse_options_header(raw)
    if kind != b"form-data":
        raise InvalidInput("multipart parts must be form-data")
    # RFC 7578 §4.2: filenames travel as UTF-8 in filename="..."; filename* is not used.
    try:
        name = params.get(b"name", b"").decode("utf-8")
        filename_raw = params.get(b"filename")
        filename = None if filename_raw is None else filename_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("part names and filenames must be valid UTF-8") from None
    return name, filename
