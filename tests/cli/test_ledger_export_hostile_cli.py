"""`blovault ledger verify --export` on an export crafted by a hostile host (review 5).

The auditor runs the offline verify on a file the host handed over. Whatever the file holds,
the answer must be a verdict ("ledger NOT intact", exit 1, the JSON report with --json) or,
for a file that does not even have the shape of an export, one "not a ledger export" error
line (exit 2): never "error: unexpected ...".
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from blo_vault.cli.main import run
from tests.conftest import CliResult
from vault.ledger import commit, merkle, note
from vault.ledger.entry import GENESIS_PREV

ORIGIN = "hostile.blo-vault.local/ledger"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
VKEY = note.Verifier.from_public_key(ORIGIN, KEY.public_key()).vkey()
SALTS = b"\x11" * (commit.SALT_SIZE * len(commit.SENSITIVE))
NOT_AN_EXPORT = "error: export file is not a ledger export: "

Body = Callable[[int, str], bytes]  # (seq, prev link) -> the entry's bytes


def committed(seq: int, prev: str) -> bytes:
    """A real version 2 committed entry."""
    public = {"action": "download", "decision": "allow", "policy": "1"}
    data, _ = commit.encode(
        seq, 1_700_000_000_000_000 + seq, public, {"actor_user": "kz.officer"}, prev, salts=SALTS
    )
    return data


def link(prev: str) -> bytes:
    return struct.pack(">I", 64) + prev.encode()


def export(bodies: list[Body], **members: Any) -> dict[str, Any]:
    """A correctly signed export of entries made by ``bodies``, chained in order."""
    datas, prev = [], GENESIS_PREV
    for seq, body in enumerate(bodies):
        datas.append(body(seq, prev))
        prev = merkle.leaf_hash(datas[-1]).hex()
    root = merkle.root_from_leaf_hashes([merkle.leaf_hash(d) for d in datas])
    signed = note.sign_checkpoint(note.Checkpoint(ORIGIN, len(datas), root), ORIGIN, KEY)
    return {
        "origin": ORIGIN,
        "vkey": VKEY,
        "checkpoint": signed,
        "entries": [base64.b64encode(d).decode() for d in datas],
        **members,
    }


def opening(seq: int) -> dict[str, Any]:
    """The JSON opening of ``committed(seq, ...)``."""
    size = commit.SALT_SIZE
    salts = tuple(SALTS[i : i + size] for i in range(0, len(SALTS), size))
    values = tuple("kz.officer" if name == "actor_user" else "" for name in commit.SENSITIVE)
    return commit.Opening(seq, salts, values).to_json()


def verify(document: object, *args: str) -> CliResult:
    """``blovault ledger verify --export FILE [args]`` in-process (``--vkey`` unless given)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.json"
        path.write_text(json.dumps(document), encoding="utf-8")  # ASCII: "\ud800" escaped
        key = () if "--policy" in args else ("--vkey", VKEY)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(["ledger", "verify", "--export", str(path), *key, *args])
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_clean(result: CliResult) -> None:
    """An answer the auditor can act on: intact, NOT intact, or one error line."""
    text = result.stdout + result.stderr
    assert "unexpected" not in text, text
    assert "Traceback" not in text, text
    if result.code == 0:
        assert result.stdout.startswith("ledger intact"), text
    elif result.code == 1:
        assert "ledger NOT intact" in result.stderr, text
    else:
        assert result.code == 2, text
        assert result.stderr.startswith(NOT_AN_EXPORT), text
        assert len(result.stderr.strip().splitlines()) == 1, text


def test_a_good_export_is_intact() -> None:
    result = verify(export([committed] * 3, openings=[opening(1)]))
    assert result.code == 0, result
    assert result.stdout.startswith("ledger intact: 3 entries")


# --- (a) an opening value JSON can spell but no entry can hold ----------------------------------


def test_a_lone_surrogate_in_an_opening_is_a_verdict() -> None:
    forged = opening(1)
    forged["fields"]["actor_user"][1] = "\ud800"  # valid JSON: "\ud800"
    result = verify(export([committed] * 3, openings=[forged]))
    assert_clean(result)
    assert result.code == 1
    assert "an opening does not verify" in result.stderr
    assert "actor_user" in result.stderr


def test_a_lone_surrogate_in_an_opening_with_json_reports_on_stdout() -> None:
    forged = opening(0)
    forged["fields"]["reason"][1] = "ok\udfff"
    result = verify(export([committed] * 3, openings=[forged]), "--json")
    assert result.code == 1, result
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert "an opening does not verify" in report["problem"]
    assert "unexpected" not in result.stderr


# --- (b) members of the wrong JSON type ------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"entries": 5}, "'entries' is not a list"),
        ({"entries": "AAAA"}, "'entries' is not a list"),
        ({"entries": None}, "'entries' is not a list"),
        ({"entries": ["AAAA", 5]}, "'entries' item 1 is not a string"),
        ({"origin": None}, "'origin' is not a string"),
        ({"origin": ["o"]}, "'origin' is not a string"),
        ({"checkpoint": 1}, "'checkpoint' is not a string"),
        ({"vkey": {}}, "'vkey' is not a string"),
        ({"witnessed_checkpoint": 7}, "'witnessed_checkpoint' is not a string or null"),
        ({"openings": {"seq": 0}}, "'openings' is not a list"),
        ({"openings": None}, "'openings' is not a list"),
        ({"openings": [5]}, "'openings' item 0 is not an object"),
    ],
)
def test_a_member_of_the_wrong_type_is_not_an_export(change: dict[str, Any], named: str) -> None:
    result = verify({**export([committed] * 2), **change})
    assert_clean(result)
    assert result.code == 2
    assert result.stderr.strip() == NOT_AN_EXPORT + named


