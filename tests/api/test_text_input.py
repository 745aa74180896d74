"""Text fields and filenames through the real HTTP server (uvicorn on 127.0.0.1, httpx).

Every free-text field refuses what a terminal would act on or what hides text (C0/C1
controls, DEL, bidi and other invisible format characters, surrogates, line separators,
noncharacters) with a 422 naming the field and the code point, before anything is stored.
Filenames must also be distinct after NFC and case folding, and legal on Windows. A refused
upload leaves no object, no row, and one ledger entry recording the refusal.
"""

from __future__ import annotations

import contextlib
import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, func, select

from blo_vault.cli.client import ApiClient
from tests.conftest import (
    FAST_ARGON2,
    ON_POSTGRES,
    PASSWORD,
    MultipartFiles,
    World,
    postgres_schema_url,
    running_server,
    seed,
)
from vault.config import load_settings
from vault.models import Package, PackageFile
from vault.service import Vault

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
SINGLE_LINE = ("title",)
MULTI_LINE = ("description", "handling_note")

# What a terminal acts on or what hides text, written out here independently of the vault's
# own list, as the oracle the property test checks the server against.
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
HOSTILE = {
    "esc": "\x1b",
    "csi-sequence": "\x1b[8m",
    "nul": "\x00",
    "bell": "\x07",
    "backspace": "\x08",
    "lone-cr": "\r",
    "vertical-tab": "\x0b",
    "del": "\x7f",
    "c1-csi": "\x9b",
    "c1-nel": "\x85",
    "rlo": "\u202e",
    "lri": "\u2066",
    "arabic-letter-mark": "\u061c",
    "lrm": "\u200e",
    "zero-width-space": "\u200b",
    "word-joiner": "\u2060",
    "bom": "\ufeff",
    "tag-character": "\U000e0041",
    "line-separator": "\u2028",
    "paragraph-separator": "\u2029",
    "surrogate": "\ud800",
    "noncharacter-fffe": "\ufffe",
    "noncharacter-fdd0": "\ufdd0",
    "noncharacter-plane1": "\U0001ffff",
}


def refused(ch: str, *, multiline: bool) -> bool:
    """The oracle: would a terminal act on ``ch``, or could it hide text?"""
    if multiline and ch in "\n\t":
        return False
    category = unicodedata.category(ch)
    if category == "Cf":
        return ch not in "\u200c\u200d"  # ZWNJ and ZWJ: Persian, Pashto, emoji need them
    cp = ord(ch)
    noncharacter = 0xFDD0 <= cp <= 0xFDEF or cp & 0xFFFE == 0xFFFE
    return category in ("Cc", "Cs", "Zl", "Zp") or noncharacter


# --- a served vault -----------------------------------------------------------------------------


@dataclass
class Served:
    world: World
    url: str
    headers: dict[str, str]
    token: str


@contextlib.contextmanager
def _serve(base: Path) -> Iterator[Served]:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_schema_url()) if ON_POSTGRES else None
        settings_ = load_settings(data_dir=base / "vault-data", database_url=url, **FAST_ARGON2)
        vault = Vault.open(settings_)
        stack.callback(vault.close)
        world = World(vault=vault, settings=settings_, users=seed(vault))
        token = vault.login("uz.officer", PASSWORD).access_token
        yield Served(
            world=world,
            url=stack.enter_context(running_server(vault)),
            headers={"Authorization": f"Bearer {token}"},
            token=token,
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with _serve(tmp_path_factory.mktemp("text")) as s:
        yield s


@pytest.fixture
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=TIMEOUT, headers=served.headers) as c:
        yield c


@dataclass(frozen=True)
class Snapshot:
    packages: int
    files: int
    objects: tuple[str, ...]
    ledger: tuple[tuple[str, str, str], ...]


def snapshot(world: World) -> Snapshot:
    with Session(world.vault.engine) as session:
        packages = session.exec(select(func.count()).select_from(Package)).one()
        files = session.exec(select(func.count()).select_from(PackageFile)).one()
    rows = world.vault.unscoped_entries()
    root = world.settings.resolved_store_dir
    objects = tuple(
        sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        if root.exists()
        else ()
    )
    entries = tuple((e.action, e.decision, e.reason) for e in rows)
    return Snapshot(int(packages), int(files), objects, entries)


