"""The service's codes on the pages: every ledger reason and action the service can record,
every relation and every note of ``explain`` has words in the pages' catalogues. The codes are
read from the service's source, so a new one without words here fails this test."""

from __future__ import annotations

import ast
import importlib
import itertools
import pkgutil
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

import vault
from blo_vault.api.web import codes
from blo_vault.api.web.i18n import Languages
from tests.conftest import World
from tests.ui.conftest import Browser
from tests.ui.test_pages import upload
from vault import errors
from vault.authz import ACTIONS, NONE, ORIGINATOR, RELATIONS
from vault.models import ReleaseStatus
from vault.service.audit import _notes

ROOT = Path(__file__).parents[2]
SOURCES = [*sorted((ROOT / "vault").rglob("*.py")), *sorted((ROOT / "api").rglob("*.py"))]
# Positional places of the action and the reason in the service's recording calls.
POSITIONS = {
    "record_refusal": {"action": 2, "reason": 3},
    "record_decision": {"action": 1, "reason": 3},
}
# Names the service keeps a reason in before recording it (``problem`` also holds messages
# for InvalidInput: only code-like values count).
REASON_NAMES = {"reason", "problem"}
CODE = re.compile(r"[a-z0-9_]+")


def _strings(node: ast.expr | None) -> set[str]:
    """The string constants an expression can be (either branch of a conditional)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _strings(node.body) | _strings(node.orelse)
    if isinstance(node, ast.Tuple) and node.elts:
        return _strings(node.elts[0])
    return set()


def _recorded(field: str) -> set[str]:
    """The constant ``field`` (action or reason) values of ledger records in the source."""
    found: set[str] = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                for keyword in node.keywords:
                    if keyword.arg == field:
                        found |= _strings(keyword.value)
                place = POSITIONS.get(name, {}).get(field)
                if place is not None and len(node.args) > place:
                    found |= _strings(node.args[place])
            elif field == "reason" and isinstance(node, ast.Assign):
                found |= _assigned_reasons(node)
    return found


def _assigned_reasons(node: ast.Assign) -> set[str]:
    """Reasons kept in a variable (``problem = "session_revoked"``)."""
    found: set[str] = set()
    for target in node.targets:
        names = target.elts if isinstance(target, ast.Tuple) else [target]
        values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
        for name, value in zip(names, values, strict=False):
            if isinstance(name, ast.Name) and name.id in REASON_NAMES:
                found |= {text for text in _strings(value) if CODE.fullmatch(text)}
    return found


def _functions_returning_reasons() -> set[str]:
    """What the service's "why is this refused" helpers return (``_session_problem``,
    ``_refusal_for``): their docstrings say they return a ledger reason."""
    found: set[str] = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and "ledger reason" in (
                ast.get_docstring(node) or ""
            ):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Return):
                        found |= _strings(inner.value)
    return found


def _error_codes() -> set[str]:
    """Every error's code (a refusal is recorded with its error's code), with every module of
    the core imported so the answer doesn't depend on what other tests loaded."""
    for module in pkgutil.walk_packages(vault.__path__, "vault."):
        importlib.import_module(module.name)
    pending: list[type[errors.VaultError]] = [errors.VaultError]
    found: set[str] = set()
    while pending:
        kind = pending.pop()
        # The product's errors only: a test module may define its own subclass. The CLI's own
        # (a reply that is not a vault's) happen in the client and never reach the ledger.
        home = kind.__module__
        if home.split(".")[0] in ("vault", "blo_vault") and not home.startswith("blo_vault.cli"):
            found.add(kind.code)
        pending.extend(kind.__subclasses__())
    return found


def test_the_source_is_read() -> None:
    # The enumeration finds the codes known to be there: it could miss one and fail.
    assert {"upload", "login", "end-session", "gc"} <= _recorded("action")
    assert {"ok", "four_eyes_same_person", "session_revoked"} <= _recorded("reason")
    assert {"session_expired", "policy_denied"} <= _functions_returning_reasons()


def test_every_action_the_service_records_has_words() -> None:
    actions = _recorded("action") | set(ACTIONS)
    assert sorted(actions - set(codes.ACTIONS)) == []


def test_every_reason_the_service_records_has_words() -> None:
    reasons = _recorded("reason") | _functions_returning_reasons() | _error_codes()
    # "" is no reason: a field that doesn't apply, or a committed (v2) entry not opened to the
    # reader; the pages show it as nothing.
    assert codes.reason_text(Languages().by_code["ru"], "") == ""
    assert sorted(reasons - set(codes.REASONS) - {""}) == []
    for state in ReleaseStatus:
        assert codes.reason_text(Languages().by_code["ru"], f"status:{state.value}") != (
            f"status:{state.value}"
        )


def test_every_relation_has_words() -> None:
    assert sorted(set(RELATIONS) - set(codes.RELATIONS)) == []


def _every_note() -> set[str]:
    """The notes ``explain`` can write, from its own function over every case."""
    notes: set[str] = set()
    subject = SimpleNamespace(agency="TJ-CUSTOMS", country="TJ")
    for allowed, rules, relations, disabled, action in itertools.product(
        (True, False), ((), (("r",),)), ({NONE}, {ORIGINATOR}), (True, False), ACTIONS
    ):
        decision = SimpleNamespace(allowed=allowed, rules=rules)
        facts = SimpleNamespace(relations=frozenset(relations))
        user = SimpleNamespace(disabled=disabled)
        notes.update(
            _notes(
                cast(Any, decision), cast(Any, facts), cast(Any, subject), cast(Any, user), action
            )
        )
    return notes


@pytest.mark.parametrize("language", ["en", "ru"])
def test_every_note_of_explain_has_words(language: str) -> None:
    notes = _every_note()
    assert len(notes) == len(codes.NOTES)
    words = Languages().by_code[language]
    shown = {note: codes.note_text(words, note) for note in notes}
    assert all(text != note for note, text in shown.items())
    assert "TJ-CUSTOMS" in shown[next(n for n in notes if "originator" in n)]


def test_explain_and_ledger_pages_are_russian(world: World, browser: Browser) -> None:
    package_id = upload(world)
    browser.client.headers["Accept-Language"] = "ru"
    browser.sign_in("uz.auditor")
    page = browser.client.get(
        f"/ui/audit/explain?user=tj.officer&package={package_id}&action=request-release"
    ).text
    assert "не является отправителем" in page
    assert "is not the originator" not in page
    assert "запрос передачи" in page
    ledger = browser.client.get("/ui/audit/ledger").text
    assert "загрузка" in ledger
    assert ">upload<" not in ledger
    assert ">ok<" not in ledger
