"""Property-based fuzzing of the API against its own OpenAPI schema (schemathesis).

The schema is the contract: every pattern, length, bound and status the server enforces is in
it, and this test holds the server to it with *every* schemathesis check.

The schema is loaded from the ASGI app in-process (``schemathesis.openapi.from_asgi``) and
every operation of it is fuzzed by every role (officer, supervisor, auditor, admin, each with
a valid bearer token, and anonymous without one), through schemathesis' in-process ASGI
transport (no socket). Operations are taken from the served schema, so routes added later are
fuzzed without touching this file. Two kinds of cases:

* coverage (``test_coverage_scenarios_conform``): schemathesis' deterministic scenarios --
  boundary values, each constraint broken in turn, a missing required header, methods the
  schema does not list (405 with ``Allow``);
* fuzzing (``test_api_conforms_to_its_schema``): valid and invalid requests from Hypothesis.
  Each generated request is sent twice when it names something: once as generated, and once
  with its ids (path parameters, ``/authz/explain``'s query, the consistency checkpoint)
  replaced by real ones of the seeded world, so bodies and queries are also fuzzed against
  existing packages, files and releases; an upload is resent with well-formed metadata (the
  generated text as its title) before the generated file parts.

Checks on every response: all of schemathesis' registered checks (``not_a_server_error``,
``status_code_conformance``, ``content_type_conformance``, ``response_headers_conformance``,
``response_schema_conformance``, ``negative_data_rejection``, ``positive_data_acceptance``,
``missing_required_header``, ``unsupported_method``, ``allow_header_conformance``,
``use_after_free``, ``ensure_resource_availability``, ``ignored_auth``,
``object_level_authorization``), and the one error shape (``api/errors.py``): every 4xx/5xx
JSON body is exactly ``{"error": {"code", "message", "receipt"}}``, and no error body carries
a traceback or a server file path.

One allowance, named per operation in ``SEMANTIC_422``: a few bodies are checked against the
state of the vault or against each other (does the country exist, does the release end after
it starts, does the checkpoint verify, is the metadata part valid JSON), which no schema can
say; for those operations a schema-valid request may be refused with 422.

Generation is derandomized (reproducible from run to run) with no example database, no
deadline and a bounded number of examples per operation and role.

Cases come from ``APIOperation.as_strategy()`` under Hypothesis' ``@given``, one pytest item
per (operation, role), rather than from schemathesis' pytest loader: its lazy
``schemathesis.pytest.from_fixture`` (4.32.5) sets ``request.node._nodeid``, which pytest 9
no longer has (AttributeError).

Longer run (e.g. before a release)::

    VAULT_FUZZ_EXAMPLES=500 VAULT_FUZZ_COVERAGE=1000 ./scripts/test tests/api/test_fuzz.py

``VAULT_FUZZ_EXAMPLES`` is the number of fuzzed examples per operation and role (default 10);
``VAULT_FUZZ_COVERAGE`` the number of coverage scenarios per operation and role (default 60).
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
from typing import TYPE_CHECKING, Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="needs the test extra: schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402  (after the importorskip)

from tests.conftest import (  # noqa: E402
    FAST_ARGON2,
    METRICS_TOKEN,
    ON_POSTGRES,
    PASSWORD,
    postgres_schema_url,
    seed,
)
from vault.config import load_settings  # noqa: E402
from vault.models import Classification, Handling  # noqa: E402
from vault.schemas import NewPackage  # noqa: E402
from vault.service import IncomingFile, Principal, Vault  # noqa: E402

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Receive, Scope, Send

EXAMPLES = int(os.environ.get("VAULT_FUZZ_EXAMPLES", "10"))
COVERAGE = int(os.environ.get("VAULT_FUZZ_COVERAGE", "60"))

ROLES: dict[str, str | None] = {
    "officer": "uz.officer",
    "supervisor": "uz.supervisor",
    "auditor": "uz.auditor",
    "admin": "uz.admin",
    "anonymous": None,
}

# Operations whose schema-valid bodies may still be refused as invalid (422), and why: the
# check needs the vault's state or relates two fields, which a schema can't express.
SEMANTIC_422 = {
    ("POST", "/packages"): "the metadata part must be JSON of NewPackage (a string in the form)",
    ("POST", "/packages/{package_id}/releases"): "country/agency must exist; times must order",
    ("POST", "/packages/{package_id}/release-requests"): "country/agency must exist",
    ("POST", "/ledger/proof/consistency"): "the checkpoint must verify with the log's key",
    ("POST", "/auth/password"): "the new password must differ from the current one",
    ("POST", "/crossing-points"): "its country must exist",
    ("GET", "/stats/seizures"): "'from' must not be after 'to', and each must be a real day",
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
    app: FastAPI
    tokens: dict[str, str]
    real: dict[str, list[str]] = field(default_factory=dict)
    checkpoint: str = ""
    counter: int = 0

    def fresh_token(self, role: str) -> str:
        """A token of a new session of ``role``'s user."""
        user = ROLES[role]
        assert user is not None, "the anonymous caller has no session"
        return self.vault.login(user, PASSWORD).access_token

    def pick(self, name: str) -> str | None:
        """A real value for a parameter name, cycling through the candidates."""
        values = self.real.get(name)
        if not values:
            return None
        self.counter += 1
        return values[self.counter % len(values)]


