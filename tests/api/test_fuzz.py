"""Property-based fuzzing of the API against its own OpenAPI schema (schemathesis).

The schema is loaded from the ASGI app in-process (``schemathesis.openapi.from_asgi``) and
every operation is fuzzed by every role (officer, supervisor, auditor, admin), each with a
valid bearer token, through schemathesis' in-process ASGI transport (no socket). Each
generated request is sent twice when it names something: once as generated, and once with its
ids (path parameters, ``/authz/explain``'s query, the consistency checkpoint) replaced by real
ones of the seeded world, so bodies and queries are also fuzzed against existing packages,
files and releases instead of only being refused as unknown ids; an upload is resent with
well-formed metadata (the generated text as its title) before the generated file parts.

Checks on every response:

* ``not_a_server_error``: no 5xx, ever;
* ``response_schema_conformance`` and ``content_type_conformance``: documented statuses
  answer with the documented body and media type;
* the one error shape (``api/errors.py``): every 4xx/5xx JSON body is exactly
  ``{"error": {"code", "message", "receipt"}}``, and no error body carries a traceback or a
  server file path.

``status_code_conformance`` is not run: the schema documents only the success status and 422
of each operation, while 401/403/404/408/409/413/429 are answers the API gives by design, so
it would flag every refusal. Generation is derandomized (reproducible from run to run) with no
example database, no deadline and a bounded number of examples per operation, valid and
invalid (schemathesis' positive and negative modes) from one strategy.

Cases come from ``APIOperation.as_strategy()`` under Hypothesis' ``@given``, one pytest item
per (operation, role), rather than from schemathesis' pytest loader: its lazy
``schemathesis.pytest.from_fixture`` (4.32.5) sets ``request.node._nodeid``, which pytest 9
no longer has (AttributeError).

Longer run (e.g. before a release)::

    VAULT_FUZZ_EXAMPLES=500 ./scripts/test tests/api/test_fuzz.py

``VAULT_FUZZ_EXAMPLES`` is the number of fuzzed examples per operation and role (default 25).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="needs the test extra: schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402  (after the importorskip)

from tests.conftest import FAST_ARGON2, ON_POSTGRES, PASSWORD, postgres_schema_url, seed  # noqa: E402
from vault.config import load_settings  # noqa: E402
from vault.models import Classification, Handling  # noqa: E402
from vault.schemas import NewPackage  # noqa: E402
from vault.service import IncomingFile, Vault  # noqa: E402

EXAMPLES = int(os.environ.get("VAULT_FUZZ_EXAMPLES", "25"))

ROLES = {
    "officer": "uz.officer",
    "supervisor": "uz.supervisor",
    "auditor": "uz.auditor",
    "admin": "uz.admin",
}

# Operations that end the session they are called with: each case runs in a session of its own,
# so the role's token stays alive for every other operation.
SESSION_ENDING = {"/auth/logout", "/auth/password"}

# What an error body must never show: a traceback, or a path of the server's files.
LEAKS = re.compile(r"Traceback|site-packages|/work/|\.py\"|\.py'|\.py\b|File \"/")


@dataclass
class FuzzWorld:
    """A seeded vault with a few packages and releases, its app and a token per role."""

    vault: Vault
    app: Any
    tokens: dict[str, str]
    real: dict[str, list[str]] = field(default_factory=dict)
    checkpoint: str = ""
    counter: int = 0

    def fresh_token(self, role: str) -> str:
        """A token of a new session of ``role``'s user."""
        return self.vault.login(ROLES[role], PASSWORD).access_token

    def pick(self, name: str) -> str | None:
        """A real value for a parameter name, cycling through the candidates."""
        values = self.real.get(name)
        if not values:
            return None
        self.counter += 1
        return values[self.counter % len(values)]


def _upload(vault: Vault, who: Any, title: str, **meta: Any) -> dict[str, Any]:
    result = vault.upload(
        who,
        NewPackage(title=title, **meta),
        [IncomingFile(name="report.txt", reader=io.BytesIO(b"fuzz " + title.encode()))],
    )
    return result.package.model_dump(mode="json")


def _without_lifespan(app: Any) -> Any:
    """The app, declining ASGI lifespan: no background checkpoint task outlives the module."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("lifespan not used in-process")
        await app(scope, receive, send)

    return asgi


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzWorld]:
    from api.app import create_app

    base: Path = tmp_path_factory.mktemp("fuzz")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_schema_url()) if ON_POSTGRES else None
        # /auth/password is fuzzed with wrong current passwords, which count towards the
        # login lockout; a locked-out user would get no fresh sessions (SESSION_ENDING).
        vault_settings = load_settings(
            data_dir=base / "vault-data",
            database_url=url,
            login_failures_per_user=1_000_000,
            **FAST_ARGON2,
        )
        vault = Vault.open(vault_settings)
        stack.callback(vault.close)
        users = seed(vault)
        uz = users["uz.officer"]
        plain = _upload(vault, uz, "plain")
        h3 = _upload(
            vault,
            uz,
            "h3",
            classification=Classification.RESTRICTED,
            handling=Handling.H3,
            handling_note="read me",
        )
        secret = _upload(vault, uz, "secret", classification=Classification.CONFIDENTIAL)
        direct = vault.release(uz, plain["id"], country="KZ").release
        vault.release(uz, h3["id"], country="KZ")
        # Four-eyes: pending until a supervisor other than the requester decides.
        pending = [
            vault.release(uz, secret["id"], country=c).release.id for c in ("KZ", "TJ", "KG")
        ]
        tokens = {
            role: vault.login(username, PASSWORD).access_token for role, username in ROLES.items()
        }
        world = FuzzWorld(
            vault=vault,
            app=create_app(vault=vault),
            tokens=tokens,
            real={
                "package_id": [plain["id"], h3["id"], secret["id"]],
                "file_id": [plain["files"][0]["id"], h3["files"][0]["id"]],
                "release_id": [direct.id, *pending],
                "package": [plain["id"], secret["id"]],
                "user": ["kz.officer", "uz.officer", "tj.officer"],
            },
            checkpoint=vault.checkpoint().note,
        )
        yield world


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every route: the module-level router, and /metrics of create_app."""
    from api.app import router

    found = {(m, r.path) for r in router.routes for m in getattr(r, "methods", ()) or ()}
    found.add(("GET", "/metrics"))
    return sorted((m, p) for m, p in found if m not in ("HEAD", "OPTIONS"))


