"""The CLI against broken or hostile servers and bad input files, and what it leaves on disk.

A scripted server on 127.0.0.1 answers each route as a test says: markup and escape sequences
in grouping keys, endless downloads, non-JSON or undecodable bodies, replies missing fields.
Every failure must be one neutralised ``error:`` line and an exit code, never a traceback;
nothing partial may stay on disk (not even after SIGTERM or SIGHUP), and sensitive outputs are
written 0600 whatever the umask.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from blo_vault.cli import client as client_module
from blo_vault.cli import session as stored
from tests.cli.test_cli_render import assert_inert, wide_console
from tests.cli.test_cli_roundtrip import assert_one_line_error, ok_json
from tests.cli.test_signed_packages import _signed_package
from tests.conftest import CliResult, CliRunner, World

# (status, headers, body): a body that is an iterable of bytes is sent chunked, as it comes.
Answer = tuple[int, dict[str, str], bytes | Iterable[bytes]]
Route = Callable[[BaseHTTPRequestHandler], Answer]
EVIL = "\x1b]0;pwned\x07\x1b[2J\x9b31m[blink]month[/blink]\u202e"
PID = "ab" * 16


def reply(body: Any, status: int = 200) -> Route:
    """A route answering ``body`` as JSON."""
    data = json.dumps(body).encode()
    return lambda _request: (status, {"Content-Type": "application/json"}, data)


def raw(body: bytes, **headers: str) -> Route:
    """A route answering ``body`` as it is, with ``headers``."""
    return lambda _request: (200, headers, body)


@dataclass
class Scripted:
    """The scripted server: its URL, its routes by (method, path), and what it was asked."""

    url: str = ""
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    # Set at teardown: a stream that stalls waits on it, so no thread outlives the test.
    done: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        script: Scripted = self.server.script
        script.seen.append(f"{self.command} {path}")
        route = script.routes.get((self.command, path))
        if route is None:
            route = reply({"error": {"code": "not_found", "message": "no such route"}}, 404)
        status, headers, body = route(self)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        try:
            if isinstance(body, bytes):
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in body:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client hung up: what several tests expect it to do

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the tests read replies
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-reply (what several tests make it do) is no error: the
        default printed a traceback to stderr, which the tests read as the CLI's."""


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    script = Scripted()
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.script = script  # type: ignore[attr-defined]
    script.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield script
    finally:
        script.done.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


Run = Callable[..., CliResult]