def assert_refused_and_recorded(
    reply: httpx.Response, before: Snapshot, after: Snapshot, *, action: str = "request"
) -> None:
    """Nothing stored, and exactly one entry added: the refusal, whose receipt the reply
    carries (refused metadata never reaches the upload operation: the API records it)."""
    assert (after.packages, after.files, after.objects) == (
        before.packages,
        before.files,
        before.objects,
    )
    assert after.ledger[: len(before.ledger)] == before.ledger
    assert after.ledger[len(before.ledger) :] == ((action, "deny", "invalid_input"),)
    assert reply.json()["error"]["receipt"] == len(after.ledger) - 1


def post_upload(
    client: httpx.Client, meta: dict[str, Any], files: list[tuple[str, bytes]]
) -> httpx.Response:
    parts: MultipartFiles = [("metadata", (None, json.dumps(meta), "application/json"))]
    parts += [("file", (name, data, "application/octet-stream")) for name, data in files]
    return client.post("/packages", files=parts)


def error_message(reply: httpx.Response) -> str:
    assert reply.status_code == 422, reply.text
    body = reply.json()
    assert body["error"]["code"] == "invalid_input", body
    message: str = body["error"]["message"]
    return message


# --- text fields --------------------------------------------------------------------------------


@pytest.mark.parametrize("field", SINGLE_LINE + MULTI_LINE)
@pytest.mark.parametrize("bad", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_character_in_a_text_field_is_refused_naming_field_and_code_point(
    field: str, bad: str, served: Served, client: httpx.Client
) -> None:
    before = snapshot(served.world)
    meta = {"title": "Seizure at Oybek", field: f"before{bad}after"}
    reply = post_upload(client, meta, [("report.txt", b"content")])
    message = error_message(reply)
    assert message.startswith(f"{field}: "), message
    assert f"U+{ord(bad[0]):04X}" in message, message
    assert_refused_and_recorded(reply, before, snapshot(served.world))


@pytest.mark.parametrize("where", ["key", "value"])
@pytest.mark.parametrize("bad", ["\x1b[2J", "\u202e", "\n", "\t", "\x00"])
def test_hostile_character_in_structured_fields_is_refused(
    where: str, bad: str, served: Served, client: httpx.Client
) -> None:
    before = snapshot(served.world)
    fields = {f"substance{bad}": "heroin"} if where == "key" else {"substance": f"her{bad}oin"}
    reply = post_upload(client, {"title": "t", "fields": fields}, [("a.txt", b"x")])
    message = error_message(reply)
    assert message.startswith("fields: "), message
    assert f"U+{ord(bad[0]):04X}" in message, message
    assert_refused_and_recorded(reply, before, snapshot(served.world))


@pytest.mark.parametrize("bad", ["\n", "\t", "\r\n"])
def test_title_is_one_line(bad: str, served: Served, client: httpx.Client) -> None:
    before = snapshot(served.world)
    reply = post_upload(client, {"title": f"two{bad}lines"}, [("a.txt", b"x")])
    assert "title: " in error_message(reply)
    assert_refused_and_recorded(reply, before, snapshot(served.world))


def test_multi_line_fields_keep_newlines_and_tabs_and_take_crlf_as_lf(
    client: httpx.Client,
) -> None:
    meta = {
        "title": "Seizure at Oybek",
        "description": "line one\r\nline\ttwo\n",
        "handling_note": "H3:\n\tnot to the press\r\n\tnot as evidence",
    }
    reply = post_upload(client, meta, [("a.txt", b"x")])
    assert reply.status_code == 201, reply.text
    detail = client.get(f"/packages/{reply.json()['package']['id']}").json()
    assert detail["description"] == "line one\nline\ttwo\n"
    assert detail["handling_note"] == "H3:\n\tnot to the press\n\tnot as evidence"


def test_scripts_that_need_joiners_are_accepted(client: httpx.Client) -> None:
    """ZWNJ (Persian, Dari, Pashto) and ZWJ (emoji sequences) are text, not hiding places."""
    title = "می\u200cخواهم 👩\u200d👩\u200d👧 Ойбек עברית"
    reply = post_upload(client, {"title": title, "fields": {"место": "Ойбек"}}, [("a.txt", b"x")])
    assert reply.status_code == 201, reply.text
    assert reply.json()["package"]["title"] == title


def test_login_username_with_escape_is_refused_before_the_ledger(
    served: Served, client: httpx.Client
) -> None:
    """A failed login records its username in the ledger; an auditor's terminal shows it."""
    before = snapshot(served.world)
    # As a login comes: without a token (so no one to record the refusal against).
    reply = httpx.post(
        f"{served.url}/auth/login",
        json={"username": "\x1b]0;pwned\x07", "password": "x"},
        timeout=TIMEOUT,
    )
    assert "U+001B" in error_message(reply)
    assert snapshot(served.world) == before


# --- filenames ----------------------------------------------------------------------------------

DUPLICATES = {
    "same": ("dup.txt", "dup.txt"),
    "nfc-nfd": (unicodedata.normalize("NFC", "café.txt"), unicodedata.normalize("NFD", "café.txt")),
    "case": ("Report.TXT", "report.txt"),
    "casefold-sharp-s": ("straße.txt", "STRASSE.txt"),
    "case-and-nfd": ("ÉTÉ.txt", unicodedata.normalize("NFD", "été.txt")),
}


@pytest.mark.parametrize("names", DUPLICATES.values(), ids=DUPLICATES.keys())
def test_duplicate_filenames_are_refused_and_nothing_is_left(
    names: tuple[str, str], tmp_path: Path
) -> None:
    """The first file is sealed and stored before the second name is seen: it is deleted
    again, no row remains, and the ledger records the refusal."""
    with (
        _serve(tmp_path) as served,
        httpx.Client(base_url=served.url, timeout=TIMEOUT, headers=served.headers) as client,
    ):
        before = snapshot(served.world)
        reply = post_upload(client, {"title": "t"}, [(names[0], b"a" * 100_000), (names[1], b"b")])
        message = error_message(reply)
        assert "same name" in message, message
        assert names[0] not in message  # filenames are content: never echoed
        after = snapshot(served.world)
        assert after.packages == 0
        assert after.files == 0
        assert after.objects == ()
        assert after.ledger[: len(before.ledger)] == before.ledger
        assert after.ledger[len(before.ledger) :] == (("upload", "deny", "invalid_input"),)
        assert reply.json()["error"]["receipt"] == len(after.ledger) - 1


WINDOWS_ILLEGAL = [
    "CON",
    "con",
    "Con.txt",
    "NUL.tar.gz",
    "PRN",
    "AUX.log",
    "COM1",
    "com9.txt",
    "LPT1",
    "lpt9.dat",
    "COM\u00b9.txt",
    "CONIN$",
    "NUL .txt",
    "a:b.txt",
    "report.txt:stream",
    "a<b.txt",
    "a>b.txt",
    "a|b.txt",
    "what?.txt",
    "all*.txt",
    "trailing-dot.",
    "trailing-dots...",
    "ends-in-dot-space. ",
]


@pytest.mark.parametrize("name", WINDOWS_ILLEGAL)
def test_names_windows_cannot_hold_are_refused(
    name: str, served: Served, client: httpx.Client
) -> None:
    before = snapshot(served.world)
    reply = post_upload(client, {"title": "t"}, [("ok.txt", b"x"), (name, b"y")])
    error_message(reply)
    after = snapshot(served.world)
    assert (after.packages, after.files, after.objects) == (
        before.packages,
        before.files,
        before.objects,
    )


@pytest.mark.parametrize("name", ["CONSOLE.txt", "COM10", "LPT0.txt", "a.con", "nul-report.txt"])
def test_names_that_only_resemble_reserved_ones_are_accepted(
    name: str, client: httpx.Client
) -> None:
    reply = post_upload(client, {"title": "t"}, [(name, b"x")])
    assert reply.status_code == 201, reply.text


def test_names_are_stored_nfc(client: httpx.Client) -> None:
    reply = post_upload(client, {"title": "t"}, [(unicodedata.normalize("NFD", "café.txt"), b"x")])
    assert reply.status_code == 201, reply.text
    assert reply.json()["package"]["files"][0]["name"] == unicodedata.normalize("NFC", "café.txt")


# --- the property: anything in, either a clean refusal or a faithful round trip -----------------

ANY_CHAR = st.one_of(
    st.characters(categories=["L", "M", "N", "P", "S", "Z", "C"]),  # incl. Cc, Cf, Cs, Cn, Co
    st.sampled_from(
        [c for c in HOSTILE.values() if len(c) == 1]
        + ["\n", "\t", "\u200c", "\u200d", "[", "]", "\\", ":", ".", " "]
    ),
)
# A filename travels in a multipart header as UTF-8: no surrogates; and httpx writes '"', '\\'
# and every C0 control but ESC in it as %22, \\ and %XX (HTML form encoding), so the server
# would get another name than the one drawn: those are tested by name above.
HTTPX_ENCODED = {'"', "\\"} | {chr(c) for c in range(0x20) if c != 0x1B}
NAME_CHAR = ANY_CHAR.filter(lambda c: unicodedata.category(c) != "Cs" and c not in HTTPX_ENCODED)


# Printable text of every script, with the joiners and markup brackets the vault keeps (and
# LF and TAB where they are allowed): what an accepted upload may hold.
WIDE_CHAR = st.one_of(
    st.characters(categories=["L", "M", "N", "P", "S", "Zs"]),
    st.sampled_from(["\u200c", "\u200d", "[", "]", "/", ":", "."]),
)
WIDE_LINES = st.one_of(WIDE_CHAR, st.sampled_from(["\n", "\t"]))
WIDE_NAME_CHAR = st.one_of(
    st.characters(categories=["L", "M", "N"]), st.sampled_from(list(" .-_()[]',;"))
)
INPUTS = ("title", "description", "handling_note", "field_key", "field_value", "names")


def name_key(name: str) -> str:
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


@st.composite
def upload_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """Metadata and filenames: one input at a time (or none) gets any character at all, so
    that accepted uploads are common enough to check their round trip."""
    hostile = draw(st.sampled_from((None, *INPUTS)))

    def text(which: str, size: tuple[int, int], wide: st.SearchStrategy[str]) -> str:
        chars = ANY_CHAR if which == hostile else wide
        return draw(st.text(chars, min_size=size[0], max_size=size[1]))

    name_chars = NAME_CHAR if hostile == "names" else WIDE_NAME_CHAR
    return {
        "title": text("title", (1, 40), WIDE_CHAR),
        "description": text("description", (0, 60), WIDE_LINES),
        "handling_note": text("handling_note", (0, 40), WIDE_LINES),
        "field_key": text("field_key", (1, 20), WIDE_CHAR),
        "field_value": text("field_value", (0, 30), WIDE_CHAR),
        "names": draw(
            st.lists(st.text(name_chars, min_size=1, max_size=20), min_size=1, max_size=3)
        ),
    }


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(inputs=upload_inputs(), data=st.binary(max_size=64))
def test_any_text_is_refused_cleanly_or_round_trips(
    served: Served,
    tmp_path_factory: pytest.TempPathFactory,
    inputs: dict[str, Any],
    data: bytes,
) -> None:
    title, description, handling_note = (inputs[k] for k in INPUTS[:3])
    field_key, field_value, names = (inputs[k] for k in INPUTS[3:])
    meta = {
        "title": title,
        "description": description,
        "handling_note": handling_note,
        "fields": {field_key: field_value},
    }
    texts_refused = (
        any(refused(c, multiline=False) for c in title + field_key + field_value)
        or any(refused(c, multiline=True) for c in description + handling_note)
        or "\r" in description.replace("\r\n", "")
        or "\r" in handling_note.replace("\r\n", "")
    )
    before = snapshot(served.world)
    files = [(name, data + bytes([i])) for i, name in enumerate(names)]
    with httpx.Client(base_url=served.url, timeout=TIMEOUT, headers=served.headers) as client:
        reply = post_upload(client, meta, files)
    event(f"HTTP {reply.status_code}")
    if reply.status_code != 201:
        message = error_message(reply)
        assert "\x1b" not in message
        assert not any(c in message for c in BIDI)
        after = snapshot(served.world)
        assert (after.packages, after.files, after.objects) == (
            before.packages,
            before.files,
            before.objects,
        )
        # The oracle's refusals must be refused; a refusal the oracle does not predict must be
        # about the filenames (the text oracle is exact, the filename rules are richer).
        if not texts_refused:
            assert "filename" in message or "same name" in message, message
        return
    assert not texts_refused, meta
    package = reply.json()["package"]
    assert package["title"] == title
    assert package["description"] == description.replace("\r\n", "\n")
    assert package["handling_note"] == handling_note.replace("\r\n", "\n")
    assert package["fields"] == {field_key: field_value}
    stored_names = [f["name"] for f in package["files"]]
    assert stored_names == [unicodedata.normalize("NFC", n) for n in names]
    assert len({name_key(n) for n in stored_names}) == len(stored_names)
    for name in stored_names:
        assert not any(refused(c, multiline=False) for c in name), name
        assert not any(c in '<>:"|?*\\/' for c in name), name
        assert not name.endswith((".", " ")), name
    # The creator gets every file back, bytes and name, over the API and through the CLI.
    with httpx.Client(base_url=served.url, timeout=TIMEOUT, headers=served.headers) as client:
        for info, (_, content) in zip(package["files"], files, strict=True):
            got = client.get(f"/packages/{package['id']}/files/{info['id']}")
            assert got.status_code == 200, got.text
            assert got.content == content
            disposition = got.headers["content-disposition"]
            assert unquote(disposition.split("filename*=UTF-8''", 1)[1]) == info["name"]
    target = tmp_path_factory.mktemp("download")
    with ApiClient(served.url, served.token) as api:
        written = api.download(package["id"], target)
    assert [p.name for p in written] == stored_names
    assert [p.read_bytes() for p in written] == [content for _, content in files]
    assert sorted(p.name for p in target.iterdir()) == sorted(stored_names)


@pytest.mark.parametrize("multiline", [False, True], ids=["one-line", "multi-line"])
def test_the_schema_states_exactly_what_the_text_check_refuses(multiline: bool) -> None:
    """The API's schema carries the check as a pattern, so a client generating requests from
    it (schemathesis found this: a login name with U+001F, schema-valid, refused with 422)
    sends only text that is accepted: every code point the check refuses, and only those,
    fails the pattern."""
    import re
    import sys

    from vault.text import safe_text_pattern, unsafe_char

    pattern = re.compile(safe_text_pattern(multiline=multiline))
    wrong = [
        cp
        for cp in range(sys.maxunicode + 1)
        if not 0xD800 <= cp <= 0xDFFF  # a lone surrogate: the check's alone (see the pattern)
        and (pattern.fullmatch(chr(cp)) is None) != unsafe_char(chr(cp), multiline=multiline)
    ]
    assert wrong == []
    assert pattern.fullmatch("Ойбек ی‌ها 🇺🇿") is not None


def test_fields_of_the_schema_carry_the_check_with_their_own_pattern() -> None:
    """The login name's pattern, and a crossing point's name, whose own pattern (some
    non-space) must still hold."""
    import re

    from blo_vault.api.app import LoginRequest
    from blo_vault.api.seizures import NewCrossingPoint

    login = re.compile(LoginRequest.model_json_schema()["properties"]["username"]["pattern"])
    assert login.fullmatch("uz.officer")
    assert not login.fullmatch("uz\x1f\ud912")
    name = re.compile(NewCrossingPoint.model_json_schema()["properties"]["name"]["pattern"])
    assert name.fullmatch("Oybek")
    assert name.fullmatch(" Ойбек ")
    assert not name.fullmatch("   ")
    assert not name.fullmatch("Oybek\u202e")


def test_the_schema_pattern_is_a_regex_json_schema_validators_accept() -> None:
    """ECMA-262, not Python: a pattern the validators can't read is dropped, silently, by
    schema-driven clients (Python's \\U escapes were)."""
    import jsonschema_rs

    from vault.text import safe_text_pattern

    validator = jsonschema_rs.validator_for(
        {"type": "string", "pattern": safe_text_pattern(multiline=False)}
    )
    assert validator.is_valid("Ойбек")
    assert not validator.is_valid("a\x1fb")
    assert not validator.is_valid("tag\U000e0041")
