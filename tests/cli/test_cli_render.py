"""What the CLI prints of text it did not write: nothing a terminal would act on, no markup.

Three sources are tried: the render functions themselves (property-based), a real vault
server with the worst characters it accepts, and a hostile server on 127.0.0.1 that answers
every route with escape sequences, bidi overrides, rich markup, surrogates and unsafe
filenames -- the CLI must stay safe even when the server is not. Downloads of names a server
should never have accepted (legacy duplicates, Windows device names, path parts) land under
safe, distinct names inside the target folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import unicodedata
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console, RenderableType
from sqlmodel import Session, col, select

from blo_vault.cli import render
from blo_vault.cli.client import local_names
from tests.conftest import PASSWORD, CliResult, CliRunner, World, reseal_package_digest
from vault import crypto
from vault.errors import AuthenticationFailed, InvalidInput
from vault.ledger.log import Actor
from vault.models import Package, PackageFile
from vault.schemas import check_filename, filename_key
from vault.service.sealed import file_identity, package_identity

LoggedIn = Callable[[str], None]
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def inert(ch: str, *, multiline: bool = True) -> bool:
    """The oracle, written apart from the vault's: may ``ch`` reach a terminal as it is?"""
    if ch == "\n" or (multiline and ch == "\t"):
        return True
    category = unicodedata.category(ch)
    if category == "Cf":
        return ch in "\u200c\u200d"
    cp = ord(ch)
    noncharacter = 0xFDD0 <= cp <= 0xFDEF or cp & 0xFFFE == 0xFFFE
    return category not in ("Cc", "Cs", "Zl", "Zp") and not noncharacter


def assert_inert(output: str) -> None:
    assert "\x1b" not in output
    bad = sorted({f"U+{ord(c):04X}" for c in output if not inert(c)})
    assert not bad, f"unsafe characters reach the terminal: {bad}\n{output!r}"


def printed(renderable: RenderableType) -> str:
    sink = io.StringIO()
    Console(file=sink, width=200, soft_wrap=True).print(renderable)
    return sink.getvalue()


