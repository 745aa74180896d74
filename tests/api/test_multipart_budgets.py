"""What an upload's parts before the files may cost the server: bounded by the limits, not by
the body (``api/multipart.py``).

The web upload form's text fields are counted whole (names and headers too, at most
``MAX_FORM_FIELDS`` of them) and its CSRF token is checked as soon as it is in; the API's
``records`` part is refused once it holds more than ``MAX_RECORDS`` records could, before
``json.loads`` has built the rest. Each body is streamed from a generator to a real server on
127.0.0.1 in this process, so ``tracemalloc`` sees what the server allocates and not a copy of
the body; the peak is compared with the body's size, never a time.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from blo_vault.api import multipart
from tests.conftest import PASSWORD, World, running_server
from tests.ui.conftest import CSRF
from vault.errors import InvalidInput
from vault.seizures.schema import MAX_RECORDS, SeizureRecord

MiB = 1024 * 1024
BOUNDARY = secrets.token_hex(16)
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
NAME_BYTES = 3900  # a field name: python-multipart takes headers of up to 4096 bytes
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
# Empty fields with long names: 31 MB of body. Refused, the server holds a few of them and its
# socket buffers (uvicorn reads up to 1 MiB at a time), a third of that at most. (The heap
# traced is the whole process's, client included: 5.1-8.0 MiB measured, as the client's sends
# and the server's refusal interleave; before the fix it peaked at 165 MB.)
FIELDS = 8000
FIELDS_PEAK = FIELDS * NAME_BYTES // 3


@dataclass
class Server:
    """The world's vault served on 127.0.0.1, with a client signed in to the pages."""

    world: World
    url: str
    client: httpx.Client
    csrf: str


@pytest.fixture
def server(world: World) -> Iterator[Server]:
    with (
        running_server(world.vault) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT, follow_redirects=False) as client,
    ):
        token = CSRF.search(client.get("/ui/signin").text)
        assert token
        answer = client.post(
            "/ui/signin",
            data={"csrf": token.group(1), "username": "uz.officer", "password": PASSWORD},
        )
        assert answer.status_code == 303, answer.text
        form = CSRF.search(client.get("/ui/upload").text)
        assert form
        # A first refusal, so the error page's template is compiled before any peak is taken.
        forged = client.post("/ui/upload", data={"csrf": "forged"}, files={"file": b"x"})
        assert forged.status_code == 403, forged.text
        yield Server(world=world, url=url, client=client, csrf=form.group(1))


def part(name: bytes, value: bytes = b"", filename: bytes | None = None) -> bytes:
    disposition = b'form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return (
        b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n"
        + value + b"\r\n"
    )  # fmt: skip


def long_name(i: int) -> bytes:
    return b"%08d" % i + b"n" * (NAME_BYTES - 8)


def many_fields(first: list[bytes], count: int) -> Callable[[], Iterator[bytes]]:
    """A form body: ``first``, then ``count`` empty fields with distinct long names, then a
    file; ``count * NAME_BYTES`` bytes or so, made as it is sent."""

    def body() -> Iterator[bytes]:
        yield from first
        for i in range(count):
            yield part(long_name(i))
        yield part(b"file", b"x", filename=b"a.txt")
        yield b"--" + BOUNDARY.encode() + b"--\r\n"

    return body