def _upload(vault: Vault, who: Principal, title: str, **meta: Any) -> dict[str, Any]:
    result = vault.upload(
        who,
        NewPackage(title=title, **meta),
        [IncomingFile(name="report.txt", reader=io.BytesIO(b"fuzz " + title.encode()))],
    )
    return result.package.model_dump(mode="json")


def _without_lifespan(app: ASGIApp) -> ASGIApp:
    """The app, declining ASGI lifespan: no background checkpoint task outlives the module."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("lifespan not used in-process")
        await app(scope, receive, send)

    return asgi


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzWorld]:
    from blo_vault.api.app import create_app

    base: Path = tmp_path_factory.mktemp("fuzz")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_schema_url()) if ON_POSTGRES else None
        # /auth/password is fuzzed with wrong current passwords, which count towards the
        # login lockout; a locked-out user would get no fresh sessions (SESSION_ENDING).
        vault_settings = load_settings(
            data_dir=base / "vault-data",
            database_url=url,
            login_failures_per_user=1_000_000,
            metrics_token=METRICS_TOKEN,
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
            role: vault.login(username, PASSWORD).access_token
            for role, username in ROLES.items()
            if username is not None
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
    """(method, path) of every operation of the served schema."""
    from blo_vault.api.app import create_app

    with contextlib.ExitStack() as stack:
        import tempfile

        base = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        vault = Vault.open(load_settings(data_dir=base, **FAST_ARGON2))
        stack.callback(vault.close)
        spec = create_app(vault=vault).openapi()
    return sorted((m.upper(), p) for p, methods in spec["paths"].items() for m in methods)


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
    """Every check schemathesis has, the one error shape, and the SEMANTIC_422 allowance."""
    from schemathesis.checks import CHECKS, load_all_checks
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    load_all_checks()

    def positive_data_acceptance_but_semantic_422(ctx: Any, response: Any, case: Any) -> Any:
        if response.status_code == 422 and (case.method.upper(), case.path) in SEMANTIC_422:
            return None
        return positive_data_acceptance(ctx, response, case)

    checks = [c for c in CHECKS.get_all() if c is not positive_data_acceptance]
    return [*checks, positive_data_acceptance_but_semantic_422, one_error_shape]


# Checks that judge the request's data against what its generator meant it to be.
DATA_CHECKS = {
    "negative_data_rejection",
    "positive_data_acceptance",
    "positive_data_acceptance_but_semantic_422",
}


def _headers(world: FuzzWorld, role: str) -> dict[str, str]:
    token = world.tokens.get(role)
    return {"Authorization": f"Bearer {token}"} if token else {}


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
    assert ("GET", "/metrics") in served  # the app's own routes, not only the router's


@pytest.mark.parametrize("role", list(ROLES))
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_conforms_to_its_schema(
    method: str, path: str, role: str, api_schema: Any, fuzz_world: FuzzWorld
) -> None:
    from hypothesis import given
    from schemathesis.generation import GenerationMode

    operation = api_schema[path][method]
    headers = _headers(fuzz_world, role)
    checks = _checks()
    resend_checks = [c for c in checks if c.__name__ not in DATA_CHECKS]

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
        if path in SESSION_ENDING and ROLES[role] is not None:
            sent = {"Authorization": f"Bearer {fuzz_world.fresh_token(role)}"}
        response = case.call(headers=sent)
        case.validate_response(response, checks=checks, headers=sent)
        # Refused at authentication (a negative case broke the Authorization header): the
        # same request with real ids would only be refused the same way.
        if response.status_code != 401 and _with_real_ids(case, fuzz_world):
            response = case.call(headers=sent)
            # The case's own record of which part was made invalid no longer holds once its
            # ids are replaced: the data checks judge the request as generated, above.
            case.validate_response(response, checks=resend_checks, headers=sent)

    fuzz()


@pytest.mark.parametrize("role", list(ROLES))
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_coverage_scenarios_conform(
    method: str, path: str, role: str, api_schema: Any, fuzz_world: FuzzWorld
) -> None:
    """schemathesis' coverage scenarios (boundaries, each constraint broken, a missing
    header, unlisted methods), the first VAULT_FUZZ_COVERAGE of them, as ``role``."""
    import itertools

    from schemathesis.generation import GenerationMode

    operation = api_schema[path][method]
    headers = _headers(fuzz_world, role)
    checks = _checks()
    cases = api_schema.iter_coverage_cases(
        operation,
        generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        generation_config=api_schema.config.generation_for(operation=operation, phase="coverage"),
    )
    ran = 0
    for case in itertools.islice(cases, COVERAGE):
        response = case.call(headers=headers)
        case.validate_response(response, checks=checks, headers=headers)
        ran += 1
    assert ran, "no coverage scenarios"


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