def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the CLI's consoles room for whole rows. They read COLUMNS once, at import, so
    under pytest-xdist (no terminal) setting it later would leave them at 80 columns."""
    from blo_vault.cli import main as cli_main

    for console in (cli_main.out, cli_main.err):
        monkeypatch.setattr(console, "width", 400)


# --- the render functions -----------------------------------------------------------------------

ANY_TEXT = st.text(
    st.one_of(
        st.characters(categories=["L", "M", "N", "P", "S", "Z", "C"]),  # with Cs, Cc, Cf, Cn
        st.sampled_from(["\x1b", "\x9b", "\r", "\n", "\t", "\u202e", "[", "]", "/", ":", "\\"]),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(value=ANY_TEXT, multiline=st.booleans())
def test_clean_escapes_every_unsafe_character_and_keeps_the_rest(
    value: str, multiline: bool
) -> None:
    shown = render.clean(value, multiline=multiline)
    assert all(inert(c, multiline=multiline) for c in shown), repr(shown)
    if not multiline:
        assert "\n" not in shown
    if all(inert(c, multiline=multiline) and (multiline or c != "\n") for c in value):
        assert shown == value  # ordinary text of any script is shown as it is


@settings(max_examples=200, deadline=None)
@given(value=ANY_TEXT)
def test_rendered_text_reaches_the_console_inert_and_never_as_markup(value: str) -> None:
    for renderable in (render.text(value), render.line("title: ", value), render.text(value)):
        assert_inert(printed(renderable))
    assert printed(render.line("[bold]", value, "[/]")).startswith("[bold]")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("a\x1b[8mhidden", "a\\x1b[8mhidden"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("x\ud800y", "x\\ud800y"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("cr\rlf\n", "cr\\rlf\\n"),
        ("[bold]loud[/bold] :smile:", "[bold]loud[/bold] :smile:"),
        ("می\u200cخواهم", "می\u200cخواهم"),
    ],
)
def test_escapes_are_visible_and_markup_literal(value: str, shown: str) -> None:
    assert render.clean(value) == shown
    assert printed(render.text(value)).rstrip("\n") == shown


# --- downloaded names ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.one_of(ANY_TEXT, st.sampled_from(["CON", "a.txt", "A.TXT", "..", ""]))))
def test_local_names_are_safe_distinct_and_faithful(names: list[str]) -> None:
    local = local_names(names)
    assert len(local) == len(names)
    for name in local:
        assert check_filename(name) == name
        assert Path(name).name == name  # no path part: stays in the target folder
    assert len({filename_key(n) for n in local}) == len(local)
    kept: set[str] = set()
    for original, name in zip(names, local, strict=True):
        try:
            valid = check_filename(original) == original
        except InvalidInput:
            valid = False
        if valid and filename_key(original) not in kept:
            assert name == original  # the first of each valid name keeps it
            kept.add(filename_key(original))


def test_local_names_number_casefold_duplicates() -> None:
    assert local_names(["dup.txt", "DUP.txt", "dup.txt", "CON.txt", "../../etc/passwd", ""]) == [
        "dup.txt",
        "DUP (2).txt",
        "dup (3).txt",
        "_CON.txt",
        "_._etc_passwd",
        "file-6",
    ]


def test_hidden_names_are_neither_stored_nor_saved_hidden() -> None:
    """A package saved into a home folder (``-o .`` is the default) must not plant a
    ``.bash_profile``: such names are refused at upload, and one a server sends anyway (stored
    before, or a hostile host) is saved visible."""
    for name in (".bash_profile", ".bashrc", "..x", ".env"):
        with pytest.raises(InvalidInput, match="hidden"):
            check_filename(name)
    assert local_names([".bash_profile", ".bashrc", ".bashrc", "...", "a.txt"]) == [
        "bash_profile",
        "bashrc",
        "bashrc (2)",
        "file-4",
        "a.txt",
    ]


# --- a real server, the worst text it accepts ---------------------------------------------------

WORST = {
    "title": "[bold]loud[/bold] :smile: עברית \u200d👩\u200d👩 [link=http://127.0.0.1/]x[/link]",
    "description": "line one\n\tline [red]two[/red]\n:warning: \\x1b",
    "handling_note": "H3: [dim]not to the press[/dim]\n\tand not as evidence",
    "handling": "H3",
    "fields": {"[i]substance[/i]": "[b]heroin[/b]"},
}


def upload_worst(live_server: str, world: World) -> str:
    token = world.vault.login("uz.officer", PASSWORD).access_token
    reply = httpx.post(
        live_server + "/packages",
        files=[
            ("metadata", (None, json.dumps(WORST), "application/json")),
            ("file", ("[bold]x[b] ליל.txt", b"content", "text/plain")),
        ],
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert reply.status_code == 201, reply.text
    package_id: str = reply.json()["package"]["id"]
    released = httpx.post(
        f"{live_server}/packages/{package_id}/releases",
        json={"country": "KZ"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert released.status_code == 201, released.text
    return package_id


def test_show_and_list_print_accepted_text_literally(
    cli: CliRunner,
    logged_in: LoggedIn,
    live_server: str,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wide_console(monkeypatch)  # one line per table row, so the text is whole
    package_id = upload_worst(live_server, world)
    logged_in("uz.officer")
    shown = cli("package", "show", package_id, user="uz.officer")
    assert shown.code == 0, shown.stderr
    assert_inert(shown.stdout)
    for literal in (
        "[bold]loud[/bold] :smile:",
        "[red]two[/red]",
        ":warning: \\x1b",
        "[dim]not to the press[/dim]",
        "[i]substance[/i]",
        "[b]heroin[/b]",
        "[bold]x[b] ליל.txt",
        "[link=http://127.0.0.1/]x[/link]",
    ):
        assert literal in shown.stdout, literal
    listed = cli("package", "list", user="uz.officer")
    assert listed.code == 0, listed.stderr
    assert_inert(listed.stdout)
    assert "[bold]loud[/bold] :smile:" in listed.stdout
    logged_in("kz.officer")  # the H3 note is acknowledged by a recipient
    acknowledged = cli("package", "acknowledge", package_id, user="kz.officer")
    assert acknowledged.code == 0, acknowledged.stderr
    assert_inert(acknowledged.stdout)
    assert "[dim]not to the press[/dim]" in acknowledged.stdout


def test_ledger_show_escapes_a_login_name_with_escape_sequences(
    cli: CliRunner, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vaults before this one recorded a refused login's name as typed (now an unknown name
    is a keyed hash); the ledger keeps such entries forever, and an auditor's terminal must
    not run what is in them."""
    wide_console(monkeypatch)
    name = "\x1b]0;pwned\x07\x1b[2J[bold]x"
    with pytest.raises(AuthenticationFailed):
        world.vault.login(name, "wrong")
    world.vault.core.record_decision(Actor(user=name), "login", "deny", "bad_credentials")
    result = cli("ledger", "show", "--action", "login", "--decision", "deny")
    assert result.code == 0, result.stderr
    assert_inert(result.stdout)
    assert "\\x1b]0;pwned\\x07" in result.stdout