@pytest.mark.parametrize("member", ["origin", "checkpoint", "entries"])
def test_a_missing_member_is_not_an_export(member: str) -> None:
    document = export([committed] * 2)
    del document[member]
    result = verify(document)
    assert result.code == 2, result
    assert result.stderr.strip() == f"{NOT_AN_EXPORT}it has no {member!r}"


@pytest.mark.parametrize("document", [[], 5, "export", None])
def test_a_document_that_is_not_an_object(document: object) -> None:
    result = verify(document)
    assert result.code == 2, result
    assert result.stderr.strip() == NOT_AN_EXPORT + "not a JSON object"


def test_the_shape_is_checked_with_a_policy_too(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.write_text(f"log {VKEY}\nquorum none\n")
    result = verify({**export([committed]), "entries": 5}, "--policy", str(policy))
    assert result.code == 2, result
    assert result.stderr.strip() == NOT_AN_EXPORT + "'entries' is not a list"


# --- fuzzing: any JSON in any member, with or without a policy -------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    # Lone surrogates included: JSON can spell them, and a hostile file will.
    | st.text(st.characters(exclude_categories=()), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
MEMBERS = ("origin", "vkey", "checkpoint", "entries", "witnessed_checkpoint", "openings")
GOOD = export([committed] * 3, openings=[opening(0), opening(2)])
GOOD["witnessed_checkpoint"] = GOOD["checkpoint"]  # "quorum none": the log's signature alone


@st.composite
def hostile(draw: st.DrawFn) -> object:
    """A valid export with some members replaced, removed, or their items replaced."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    document = json.loads(json.dumps(GOOD))
    for name in draw(st.lists(st.sampled_from(MEMBERS), min_size=1, max_size=3, unique=True)):
        how = draw(st.sampled_from(["replace", "remove", "item", "field"]))
        if how == "replace":
            document[name] = draw(JSON)
        elif how == "remove":
            del document[name]
        elif how == "item" and isinstance(document[name], list):
            document[name][draw(st.integers(0, len(document[name]) - 1))] = draw(JSON)
        elif how == "field" and name == "openings":
            fields = document["openings"][draw(st.integers(0, 1))]["fields"]
            fields[draw(st.sampled_from(commit.SENSITIVE))][draw(st.integers(0, 1))] = draw(JSON)
    return document


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(document=hostile(), policy=st.booleans())
def test_fuzzed_exports_get_a_verdict_or_one_error(document: object, policy: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy"
        path.write_text(f"log {VKEY}\nquorum none\n")
        result = verify(document, *(("--policy", str(path)) if policy else ()))
    assert_clean(result)


# --- --old: the export must extend a checkpoint the auditor saved earlier -------------------


def uploaded(seq: int, prev: str) -> bytes:
    """Another entry than ``committed`` at the same place: a rewritten history."""
    public = {"action": "upload", "decision": "allow", "policy": "1"}
    data, _ = commit.encode(
        seq, 1_700_000_000_000_000 + seq, public, {"actor_user": "uz.officer"}, prev, salts=SALTS
    )
    return data


def verify_old(document: object, saved: str, *args: str) -> CliResult:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "saved.checkpoint"
        path.write_text(saved, encoding="utf-8")
        return verify(document, "--old", str(path), *args)


def test_an_export_that_extends_the_saved_checkpoint() -> None:
    saved = export([committed] * 3)["checkpoint"]
    result = verify_old(export([committed] * 5), saved)
    assert result.code == 0, result
    assert result.stdout.startswith("ledger intact: 5 entries")
    assert "extends the saved checkpoint of 3 entries" in result.stdout
    result = verify_old(export([committed] * 5), saved, "--json")
    assert result.code == 0, result
    assert json.loads(result.stdout)["extends_saved_size"] == 3
    # The saved checkpoint may be of the export's own size.
    assert verify_old(export([committed] * 3), saved).code == 0


@pytest.mark.parametrize(
    ("bodies", "problem"),
    [
        # The host rewrote entry 1 after the auditor saved the checkpoint of 3: a fork.
        (
            [committed, uploaded, committed, committed, committed],
            "entries 0..2 do not match the signed checkpoint of size 3",
        ),
        # The host hands over an export from before the saved checkpoint, or rolled back.
        ([committed] * 2, "entries from 2 are missing: a signed checkpoint covers 3 entries"),
    ],
    ids=["forked", "rolled-back"],
)
def test_an_export_that_does_not_extend_it_is_not_intact(bodies: list[Body], problem: str) -> None:
    saved = export([committed] * 3)["checkpoint"]
    result = verify_old(export(bodies), saved)
    assert result.code == 1, result
    assert "ledger NOT intact" in result.stderr
    assert problem in result.stderr
    assert "extends" not in result.stdout


def test_a_saved_checkpoint_not_signed_by_the_log_key() -> None:
    other = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    root = merkle.root_from_leaf_hashes(
        [merkle.leaf_hash(base64.b64decode(e)) for e in export([committed] * 3)["entries"]]
    )
    forged = note.sign_checkpoint(note.Checkpoint(ORIGIN, 3, root), ORIGIN, other)
    result = verify_old(export([committed] * 5), forged)
    assert result.code == 1, result
    assert "the saved checkpoint is not one this log's key signed" in result.stderr


def test_old_without_an_export_is_a_usage_error(tmp_path: Path) -> None:
    saved = tmp_path / "saved.checkpoint"
    saved.write_text(export([committed] * 3)["checkpoint"], encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(["ledger", "verify", "--old", str(saved)])
    assert code == 2, err.getvalue()
    assert "--old checks an export" in err.getvalue()