OPERATIONS = _operations()


@pytest.fixture(scope="module")
def api_schema(fuzz_world: FuzzWorld) -> Any:
    """The vault's own OpenAPI schema, served in-process by the app it describes."""
    return schemathesis.openapi.from_asgi("/openapi.json", _without_lifespan(fuzz_world.app))


def one_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error is the API's one JSON shape, and no error body leaks server internals."""
    if response.status_code < 400:
        return None
    text = response.text
    assert not LEAKS.search(text), f"error body leaks server internals: {text[:300]!r}"
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/json"), (
        f"{response.status_code} answered as {content_type!r}, not the JSON error shape"
    )
    body = json.loads(text)
    assert isinstance(body, dict), f"not the error shape: {text[:300]}"
    assert set(body) == {"error"}, f"not the error shape: {text[:300]}"
    error = body["error"]
    assert isinstance(error, dict), text[:300]
    assert set(error) == {"code", "message", "receipt"}, text[:300]
    assert isinstance(error["code"], str), text[:300]
    assert error["code"], text[:300]
    assert isinstance(error["message"], str), text[:300]
    assert error["message"], text[:300]
    assert error["receipt"] is None or isinstance(error["receipt"], int), text[:300]
    return True


def _checks() -> list[Any]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
    )

    return [
        not_a_server_error,
        response_schema_conformance,
        content_type_conformance,
        one_error_shape,
    ]


def _with_real_ids(case: Any, world: FuzzWorld) -> bool:
    """Point the case at real packages, files and releases; False if it names nothing."""
    changed = False
    for name in list(case.path_parameters or {}):
        value = world.pick(name)
        if value is not None:
            case.path_parameters[name] = value
            changed = True
    if case.operation.path == "/authz/explain" and isinstance(case.query, dict):
        for name in ("user", "package"):
            value = world.pick(name)
            if value is not None:
                case.query[name] = value
                changed = True
    if case.operation.path == "/packages" and case.method.upper() == "POST":
        # A well-formed upload: metadata first, as JSON whose title is the generated text,
        # then the generated file parts (if any).
        body = case.body if isinstance(case.body, dict) else {}
        text = body.get("metadata")
        title = text if isinstance(text, str) and 1 <= len(text) <= 500 else "fuzzed upload"
        files = body.get("file")
        case.body = {"metadata": json.dumps({"title": title}), "file": files or []}
        changed = True
    if case.operation.path == "/ledger/proof/consistency" and isinstance(case.body, dict):
        case.body = {**case.body, "checkpoint": world.checkpoint}
        changed = True
    return changed


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    """The parametrisation below covers exactly the operations of the served schema."""
    served = sorted(
        (op.method.upper(), op.path)
        for op in (result.ok() for result in api_schema.get_all_operations())
    )
    assert served == OPERATIONS


@pytest.mark.parametrize("role", list(ROLES))
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_conforms_to_its_schema(
    method: str, path: str, role: str, api_schema: Any, fuzz_world: FuzzWorld
) -> None:
    from hypothesis import given
    from schemathesis.generation import GenerationMode

    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {fuzz_world.tokens[role]}"}
    checks = _checks()

    # Valid and invalid requests from one strategy, so the example budget covers both; an
    # operation without parameters or body has nothing to make invalid.
    strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
    if list(operation.iter_parameters()) or operation.body:
        strategy = strategy | operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        sent = headers
        if path in SESSION_ENDING:
            sent = {"Authorization": f"Bearer {fuzz_world.fresh_token(role)}"}
        response = case.call(headers=sent)
        case.validate_response(response, checks=checks, headers=sent)
        # Refused at authentication (a negative case broke the Authorization header): the
        # same request with real ids would only be refused the same way.
        if response.status_code != 401 and _with_real_ids(case, fuzz_world):
            response = case.call(headers=sent)
            case.validate_response(response, checks=checks, headers=sent)

    fuzz()


def test_schema_documents_the_one_error_shape(fuzz_world: FuzzWorld) -> None:
    """Every documented error response describes the one error shape, and only it."""
    import jsonschema_rs  # schemathesis' own validator

    spec = fuzz_world.app.openapi()
    real = {"error": {"code": "invalid_input", "message": "invalid request", "receipt": None}}
    fastapi_default = {"detail": [{"loc": ["body"], "msg": "x", "type": "x"}]}
    documented = 0
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for status, response in operation["responses"].items():
                if not status.startswith(("4", "5")):
                    continue
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                assert schema is not None, f"{method.upper()} {path} {status}: no JSON schema"
                where = f"{method.upper()} {path} {status}"
                document = {"components": spec["components"], **schema}
                validator = jsonschema_rs.validator_for(document)
                documented += 1
                assert validator.is_valid(real), f"{where}: the real error shape does not validate"
                assert not validator.is_valid(fastapi_default), (
                    f"{where}: documents FastAPI's {{'detail': [...]}}, not the one error shape"
                )
    assert documented