# --- packages stored before duplicate and Windows names were refused ----------------------------


def rename_stored_files(world: World, package_id: str, names: list[str]) -> None:
    """Rewrite the sealed names of a package's files, as an older vault could have stored
    them (the service itself refuses such names now)."""
    vault = world.vault
    with Session(vault.engine) as session:
        package = session.get(Package, package_id)
        assert package is not None
        key = vault.keys.keyring.unwrap(
            crypto.WrappedKey(package.kek_id, package.wrapped_key),
            context=package_identity(package_id),
        )
        rows = session.exec(
            select(PackageFile)
            .where(PackageFile.package_id == package_id)
            .order_by(col(PackageFile.position))
        ).all()
        for row, name in zip(rows, names, strict=True):
            identity = file_identity(package_id, row.id)
            meta = json.loads(crypto.open_bytes(key, row.sealed_meta, context=identity))
            meta["name"] = name
            row.sealed_meta = crypto.seal_bytes(key, json.dumps(meta).encode(), context=identity)
            session.add(row)
        reseal_package_digest(vault, session, package_id)
        session.commit()


def test_download_of_legacy_duplicate_and_device_names_keeps_every_file(
    cli: CliRunner, logged_in: LoggedIn, live_server: str, world: World, tmp_path: Path
) -> None:
    logged_in("uz.officer")
    sources = []
    for i in range(4):
        path = tmp_path / f"f{i}.txt"
        path.write_bytes(f"content {i}".encode())
        sources.append(path)
    uploaded = cli("package", "upload", *sources, "--title", "t", "--json", user="uz.officer")
    assert uploaded.code == 0, uploaded.stderr
    package_id = json.loads(uploaded.stdout)["id"]
    nfd = unicodedata.normalize("NFD", "café.txt")
    rename_stored_files(world, package_id, ["dup.txt", "DUP.txt", "CON", nfd])
    dest = tmp_path / "out"
    result = cli("package", "download", package_id, "-o", dest, user="uz.officer")
    assert result.code == 0, result.stderr
    assert_inert(result.stdout)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["dup.txt", "DUP (2).txt", "_CON", unicodedata.normalize("NFC", "café.txt")]
    )
    assert (dest / "dup.txt").read_bytes() == b"content 0"
    assert (dest / "DUP (2).txt").read_bytes() == b"content 1"
    assert (dest / "_CON").read_bytes() == b"content 2"


# --- a hostile server ---------------------------------------------------------------------------

NASTY = "\x1b[8mhidden\x1b[0m \u202egnp.exe [bold]loud[/bold] :smile: \x9b31m\r\x07\ud800"
PID = "a" * 32
BAD_PID = "b" * 32
CONTENT = {"f1": b"one", "f2": b"two", "f3": b"three", "f4": b"four"}
HOSTILE_NAMES = {
    "f1": "../../escape\x1b[2J.txt",
    "f2": "dup.txt",
    "f3": "DUP.txt",
    "f4": "nul\u202e.txt",
}


def _release(**extra: Any) -> dict[str, Any]:
    return {
        "id": NASTY,
        "package_id": PID,
        "country": NASTY,
        "agency": NASTY,
        "status": NASTY,
        "kind": NASTY,
        "in_force": True,
        "not_before": NASTY,
        "expires_at": NASTY,
        "created_at": NASTY,
        "requested_by": NASTY,
        "decided_by": NASTY,
        **extra,
    }


