"""``blovault witness init / serve / status``: a real witness process on 127.0.0.1.

Covers the HTTP statuses of c2sp.org/tlog-witness exactly as a log sees them, 32 concurrent
add-checkpoint requests with mixed old sizes (and a fork mixed in) leaving one consistent
state, and a witness killed mid-way and restarted keeping its state.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from tests.conftest import free_port
from tests.servers import BLOVAULT, Served, wait_healthy
from tests.witness_log import LogOperator, Tree, add_body, tree_of
from vault.ledger.note import parse_note
from vault.witness.cosignature import CosignatureVerifier
from vault.witness.policy import parse_policy, verify_witnessed
from vault.witness.publisher import Publisher, http_post


@dataclass
class Cli:
    code: int
    stdout: str
    stderr: str


class Blovault(Protocol):
    """The ``blovault`` fixture: run the CLI with ``args`` (each passed through ``str``)."""

    def __call__(self, *args: str | Path) -> Cli: ...


class StartWitness(Protocol):
    """The ``start_witness`` fixture: serve ``directory`` (on ``port``, else a free one)."""

    def __call__(self, directory: Path, port: int | None = None) -> Served: ...


@pytest.fixture
def blovault(capsys: pytest.CaptureFixture[str]) -> Blovault:
    """Run ``blovault`` in-process and capture its output."""
    from blo_vault.cli.main import run

    def invoke(*args: str | Path) -> Cli:
        capsys.readouterr()
        code = run([str(a) for a in args])
        out = capsys.readouterr()
        return Cli(code, out.out, out.err)

    return invoke


@pytest.fixture
def log() -> LogOperator:
    return LogOperator()


@pytest.fixture
def witness_dir(tmp_path: Path, blovault: Blovault, log: LogOperator) -> Path:
    directory = tmp_path / "kz-witness"
    result = blovault(
        "witness", "init", "--name", "witness.kz.example/blo", "--log-vkey", log.vkey,
        "--dir", directory,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    (directory / "vkey").write_text(result.stdout)
    return directory


def _spawn(directory: Path, log_file: Path, port: int | None = None) -> Served:
    port = port or free_port()
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            [str(BLOVAULT), "witness", "serve", "--dir", str(directory),
             "--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=log_file.parent,
        )  # fmt: skip
    return Served(f"http://127.0.0.1:{port}", process, log_file)


def _stop(served: Served, *, kill: bool = False) -> None:
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            served.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait()


@pytest.fixture
def start_witness(tmp_path: Path) -> Iterator[StartWitness]:
    """Start ``blovault witness serve`` processes; every one started is stopped afterwards."""
    started: list[Served] = []

    def start(directory: Path, port: int | None = None) -> Served:
        served = _spawn(directory, tmp_path / "witness.log", port)
        started.append(served)
        wait_healthy(served, "witness")
        return served

    yield start
    for served in started:
        _stop(served)


def post(url: str, body: bytes, client: httpx.Client | None = None) -> httpx.Response:
    c = client or httpx
    return c.post(url + "/add-checkpoint", content=body, timeout=60)


def verifier_of(directory: Path) -> CosignatureVerifier:
    return CosignatureVerifier.from_vkey((directory / "vkey").read_text().strip())


def cosigned_time(reply: httpx.Response, body: bytes, verifier: CosignatureVerifier) -> int:
    assert reply.status_code == 200, reply.text
    text = parse_note(body.decode().split("\n\n", 1)[1]).text
    (sig,) = parse_note(text + "\n" + reply.text).signatures
    return verifier.verify(text, sig)


def status(blovault: Blovault, directory: Path) -> dict[str, object]:
    result = blovault("witness", "status", "--dir", directory, "--json")
    assert result.code == 0, result.stderr
    (only,) = json.loads(result.stdout)["logs"]
    assert isinstance(only, dict)
    return only


# --------------------------------------------------------------------------- statuses over HTTP


def test_statuses_over_http(
    witness_dir: Path,
    start_witness: StartWitness,
    log: LogOperator,
    blovault: Blovault,
) -> None:
    url = start_witness(witness_dir).url
    verifier = verifier_of(witness_dir)
    tree = tree_of(10)
    body = log.body(0, tree)
    cosigned_time(post(url, body), body, verifier)

    conflict = post(url, log.body(0, tree))  # old 0, but the witness is at 10
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == "text/x.tlog.size"
    assert conflict.content == b"10\n"

    fork = tree_of(10, tag="fork")
    assert post(url, add_body(10, [], log.signed(fork))).status_code == 409
    assert post(url, add_body(10, [], log.signed(tree, 4))).status_code == 400
    assert post(url, add_body(10, [bytes(32)] * 3, log.signed(tree_of(16)))).status_code == 422
    assert post(url, LogOperator("other.example/log").body(0, tree)).status_code == 404
    assert post(url, LogOperator(log.origin).body(10, tree)).status_code == 403
    assert post(url, add_body(10, [bytes(32)] * 64, log.signed(tree_of(16)))).status_code == 400
    assert post(url, add_body(2**63, [], log.signed(tree))).status_code == 400
    assert post(url, b"old 10\n\ngarbage\n").status_code == 400
    assert post(url, b"x" * (65 * 1024)).status_code == 413
    assert httpx.get(url + "/add-checkpoint").status_code == 405
    assert status(blovault, witness_dir)["size"] == 10
    assert status(blovault, witness_dir)["root"] == base64.b64encode(tree.root()).decode()


# --------------------------------------------------------------------------- concurrency, restarts


def test_32_concurrent_requests_leave_one_consistent_state(
    witness_dir: Path,
    start_witness: StartWitness,
    log: LogOperator,
    blovault: Blovault,
) -> None:
    url = start_witness(witness_dir).url
    verifier = verifier_of(witness_dir)
    common = [f"c:{i}".encode() for i in range(8)]
    branches = {
        "a": Tree([*common, *(f"a:{i}".encode() for i in range(40))]),
        "b": Tree([*common, *(f"b:{i}".encode() for i in range(40))]),  # a split view
    }
    assert post(url, log.body(0, branches["a"], 8)).status_code == 200

    accepted: list[tuple[str, int, int, bytes]] = []  # branch, old, new, root
    lock = threading.Lock()
    errors: list[str] = []

    def client(i: int) -> None:
        try:
            attempt(i)
        except Exception as exc:  # a crashed client must fail the test, not vanish
            with lock:
                errors.append(repr(exc))

    def attempt(i: int) -> None:
        branch = "a" if i % 2 else "b"
        tree = branches[branch]
        new = 9 + i  # sizes 9..40
        # Mixed: half start from the size the witness holds (8), so they race each other.
        old = [8, 0, 8, 9 + (i * 7) % 32][i % 4]
        if old > new:
            # Old larger than new: refused with 400 whatever the witness holds.
            start.wait(timeout=60)
            reply = post(url, add_body(old, [], log.signed(tree, new)))
            if reply.status_code != 400:
                with lock:
                    errors.append(f"old > new gave {reply.status_code}")
            return
        with httpx.Client() as http:
            start.wait(timeout=60)  # all 32 first requests leave together
            for _ in range(40):  # bounded retries, as a log's publisher would do
                body = add_body(old, tree.proof(old, new) if old else [], log.signed(tree, new))
                reply = post(url, body, http)
                if reply.status_code == 200:
                    cosigned_time(reply, body, verifier)
                    with lock:
                        accepted.append((branch, old, new, tree.root(new)))
                    return
                if reply.status_code == 409 and reply.headers["content-type"] == "text/x.tlog.size":
                    old = int(reply.text)
                    if old > new:
                        return  # the witness is past this checkpoint already
                    continue
                if reply.status_code in (409, 422):
                    return  # the other branch won: refused, as it must be
                with lock:
                    errors.append(f"{reply.status_code} {reply.text}")
                return

    start = threading.Barrier(32)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert accepted

    # One branch only, and the accepted moves form a single chain from 8: no state was rolled
    # back and no size got two roots.
    (winner,) = {branch for branch, *_ in accepted}
    tree = branches[winner]
    assert all(root == tree.root(new) for _, _, new, root in accepted)
    moves = sorted((old, new) for _, old, new, _ in accepted if new > old)
    chain = 8
    for old, new in moves:
        assert old == chain, moves
        chain = new
    assert all(old == new <= chain for _, old, new, _ in accepted if old == new)
    final = status(blovault, witness_dir)
    assert final["size"] == chain
    assert final["root"] == base64.b64encode(tree.root(chain)).decode()


def test_killed_witness_keeps_its_state(
    witness_dir: Path,
    start_witness: StartWitness,
    log: LogOperator,
    blovault: Blovault,
) -> None:
    first = start_witness(witness_dir)
    tree = tree_of(30)
    assert post(first.url, log.body(0, tree, 12)).status_code == 200
    assert (
        post(first.url, add_body(12, tree.proof(12, 20), log.signed(tree, 20))).status_code == 200
    )
    _stop(first, kill=True)  # no clean shutdown: what was answered 200 must be on disk
    assert status(blovault, witness_dir)["size"] == 20

    second = start_witness(witness_dir)
    stale = post(second.url, log.body(12, tree, 30))
    assert (stale.status_code, stale.text) == (409, "20\n")
    fork = Tree([*(f"a:{i}".encode() for i in range(12)), *(b"x" for _ in range(8))])
    assert post(second.url, add_body(12, fork.proof(12), log.signed(fork))).status_code == 409
    assert post(second.url, add_body(20, [], log.signed(fork))).status_code == 409
    assert post(second.url, add_body(20, tree.proof(20), log.signed(tree))).status_code == 200
    assert status(blovault, witness_dir)["size"] == 30


# --------------------------------------------------------------------------- CLI errors


def test_cli_errors_use_the_exit_codes(
    tmp_path: Path, blovault: Blovault, witness_dir: Path, log: LogOperator
) -> None:
    missing = blovault("witness", "status", "--dir", tmp_path / "none")
    assert missing.code == 10, missing.stderr
    again = blovault(
        "witness", "init", "--name", "w.example/x", "--log-vkey", log.vkey, "--dir", witness_dir
    )
    assert again.code == 8
    assert "already exists" in again.stderr
    bad = blovault(
        "witness", "init", "--name", "w.example/x", "--log-vkey", "junk", "--dir", tmp_path / "n"
    )
    assert bad.code == 2, bad.stderr
    os.chmod(witness_dir / "witness.key", 0o644)
    unsafe = blovault("witness", "status", "--dir", witness_dir)
    assert unsafe.code == 9
    assert "chmod 600" in unsafe.stderr
    os.chmod(witness_dir / "witness.key", 0o600)
    table = blovault("witness", "status", "--dir", witness_dir)
    assert table.code == 0, table.stderr
    assert log.origin in table.stdout
    assert "never" in table.stdout


# --------------------------------------------------------------------------- the publisher


class TreeSource:
    """The log side for the publisher: a real tree, checkpoints signed with the log key."""

    def __init__(self, log: LogOperator) -> None:
        self.log = log
        self.tree = Tree()

    def grow(self, n: int) -> None:
        for _ in range(n):
            self.tree.append(f"entry {self.tree.size}".encode())

    def latest_checkpoint(self) -> str:
        return self.log.signed(self.tree)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return self.tree.proof(old_size, new_size)


def test_three_witnesses_two_of_three_publisher(
    tmp_path: Path,
    start_witness: StartWitness,
    log: LogOperator,
    blovault: Blovault,
) -> None:
    countries = ("KZ", "TJ", "KG")
    dirs, served = {}, {}
    for c in countries:
        dirs[c] = tmp_path / f"{c.lower()}-witness"
        init = blovault(
            "witness", "init", "--name", f"witness.{c.lower()}.example/blo",
            "--log-vkey", log.vkey, "--dir", dirs[c],
        )  # fmt: skip
        assert init.code == 0, init.stderr
        (dirs[c] / "vkey").write_text(init.stdout)
        served[c] = start_witness(dirs[c])
    policy = parse_policy(
        f"log {log.vkey}\n"
        + "".join(
            f"witness {c} {(dirs[c] / 'vkey').read_text().strip()} {served[c].url}\n"
            for c in countries
        )
        + "group countries 2 KZ TJ KG\nquorum countries\n"
    )
    source = TreeSource(log)

    def make_publisher() -> Publisher:
        # The witnesses stamp with the real clock; this clock is far ahead so none is "future".
        return Publisher(policy=policy, source=source, post=http_post(10.0), clock=lambda: 2**40)

    publisher = make_publisher()

    def cosigners(note: str) -> set[str]:
        return set(verify_witnessed(note, policy, now=2**40).cosigned_at)

    source.grow(5)
    first = publisher.publish_once()
    assert first is not None
    assert cosigners(first) == {"KZ", "TJ", "KG"}
    assert publisher.publish_once() is None  # nothing new: no round trip needed

    _stop(served["KG"])
    source.grow(4)
    second = publisher.publish_once()
    assert second is not None  # 2 of 3 is enough
    assert cosigners(second) == {"KZ", "TJ"}
    lag = {item.name: item for item in publisher.lag()}
    assert (lag["KG"].size, lag["KZ"].size) == (5, 9)
    assert lag["KG"].error is not None

    _stop(served["TJ"])
    source.grow(3)
    assert publisher.publish_once() is None  # 1 of 3: never published below quorum
    assert publisher.published == second
    assert publisher.published_size == 9
    assert status(blovault, dirs["KZ"])["size"] == 12  # KZ did cosign 12; that alone is not enough

    # Both return on their old ports; KG is caught up from 5, TJ from 9.
    served["TJ"] = start_witness(dirs["TJ"], int(served["TJ"].url.rsplit(":", 1)[1]))
    served["KG"] = start_witness(dirs["KG"], int(served["KG"].url.rsplit(":", 1)[1]))
    third = publisher.publish_once()
    assert third is not None
    assert cosigners(third) == {"KZ", "TJ", "KG"}
    assert {item.size for item in publisher.lag()} == {12}

    # A fresh publisher knows no witness sizes: each answers 409 with its size, it retries
    # from there, and the same head is cosigned again.
    fresh = make_publisher()
    again = fresh.publish_once()
    assert again is not None
    assert cosigners(again) == {"KZ", "TJ", "KG"}

    # The operator forks: a tree of the same size with other entries is refused by every
    # witness, so nothing is published for it.
    forked = TreeSource(log)
    forked.tree = tree_of(12, tag="fork")
    forker = Publisher(policy=policy, source=forked, post=http_post(10.0), clock=lambda: 2**40)
    assert forker.publish_once() is None
    assert all(item.error and "409" in item.error for item in forker.lag())


def test_witness_killed_during_concurrent_requests_keeps_every_answered_state(
    witness_dir: Path,
    start_witness: StartWitness,
    log: LogOperator,
    blovault: Blovault,
) -> None:
    served = start_witness(witness_dir)
    tree = tree_of(200)
    accepted: list[int] = []
    lock = threading.Lock()
    enough = threading.Event()

    def client(i: int) -> None:
        # Each client pushes the witness forward in steps of its own, retrying from the size
        # the witness names, until the witness disappears under it.
        old, step = 0, 3 + i % 5
        with httpx.Client() as http:
            while True:
                new = min(old + step, tree.size)
                body = add_body(old, tree.proof(old, new) if old else [], log.signed(tree, new))
                try:
                    reply = post(served.url, body, http)
                except httpx.TransportError:
                    return
                if reply.status_code == 200:
                    with lock:
                        accepted.append(new)
                        if len(accepted) >= 8:
                            enough.set()
                    old = new
                elif reply.status_code == 409:
                    old = int(reply.text)
                else:
                    return
                if old >= tree.size:
                    return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    assert enough.wait(timeout=120)
    _stop(served, kill=True)  # SIGKILL with requests in flight
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)

    # Every size answered 200 was on disk before the answer: the state is at least the largest
    # of them (a request committed just before the kill may have lost its reply), and it is
    # a head of the one honest tree.
    after = status(blovault, witness_dir)
    assert isinstance(after["size"], int)
    assert after["size"] >= max(accepted)
    assert after["root"] == base64.b64encode(tree.root(after["size"])).decode()

    served = start_witness(witness_dir)
    stale = post(served.url, log.body(0, tree))
    assert (stale.status_code, stale.text) == (409, f"{after['size']}\n")
    reply = post(served.url, log.body(after["size"], tree))
    assert reply.status_code == 200, reply.text
    assert status(blovault, witness_dir)["size"] == tree.size