@pytest.fixture
def run(
    scripted: Scripted,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    """``blovault`` in-process, logged in to the scripted server (no vault needed)."""
    from blo_vault.cli.main import run as cli_run

    monkeypatch.setenv("VAULT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("VAULT_DATA_DIR", str(tmp_path / "no-vault"))
    stored.save(
        stored.StoredSession(
            server=scripted.url,
            username="kz.officer",
            token="access",
            refresh_token="refresh",
            access_expires_at=time.time() + 3600,
        )
    )

    def invoke(*args: str | Path, stdin: str = "") -> CliResult:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = cli_run([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code=code, stdout=captured.out, stderr=captured.err)

    return invoke


def detail(*files: dict[str, Any], signature: Any = None) -> dict[str, Any]:
    """A package's details as the server gives them, with ``files``."""
    return {
        "id": PID,
        "title": "t",
        "agency": "UZ-CUSTOMS",
        "country": "UZ",
        "classification": "UNCLASSIFIED",
        "handling": "H0",
        "handling_note": "",
        "description": "",
        "fields": {},
        "signature": signature,
        "files": list(files),
        "releases": [],
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a plain open() makes files 0644."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


# --- 1. stats: the grouping keys a server sends -----------------------------------------------


def stats_reply(by: list[str], row: dict[str, Any]) -> dict[str, Any]:
    totals = {"records": 1, "quantity_kg": 1.5, "quantity_l": 0.0, "quantity_units": 0.0}
    return {"by": by, "rows": [{**row, **totals}], "receipt": 7}


@pytest.mark.parametrize(
    "by",
    [[EVIL], ["month", EVIL], ["commodity"], ["commodity", "month"], "month,commodity"],
    ids=["escape-and-markup", "extra-key", "missing-key", "reordered", "not-a-list"],
)
def test_stats_refuses_grouping_keys_it_did_not_ask_for(
    by: Any, run: Run, scripted: Scripted
) -> None:
    scripted.routes["GET", "/stats/seizures"] = reply(
        stats_reply(by, {EVIL: "2024-01", "month": "2024-01", "commodity": "heroin"})
    )
    result = run("stats", "seizures", "--by", "month,commodity")
    assert_one_line_error(result, 7)
    assert "the server's statistics" in result.stderr
    assert result.stdout == ""
    assert_inert(result.stderr)


def test_stats_table_shows_server_values_as_text(
    run: Run, scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    wide_console(monkeypatch)  # one line per row, so the text is whole
    scripted.routes["GET", "/stats/seizures"] = reply(
        stats_reply(["month", "commodity"], {"month": EVIL, "commodity": "[bold]x[/bold]"})
    )
    result = run("stats", "seizures", "--by", "commodity,month")
    assert result.code == 0, result.stderr
    assert_inert(result.stdout)
    assert "[bold]x[/bold]" in result.stdout
    assert "month" in result.stdout
    assert "quantity_kg" in result.stdout


def test_stats_row_without_a_total_is_a_bad_reply(run: Run, scripted: Scripted) -> None:
    scripted.routes["GET", "/stats/seizures"] = reply(
        {"by": ["month"], "rows": [{"month": "2024-01"}], "receipt": 1}
    )
    assert_one_line_error(run("stats", "seizures", "--by", "month"), 7)


# --- 2. downloads never take more than the size announced --------------------------------------


def test_download_stops_at_the_first_byte_past_the_announced_size(
    run: Run, scripted: Scripted, tmp_path: Path
) -> None:
    content = b"0123456789"
    item = {"id": "f1", "name": "a.txt", "size": len(content)}
    scripted.routes["GET", f"/packages/{PID}"] = reply(
        detail({**item, "sha256": hashlib.sha256(content).hexdigest()})
    )
    stalled = threading.Event()

    def endless(_request: BaseHTTPRequestHandler) -> Answer:
        def body() -> Iterator[bytes]:
            yield content + b"!"  # one byte too many...
            stalled.set()
            # ...then as much as the client will take. A client that waits for the end of the
            # stream before comparing sizes is still here when the test ends (10 s at most).
            scripted.done.wait(10)
            yield b"A" * 65536

        return 200, {"Content-Type": "application/octet-stream"}, body()

    scripted.routes["GET", f"/packages/{PID}/files/f1"] = endless
    dest = tmp_path / "inbox"
    result = run("package", "download", PID, "-o", dest)
    assert_one_line_error(result, 6)
    assert "more than the file's announced 10 bytes" in result.stderr
    # The client gave up while the server was still stalled, i.e. as soon as it had too much.
    assert stalled.is_set()
    assert not scripted.done.is_set()
    assert leftovers(dest) == []


@pytest.mark.parametrize("size", ["5", -1, True, None, 1.5], ids=repr)
def test_download_refuses_a_size_that_is_not_a_count(
    size: Any, run: Run, scripted: Scripted, tmp_path: Path
) -> None:
    scripted.routes["GET", f"/packages/{PID}"] = reply(
        detail({"id": "f1", "name": "a.txt", "size": size, "sha256": "0" * 64})
    )
    dest = tmp_path / "inbox"
    result = run("package", "download", PID, "-o", dest)
    assert_one_line_error(result, 7)
    assert "'size'" in result.stderr
    assert f"GET /packages/{PID}/files/f1" not in scripted.seen
    assert leftovers(dest) == []


# --- 3. sensitive outputs: 0600, written all or nothing ----------------------------------------


@pytest.mark.usefixtures("umask_022")
def test_remote_scoped_export_is_private_and_all_or_nothing(
    run: Run, scripted: Scripted, tmp_path: Path
) -> None:
    document = {"origin": "o", "vkey": "v", "entries": [], "openings": [{"seq": 0}]}
    data = json.dumps(document).encode()
    scripted.routes["GET", "/ledger/export"] = lambda _r: (
        200,
        {"Content-Type": "application/json"},
        iter([data[:10], data[10:]]),
    )
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "scoped.json"
    target.write_text("older export")
    assert mode_of(target) == 0o644
    result = run("ledger", "export", "--remote", "--scoped", "-o", target)
    assert result.code == 0, result.stderr
    assert json.loads(target.read_text()) == document
    assert mode_of(target) == 0o600
    assert leftovers(folder) == ["scoped.json"]

    # A reply that is no export replaces nothing and leaves no temp file.
    scripted.routes["GET", "/ledger/export"] = raw(b'{"entries": [')
    assert_one_line_error(run("ledger", "export", "--remote", "--scoped", "-o", target), 7)
    assert json.loads(target.read_text()) == document
    assert leftovers(folder) == ["scoped.json"]


@pytest.mark.usefixtures("umask_022")
def test_local_scoped_export_is_private(cli: CliRunner, world: World, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "scoped.json"
    result = cli("ledger", "export", "--scoped", "-o", target)
    assert result.code == 0, result.stderr
    assert mode_of(target) == 0o600
    assert json.loads(target.read_text())["vkey"] == world.vault.ledger_vkey
    assert leftovers(folder) == ["scoped.json"]


# --- 4. replies that are not a vault's ---------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
TOTALS = ("records", "quantity_kg", "quantity_l", "quantity_units")
MALFORMED: dict[str, tuple[dict[tuple[str, str], Route], tuple[str, ...]]] = {
    "list: HTML, not JSON": (
        {("GET", "/packages"): raw(b"<html>proxy login</html>", **{"Content-Type": "text/html"})},
        ("package", "list"),
    ),
    "list: nested past the parser": ({("GET", "/packages"): raw(DEEP)}, ("package", "list")),
    "list: bad gzip": (
        {("GET", "/packages"): raw(b"not gzip", **{"Content-Encoding": "gzip"})},
        ("package", "list"),
    ),
    "list: item without fields": (
        {("GET", "/packages"): reply({"items": [{"id": "x"}]})},
        ("package", "list"),
    ),
    "list: items not a list": (
        {("GET", "/packages"): reply({"items": "x"})},
        ("package", "list"),
    ),
    "show: an array": (
        {("GET", f"/packages/{PID}"): reply(["not", "an", "object"])},
        ("package", "show", PID),
    ),
    "show: file without sha256": (
        {("GET", f"/packages/{PID}"): reply(detail({"id": "f", "name": "n", "size": 1}))},
        ("package", "show", PID),
    ),
    "show: signature a string": (
        {("GET", f"/packages/{PID}"): reply(detail(signature="signed, trust me"))},
        ("package", "show", PID),
    ),
    "download: files missing": (
        {("GET", f"/packages/{PID}"): reply({"id": PID, "handling": "H0", "signature": None})},
        ("package", "download", PID),
    ),
    # A second review: each of these ended as "unexpected ..." (exit 1).
    "approve: release a list": (
        {("POST", "/releases/r1/approve"): reply({"release": ["r1"], "receipt": 1})},
        ("package", "approve", "r1"),
    ),
    "explain: facts a list": (
        {("GET", "/authz/explain"): reply(
            {"allowed": True, "user": "u", "action": "read", "package": PID,
             "policy_hash": "h", "facts": ["x"], "relation": "", "rules": [], "grants": [],
             "notes": []}
        )},
        ("authz", "explain", "--user", "u", "--package", PID, "--action", "read"),
    ),
    "before-after: relative not a number": (
        {("GET", "/stats/before-after"): reply(
            {"receipt": 1, "figures": [
                {"crossing_point": "OYBEK", "country": "UZ", "blo_opened": "2014-05-01",
                 "window_days": 1, "before": dict.fromkeys(TOTALS, 1),
                 "after": dict.fromkeys(TOTALS, 2),
                 "change": {t: {"absolute": 1, "relative": "%"} for t in TOTALS}}
            ]}
        )},
        ("stats", "before-after"),
    ),
    "keys audit: entry not base64": (
        {("GET", "/keys/history"): reply({"username": "kz.officer", "entries": [{"entry": "%%"}]})},
        ("keys", "audit"),
    ),
}  # fmt: skip


@pytest.mark.parametrize(("routes", "command"), MALFORMED.values(), ids=MALFORMED.keys())
def test_a_reply_that_is_not_a_vaults_is_one_error_line(
    routes: dict[tuple[str, str], Route],
    command: tuple[str, ...],
    run: Run,
    scripted: Scripted,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    scripted.routes.update(routes)
    result = run(*command)
    assert_one_line_error(result, 7)
    assert "the server's" in result.stderr


def _trickle(scripted: Scripted) -> Iterable[bytes]:
    """A JSON body a byte at a time, each well within the per-read timeout, without end."""
    yield b"{"
    while not scripted.done.wait(0.05):
        yield b" "


@pytest.mark.parametrize("kind", ["large", "compressed", "trickled"])
def test_a_reply_too_large_compressed_or_endless_is_refused(
    kind: str, run: Run, scripted: Scripted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies read whole are bounded in size (64 MiB) and time (600 s in all, however each
    byte keeps the per-read timeout), and never inflated: a 200 MiB list took the CLI's heap
    to 670 MB, 299 KiB of gzip to 686 MB, and a trickle held it for as long as it went on."""
    monkeypatch.chdir(tmp_path)
    if kind == "large":
        route = raw(b" " * (64 * 1024 * 1024 + 1), **{"Content-Type": "application/json"})
        expected = "is over 64 MiB"
    elif kind == "compressed":
        body = gzip.compress(json.dumps({"items": [], "total": 0}).encode())
        route = raw(body, **{"Content-Type": "application/json", "Content-Encoding": "gzip"})
        expected = "is compressed ('gzip'), which was not asked for"
    else:
        monkeypatch.setattr(client_module, "_REPLY_SECONDS", 1.0)
        route = lambda _request: (200, {"Content-Type": "application/json"}, _trickle(scripted))  # noqa: E731
        expected = "took over 1 s"
    scripted.routes["GET", "/packages"] = route
    started = time.monotonic()
    result = run("package", "list")
    assert_one_line_error(result, 7)
    assert f"the server's reply to GET /packages {expected}" in result.stderr
    assert time.monotonic() - started < 30


def test_login_reply_without_a_token_is_one_error_line(
    run: Run, scripted: Scripted, tmp_path: Path
) -> None:
    scripted.routes["POST", "/auth/login"] = reply({"ok": True})
    login = ("login", "--server", scripted.url, "--username", "u", "--password-stdin")
    result = run(*login, stdin="pw\n")
    assert_one_line_error(result, 7)
    assert "'access_token'" in result.stderr


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:99999\x1b[2J"])
def test_a_malformed_server_url_is_invalid_input(url: str, run: Run) -> None:
    result = run("login", "--server", url, "--username", "u", "--password-stdin", stdin="pw\n")
    assert_one_line_error(result, 2)
    assert "not a valid server URL" in result.stderr
    assert_inert(result.stderr)


def test_an_unexpected_error_is_one_neutralised_line(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blo_vault.cli.commands import stats

    def broken() -> None:
        raise RuntimeError("server said \x1b]0;pwned\x07\u202e")

    monkeypatch.setattr(stats, "api_client", broken)
    result = run("stats", "seizures")
    assert_one_line_error(result, 1)
    assert "unexpected RuntimeError: server said \\x1b]0;pwned\\x07\\u202e" in result.stderr
    assert_inert(result.stderr)


# --- 5. bad input files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("ledger", "consistency", "--old", "{bad}"),
        ("witness", "prove", "3", "--checkpoint", "{bad}", "--out", "p", "--entry-out", "e"),
    ],
    ids=["ledger-consistency", "witness-prove"],
)
def test_a_checkpoint_file_that_is_not_utf8(
    command: tuple[str, ...], run: Run, tmp_path: Path
) -> None:
    bad = tmp_path / "bad\x1b[2J.cp"
    bad.write_bytes(b"\xff\xfe")
    result = run(*(str(bad) if part == "{bad}" else part for part in command))
    assert_one_line_error(result, 2)
    assert "not UTF-8" in result.stderr
    assert "bad\\x1b[2J.cp" in result.stderr  # the file, named and neutralised
    assert_inert(result.stderr)


@pytest.mark.parametrize(
    "command",
    [
        ("ledger", "verify", "--export", "{deep}", "--vkey", "x"),
        ("package", "verify", ".", "--manifest", "{deep}", "--vkey", "x"),
    ],
    ids=["ledger-verify-export", "package-verify"],
)
def test_json_nested_past_the_parser(command: tuple[str, ...], run: Run, tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_bytes(DEEP)
    result = run(*(str(deep) if part == "{deep}" else part for part in command))
    assert_one_line_error(result, 2)
    assert "nested too deeply" in result.stderr


def test_an_os_error_names_the_file(run: Run, tmp_path: Path) -> None:
    target = tmp_path / "no such dir" / "x.json"
    result = run("ledger", "export", "--remote", "-o", target)
    assert_one_line_error(result, 1)
    assert result.stderr.strip() == f"error: {target}: No such file or directory"


# --- 6. a malformed --vkey is the caller's mistake, not tampering --------------------------------


def test_a_malformed_vkey_is_invalid_input_not_a_broken_ledger(run: Run, tmp_path: Path) -> None:
    export = tmp_path / "e.json"
    export.write_text(json.dumps({"origin": "o", "checkpoint": "c", "entries": []}))
    result = run("ledger", "verify", "--export", export, "--vkey", "garbage")
    assert_one_line_error(result, 2)
    assert "--vkey is not a verifier key" in result.stderr
    assert "NOT intact" not in result.stderr


# --- 7. SIGTERM and SIGHUP leave no partial plaintext --------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_during_a_download_leaves_nothing(
    signum: signal.Signals, run: Run, scripted: Scripted, tmp_path: Path
) -> None:
    scripted.routes["GET", f"/packages/{PID}"] = reply(
        detail({"id": "f1", "name": "informants.txt", "size": 10 << 20, "sha256": "0" * 64})
    )

    def stalls(_request: BaseHTTPRequestHandler) -> Answer:
        def body() -> Iterator[bytes]:
            yield b"SECRET PLAINTEXT\n" * 4096
            scripted.done.wait(30)  # the link stalls

        return 200, {"Content-Type": "application/octet-stream"}, body()

    scripted.routes["GET", f"/packages/{PID}/files/f1"] = stalls
    dest = tmp_path / "inbox"
    # The real entry point (blo_vault.cli.main:main), in a process of its own.
    command = [sys.executable, "-c", "from blo_vault.cli.main import main; main()"]
    child = subprocess.Popen(
        [*command, "package", "download", PID, "-o", str(dest)],
        env={**os.environ, "VAULT_CONFIG_DIR": os.environ["VAULT_CONFIG_DIR"]},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in dest.glob(".blovault-*.part")):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 128 + signum, stderr
    assert stderr.strip().splitlines()[-1] == f"terminated ({signum.name})"
    assert leftovers(dest) == []


@pytest.mark.parametrize(
    ("argv", "replaced"),
    [(["package", "--help"], True), (["serve", "--help"], False)],
    ids=["command", "server"],
)
def test_main_restores_the_signal_handlers_it_replaced(
    argv: list[str], replaced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers keep theirs: uvicorn shuts down on SIGTERM, then re-raises it (exit -15)."""
    from blo_vault.cli import main as cli_main

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    during: dict[signal.Signals, Any] = {}

    def spy(argv: list[str]) -> int:
        during.update({s: signal.getsignal(s) for s in before})
        return 0

    monkeypatch.setattr(cli_main, "run", spy)
    monkeypatch.setattr(sys, "argv", ["blovault", *argv])
    with pytest.raises(SystemExit) as exited:
        cli_main.main()
    assert exited.value.code == 0
    assert during == ({s: cli_main._terminate for s in before} if replaced else before)
    assert {s: signal.getsignal(s) for s in before} == before


# --- 8. what a download says about the signature ------------------------------------------------


def test_unsigned_download_json_says_unsigned(run: Run, scripted: Scripted, tmp_path: Path) -> None:
    content = b"report"
    item = {"id": "f1", "name": "r.txt", "size": len(content)}
    scripted.routes["GET", f"/packages/{PID}"] = reply(
        detail({**item, "sha256": hashlib.sha256(content).hexdigest()})
    )
    scripted.routes["GET", f"/packages/{PID}/files/f1"] = raw(content)
    done = ok_json(run("package", "download", PID, "-o", tmp_path / "in", "--json"))
    assert done["signature"] == {
        "status": "unsigned",
        "signer": None,
        "key_id": None,
        "key_revoked": None,
    }


@pytest.mark.usefixtures("umask_022")
def test_signed_download_reports_its_signature_and_a_later_revocation(
    cli: CliRunner, logged_in: Callable[[str], None], world: World, tmp_path: Path
) -> None:
    package_id, _ = _signed_package(cli, logged_in, world, tmp_path)
    vkey = world.vault.ledger_vkey
    logged_in("kz.officer")
    key_id = ok_json(cli("package", "show", package_id, "--json", user="kz.officer"))["signature"][
        "key_id"
    ]
    bundle = tmp_path / "bundle.json"
    download = ("package", "download", package_id, "--vkey", vkey)
    first = ok_json(
        cli(*download, "-o", tmp_path / "a", "--manifest", bundle, "--json", user="kz.officer")
    )
    # The bundle holds the package's seizure records: its owner's only.
    assert mode_of(bundle) == 0o600
    signature = first["signature"]
    assert signature["status"] == "verified"
    assert (signature["signer"], signature["key_revoked"]) == ("uz.officer", False)
    assert signature["key_id"] == key_id

    assert cli("keys", "revoke", signature["key_id"], user="uz.officer").code == 0
    later = ok_json(cli(*download, "-o", tmp_path / "b", "--json", user="kz.officer"))
    assert later["signature"] == {**signature, "key_revoked": True}
    shown = cli(*download, "-o", tmp_path / "c", user="kz.officer")
    assert shown.code == 0, shown.stderr
    assert "[key since revoked] (checked here against the ledger" in shown.stderr


@pytest.mark.parametrize(
    ("server", "warned"),
    [
        ("http://127.0.0.1:8000", False),
        ("http://[::1]:8000", False),
        ("http://localhost:8000", False),
        ("https://vault.example:8443", False),
        ("http://vault.example:8000", True),
        ("http://10.0.0.5:8000", True),
        ("http://[2001:db8::1]", True),
    ],
)
def test_plain_http_to_another_machine_is_warned_of(server: str, warned: bool) -> None:
    """Only the check: a test may reach nothing but loopback."""
    from blo_vault.cli.commands.auth import cleartext_to_another_host

    assert cleartext_to_another_host(server) is warned


def test_stats_with_no_grouping_asks_for_none(run: Run, scripted: Scripted) -> None:
    """``--by ""``: totals over everything, which the server gives when asked for no keys
    (leaving ``by`` out would get its default grouping instead)."""
    asked: list[str] = []

    def route(handler: Any) -> Any:
        asked.append(handler.path)
        return reply(stats_reply([], {}))(handler)

    scripted.routes["GET", "/stats/seizures"] = route
    result = run("stats", "seizures", "--by", "")
    assert result.code == 0, result.stderr
    assert asked == ["/stats/seizures?by="]


@pytest.mark.parametrize(
    "signature", [{"key_id": "k"}, {"signer": 1, "agency": "A", "key_id": "k"}]
)
def test_a_signature_without_its_fields_is_a_bad_reply(
    signature: dict[str, Any], run: Run, scripted: Scripted
) -> None:
    scripted.routes["GET", f"/packages/{PID}"] = reply(detail(signature=signature))
    assert_one_line_error(run("package", "show", PID), 7)


# --- 5. a second review: what a hostile server's replies, and the folder, may hold -----------


def _two_files(scripted: Scripted) -> None:
    """Package PID with a.txt and b.txt, served honestly."""
    items = []
    for fid, name, content in (("f1", "a.txt", b"new a\n"), ("f2", "b.txt", b"new b\n")):
        items.append(
            {
                "id": fid,
                "name": name,
                "size": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
            }
        )
        scripted.routes["GET", f"/packages/{PID}/files/{fid}"] = raw(content)
    scripted.routes["GET", f"/packages/{PID}"] = reply(detail(*items))


def test_a_dangling_symlink_in_the_way_is_not_replaced_without_force(
    run: Run, scripted: Scripted, tmp_path: Path
) -> None:
    _two_files(scripted)
    dest = tmp_path / "inbox"
    dest.mkdir()
    (dest / "a.txt").symlink_to(tmp_path / "nowhere")
    result = run("package", "download", PID, "-o", dest)
    assert_one_line_error(result, 8)
    assert "exists (use --force to replace it)" in result.stderr
    assert (dest / "a.txt").is_symlink()


def test_force_replaces_nothing_when_a_target_is_not_a_regular_file(
    run: Run, scripted: Scripted, tmp_path: Path
) -> None:
    """A folder named like the second file failed its rename after the first file had
    replaced the user's: all or nothing, with the user's file already gone."""
    _two_files(scripted)
    dest = tmp_path / "inbox"
    dest.mkdir()
    (dest / "a.txt").write_bytes(b"the user's own a\n")
    (dest / "b.txt").mkdir()
    result = run("package", "download", PID, "-o", dest, "--force")
    assert_one_line_error(result, 8)
    assert "is not a regular file" in result.stderr
    assert (dest / "a.txt").read_bytes() == b"the user's own a\n"
    assert leftovers(dest) == ["a.txt", "b.txt"]
    assert not any(seen.startswith(f"GET /packages/{PID}/files") for seen in scripted.seen)


@pytest.mark.parametrize(
    ("command", "route", "member"),
    [
        (
            ("package", "release", PID, "--country", "KZ"),
            ("POST", f"/packages/{PID}/releases"),
            "release",
        ),
        (("keys", "revoke", "ab" * 16), ("POST", f"/keys/{'ab' * 16}/revoke"), "id"),
    ],
)
def test_a_reply_without_a_member_its_route_always_sends_is_a_bad_reply(
    command: tuple[str, ...], route: tuple[str, str], member: str, run: Run, scripted: Scripted
) -> None:
    scripted.routes[route] = reply({"receipt": 1})
    result = run(*command)
    assert_one_line_error(result, 7)
    assert f"has no {member!r}" in result.stderr


@pytest.mark.parametrize("token", ["tokén", "tok\r\nX-Injected: 1", "two words"])
def test_a_token_no_header_can_carry_is_not_saved(
    token: str, run: Run, scripted: Scripted, tmp_path: Path
) -> None:
    """Saved, it failed every later command ("unexpected UnicodeEncodeError", or a misleading
    "cannot reach the vault server")."""
    before = stored.load()
    scripted.routes["POST", "/auth/login"] = reply(
        {"access_token": token, "refresh_token": "r", "expires_in": 900}
    )
    login = ("login", "--server", scripted.url, "--username", "u", "--password-stdin")
    result = run(*login, stdin="pw\n")
    assert_one_line_error(result, 7)
    assert "token no header can carry" in result.stderr
    assert stored.load() == before


def test_a_bundle_without_a_member_is_no_bundle(run: Run, tmp_path: Path) -> None:
    bundle = tmp_path / "saved.json"
    bundle.write_text(
        json.dumps({"format": "blo-vault signed package v1", "signature": {}, "proof": {}})
    )
    result = run("package", "verify", tmp_path, "--manifest", bundle, "--vkey", "k+1+AAAA")
    assert_one_line_error(result, 2)
    assert "not a blo-vault signed package bundle: it has no" in result.stderr


def test_an_export_path_with_brackets_is_printed_as_it_is(
    run: Run, scripted: Scripted, tmp_path: Path
) -> None:
    """Printed as markup, "[/b]" in the path failed the command after the file was written."""
    scripted.routes["GET", "/ledger/export"] = raw(
        json.dumps({"origin": "o", "checkpoint": "c", "entries": [], "vkey": "v"}).encode()
    )
    (tmp_path / "a[").mkdir()
    target = tmp_path / "a[" / "b]x[red].json"  # the path holds "[/b]" and "[red]"
    result = run("ledger", "export", "--remote", "-o", target)
    assert result.code == 0, result.stderr
    assert str(target) in result.stdout.replace("\n", "")
    assert target.exists()