def hostile_reply(method: str, path: str) -> tuple[int, Any]:
    """What the hostile server answers: nasty text in every field the CLI prints."""
    summary = {
        "id": PID,
        "title": NASTY,
        "classification": NASTY,
        "handling": "H3",
        "agency": NASTY,
        "country": NASTY,
        "created_at": NASTY,
        "size": NASTY,
        "file_count": NASTY,
    }
    files = [
        {"id": fid, "name": HOSTILE_NAMES[fid], "size": len(data), "sha256": sha}
        for fid, data in CONTENT.items()
        if (sha := hashlib.sha256(data).hexdigest())
    ]
    detail = {
        **summary,
        "size": sum(len(d) for d in CONTENT.values()),
        "description": NASTY + "\n" + NASTY,
        "handling_note": NASTY,
        "fields": {NASTY: NASTY},
        "digest": NASTY,
        "creator": NASTY,
        "files": files,
        "releases": [_release()],
    }
    routes: dict[tuple[str, str], Any] = {
        ("POST", "/auth/login"): {"access_token": "t", "expires_in": NASTY, "receipt": NASTY},
        ("GET", "/packages"): {"items": [summary], "limit": 50, "offset": 0, "receipt": NASTY},
        ("GET", f"/packages/{PID}"): detail,
        ("GET", f"/packages/{PID}/audit"): {**summary, "file_ids": [], "releases": [_release()]},
        ("GET", "/authz/explain"): {
            "allowed": False,
            "user": NASTY,
            "package": NASTY,
            "action": NASTY,
            "policy_hash": NASTY,
            "relation": NASTY,
            "facts": {NASTY: NASTY},
            "rules": [[NASTY, NASTY]],
            "grants": [NASTY],
            "notes": [NASTY],
        },
        ("POST", f"/packages/{PID}/acknowledge"): {"receipt": NASTY},
        ("POST", f"/packages/{PID}/releases"): {"release": _release(), "receipt": NASTY},
        ("POST", f"/packages/{PID}/release-requests"): {"release": _release(), "receipt": NASTY},
    }
    if (method, path) in routes:
        return 200, routes[(method, path)]
    return 404, {"error": {"code": "not_found", "message": NASTY, "receipt": None}}


class _Hostile(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        prefix = f"/packages/{PID}/files/"
        if self.command == "GET" and path.startswith(prefix) and path[len(prefix) :] in CONTENT:
            body = CONTENT[path[len(prefix) :]]
            status, kind = 200, "application/octet-stream"
        else:
            status, reply = hostile_reply(self.command, path)
            body, kind = json.dumps(reply).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads replies
        pass


@pytest.fixture
def hostile_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


HOSTILE_COMMANDS = {
    "list": ("package", "list"),
    "show": ("package", "show", PID),
    "audit": ("package", "audit", PID),
    "acknowledge": ("package", "acknowledge", PID),
    "release": ("package", "release", PID, "--country", "KZ"),
    "request-release": ("package", "request-release", PID, "--country", "KZ"),
    "explain": ("authz", "explain", "--user", "kz.officer", "--package", PID, "--action", "read"),
    "error-message": ("package", "show", BAD_PID),
}


def login_to(cli: CliRunner, server: str) -> CliResult:
    """``blovault login`` against ``server`` (the hostile one takes any password)."""
    return cli(
        "login", "--server", server, "--username", "kz.officer", "--password-stdin", stdin="x\n"
    )


@pytest.mark.parametrize("command", HOSTILE_COMMANDS.values(), ids=HOSTILE_COMMANDS.keys())
def test_a_hostile_server_cannot_reach_the_terminal(
    command: tuple[str, ...],
    cli: CliRunner,
    hostile_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wide_console(monkeypatch)  # one line per table row, so the text is whole
    login = login_to(cli, hostile_server)
    assert_inert(login.stdout + login.stderr)
    result = cli(*command)
    assert_inert(result.stdout)
    assert_inert(result.stderr)
    assert "\\x1b[8mhidden" in result.stdout + result.stderr
    assert "[bold]loud[/bold] :smile:" in result.stdout + result.stderr


def test_a_hostile_server_cannot_name_files_outside_the_folder(
    cli: CliRunner, hostile_server: str, tmp_path: Path
) -> None:
    login = login_to(cli, hostile_server)
    assert login.code == 0, login.stderr
    root = tmp_path / "downloads"
    dest = root / "inbox" / "deep"
    result = cli("package", "download", PID, "-o", dest)
    assert result.code == 0, result.stderr
    assert_inert(result.stdout + result.stderr)
    written = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert all(p.parent == Path("inbox", "deep") for p in written), written
    names = {p.name: (dest / p.name).read_bytes() for p in written}
    assert names["dup.txt"] == b"two"
    assert names["DUP (2).txt"] == b"three"
    assert sorted(names.values()) == sorted(CONTENT.values())
    for name in names:
        assert check_filename(name) == name


# --- names an admin gives -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Afghan\x1b[8mistan", "Afghanistan\u202e", "Afghan\nistan"])
def test_country_and_agency_names_refuse_what_a_terminal_acts_on(name: str, cli: CliRunner) -> None:
    for command in (
        ("admin", "add-country", "AF", "--name", name),
        ("admin", "add-agency", "KZ-CUSTOMS", "--country", "KZ", "--name", name),
    ):
        result = cli(*command)
        assert result.code == 2, (result.stdout, result.stderr)
        assert "name: " in result.stderr
        bad = next(c for c in name if not c.isalpha())
        assert f"U+{ord(bad):04X}" in result.stderr
        assert_inert(result.stderr)