def peak_while(send: Callable[[], httpx.Response]) -> tuple[httpx.Response, int]:
    """``send``'s answer and the process's heap peak (bytes above the start) meanwhile."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        answer = send()
        return answer, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def post(
    client: httpx.Client, path: str, body: Callable[[], Iterator[bytes]], **headers: str
) -> httpx.Response:
    """POST ``body`` as it is made. The server may answer and close before it has all of it:
    the client then reads the answer (httpcore) or fails to send, which the test sees."""
    with contextlib.suppress(httpx.TransportError):
        return client.post(path, content=body(), headers={"Content-Type": CONTENT_TYPE, **headers})
    pytest.fail("the server closed the connection without answering")


def nothing_stored(world: World) -> bool:
    return world.vault.list_packages(world["uz.officer"]).items == []


# --- the web upload's form fields ---------------------------------------------------------------


def test_many_long_named_fields_are_refused_without_holding_them(server: Server) -> None:
    """A signed-in officer's form with a valid token, then 8,000 empty fields with distinct
    3,900-byte names: refused at the 17th field. Counting only the values let every name into
    memory, and the upload through."""
    body = many_fields([part(b"csrf", server.csrf.encode())], FIELDS)
    answer, peak = peak_while(lambda: post(server.client, "/ui/upload", body))
    assert answer.status_code == 413, answer.text  # the page says why by the error's code
    print(f"{FIELDS * NAME_BYTES / MiB:.1f} MiB of field names: heap peak {peak / MiB:.1f} MiB")
    assert peak < FIELDS_PEAK
    assert nothing_stored(server.world)


def test_a_forged_token_is_refused_before_the_other_fields_are_read(server: Server) -> None:
    """The CSRF token is checked as soon as its field is in, not after every field."""
    body = many_fields([part(b"csrf", b"forged")], FIELDS)
    answer, peak = peak_while(lambda: post(server.client, "/ui/upload", body))
    assert answer.status_code == 403, answer.text
    print(f"forged token, then {FIELDS * NAME_BYTES / MiB:.1f} MiB: heap peak {peak / MiB:.1f} MiB")
    assert peak < FIELDS_PEAK
    assert nothing_stored(server.world)


def test_field_names_count_toward_the_form_budget(server: Server) -> None:
    """Fifteen fields of long names (~57 KiB) and a 10 KiB title: the values alone are within
    ``max_metadata_bytes`` (64 KiB), with the names they are not."""
    limit = server.world.settings.max_metadata_bytes
    names = [part(long_name(i)) for i in range(15)]
    title = part(b"title", b"t" * (10 * 1024))
    assert len(b"".join(names)) < limit < len(b"".join(names)) + len(title)
    body = many_fields([part(b"csrf", server.csrf.encode()), *names, title], 0)
    answer = post(server.client, "/ui/upload", body)
    assert answer.status_code == 413, answer.text
    assert nothing_stored(server.world)


def test_the_upload_form_still_goes_through(server: Server) -> None:
    """Every field the form has, as a browser sends them (the limits are not too tight)."""
    fields = {
        "csrf": server.csrf,
        "title": "Oybek, January",
        "description": "d" * 20_000,  # the form's maxlength
        "classification": "RESTRICTED",
        "handling": "H1",
        "handling_note": "n" * 2_000,
    }
    first = [part(name.encode(), value.encode()) for name, value in fields.items()]
    first.append(part(b"records", b"", filename=b""))  # the records field left empty
    answer = post(server.client, "/ui/upload", many_fields(first, 0))
    assert answer.status_code == 303, answer.text
    assert not nothing_stored(server.world)


# --- the API's records part ---------------------------------------------------------------------

RECORDS_BYTES = 8 * MiB
# One element of a records list, over and over: each costs the parser 8 to 21 times its bytes.
SHAPES = {"objects": b"{}", "lists": b"[]", "strings": b'"ab"', "numbers": b"1.5"}


def records_body(element: bytes) -> Callable[[], Iterator[bytes]]:
    """An API upload whose records part is ``[element,element,...]`` of RECORDS_BYTES."""
    count = RECORDS_BYTES // (len(element) + 1)
    piece = b",".join([element] * 10_000) + b","

    def body() -> Iterator[bytes]:
        yield part(b"metadata", json.dumps({"title": "records"}).encode())[:-2]
        yield b"\r\n--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="records"'
        yield b"\r\nContent-Type: application/json\r\n\r\n["
        for _ in range(count // 10_000):
            yield piece
        yield element + b"]\r\n"
        yield part(b"file", b"x", filename=b"a.txt")
        yield b"--" + BOUNDARY.encode() + b"--\r\n"

    return body


@pytest.mark.parametrize("shape", SHAPES)
def test_a_records_part_of_too_many_values_is_refused_before_it_is_built(
    server: Server, shape: str
) -> None:
    """8 MiB of ``[{},{},...]`` (2.8 million objects), ``[[],...]``, ``["ab",...]`` or
    ``[1.5,...]``: 422 at most MAX_RECORDS records, with the heap peak within a few copies of
    the part (it is held whole, 16 MiB at most) instead of 13 to 25 times it."""
    token = server.world.vault.login("uz.officer", PASSWORD).access_token
    answer, peak = peak_while(
        lambda: post(
            server.client,
            "/packages",
            records_body(SHAPES[shape]),
            Authorization=f"Bearer {token}",
        )
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_input"
    assert f"at most {MAX_RECORDS} seizure records" in error["message"]
    print(f"{shape}: {RECORDS_BYTES / MiB:.0f} MiB records part, heap peak {peak / MiB:.1f} MiB")
    assert peak < 6 * RECORDS_BYTES
    assert nothing_stored(server.world)


def test_the_most_records_a_package_may_have_still_parse() -> None:
    """MAX_RECORDS records, every value a string (as a spreadsheet gives them) and text with
    brackets and quotes: within every count the records part is held to."""
    record = {name: "x" for name in SeizureRecord.model_fields}
    record["concealment"] = 'under the "spare" wheel [rear]'
    raw = json.dumps([record] * MAX_RECORDS).encode()
    rows = multipart._load_records(raw)
    assert isinstance(rows, list)
    assert len(rows) == MAX_RECORDS
    with pytest.raises(InvalidInput, match=f"at most {MAX_RECORDS}"):
        multipart._load_records(json.dumps([{}] * (MAX_RECORDS + 1)).encode())
