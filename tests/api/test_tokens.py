"""Forged, broken and stale bearer tokens: every one is a 401 in the one JSON error shape.

Each case builds an ``Authorization`` header against a module-scoped seeded vault (served
in-process with FastAPI's TestClient) and sends it to a protected route, ``GET /packages``.
Forgeries are made by hand (base64url + HMAC) or with python-jose and ``cryptography``; the
control case proves the helpers make tokens the server accepts, so each refusal is down to the
one thing the case changes. Refusals of a presented token are in the ledger as an
``authenticate`` / ``deny`` entry under the receipt the client was given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwt

from tests.conftest import FAST_ARGON2, PASSWORD, World, seed
from vault.config import load_settings
from vault.ledger.entry import Entry
from vault.models import Role
from vault.service import Vault, local_operator
from vault.tokens import key_id

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette: httpx-backed TestClient is deprecated
    from fastapi.testclient import TestClient

from blo_vault.api.app import create_app

ROUTE = "/packages"
GENERIC = "invalid or expired token"  # the one message for every bad token (tokens.py)


# --- world --------------------------------------------------------------------------------------


@dataclass
class TokenWorld:
    """A seeded vault, an in-process client, and what a forger needs to know."""

    world: World
    client: TestClient
    kid: str
    private_pem: bytes
    public_pem: bytes
    issuer: str
    audience: str

    @property
    def vault(self) -> Vault:
        return self.world.vault

    def user_id(self, username: str) -> str:
        return self.world[username].user_id

    def session_id(self, username: str) -> str:
        """The live session of ``username`` that forged tokens claim (from the seeding login)."""
        return self.world[username].session_id


@pytest.fixture(scope="module")
def tw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenWorld]:
    data_dir = tmp_path_factory.mktemp("tokens") / "vault-data"
    settings = load_settings(data_dir=data_dir, **FAST_ARGON2)
    vault = Vault.open(settings)
    try:
        users = seed(vault)
        # Users of our own, so disabling one never disturbs another test.
        for name in ("tok.disabled", "tok.victim"):
            vault.add_user(
                local_operator(),
                username=name,
                agency="KZ-BORDER",
                role=Role.OFFICER,
                password=PASSWORD,
            )
            users[name] = vault.authenticate(vault.login(name, PASSWORD).access_token)
        keys = vault.keys
        with TestClient(create_app(vault=vault)) as client:
            yield TokenWorld(
                world=World(vault=vault, settings=settings, users=users),
                client=client,
                kid=key_id(keys.token_public_pem),
                private_pem=keys.token_private_pem,
                public_pem=keys.token_public_pem,
                issuer=settings.token_issuer,
                audience=settings.token_audience,
            )
    finally:
        vault.close()


# --- forging helpers ----------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def claims(tw: TokenWorld, user: str = "kz.officer", **changes: Any) -> dict[str, Any]:
    """Claims as the server issues them; ``name=None`` drops a claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": tw.user_id(user),
        "sid": tw.session_id(user),
        "iss": tw.issuer,
        "aud": tw.audience,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": secrets.token_hex(16),
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def es256(claims_: dict[str, Any], private_pem: bytes | str, kid: str) -> str:
    pem = private_pem.decode() if isinstance(private_pem, bytes) else private_pem
    token: str = jwt.encode(claims_, pem, algorithm="ES256", headers={"kid": kid})
    return token


def signed(tw: TokenWorld, **changes: Any) -> str:
    """A token with a good signature by the server's own key and kid."""
    return es256(claims(tw, **changes), tw.private_pem, tw.kid)


def fresh_p256_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def alg_none(tw: TokenWorld) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": tw.kid}
    return f"{b64url_json(header)}.{b64url_json(claims(tw))}."


def hs256_with_public_pem(tw: TokenWorld) -> str:
    """Algorithm confusion: HMAC keyed with the server's public key, which anyone may know."""
    header = {"alg": "HS256", "typ": "JWT", "kid": tw.kid}
    signing_input = f"{b64url_json(header)}.{b64url_json(claims(tw))}"
    mac = hmac.new(tw.public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def es256_header_zero_signature(tw: TokenWorld) -> str:
    header = {"alg": "ES256", "typ": "JWT", "kid": tw.kid}
    return f"{b64url_json(header)}.{b64url_json(claims(tw))}.{b64url(bytes(64))}"


def tampered_sub(tw: TokenWorld) -> str:
    """A real token of kz.officer with the payload swapped for one naming tok.victim."""
    header, payload, signature = signed(tw).split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["sub"] = tw.user_id("tok.victim")
    return f"{header}.{b64url_json(body)}.{signature}"


def disabled_user(tw: TokenWorld) -> str:
    token = signed(tw, sub=tw.user_id("tok.disabled"), sid=tw.session_id("tok.disabled"))
    assert tw.vault.authenticate(token).username == "tok.disabled"  # good until disabled
    tw.vault.set_user(local_operator(), "tok.disabled", disabled=True)
    return token


@dataclass(frozen=True)
class Case:
    """One bad credential: the Authorization header value (None: no header)."""

    id: str
    header: Callable[[TokenWorld], str | None]
    # Reason of the ledger entry ("authenticate" / "deny"); None when no token was presented.
    reason: str | None


def bearer(forge: Callable[[TokenWorld], str]) -> Callable[[TokenWorld], str]:
    return lambda tw: f"Bearer {forge(tw)}"


LONG_AGO = int(time.time()) - 7200
FUTURE = int(time.time()) + 3600

CASES = [
    Case("alg-none", bearer(alg_none), "bad_token"),
    Case("hs256-keyed-with-public-pem", bearer(hs256_with_public_pem), "bad_token"),
    Case("es256-zero-signature", bearer(es256_header_zero_signature), "bad_token"),
    Case(
        "expired",
        bearer(lambda tw: signed(tw, iat=LONG_AGO, nbf=LONG_AGO, exp=LONG_AGO + 900)),
        "bad_token",
    ),
    Case(
        "expired-just-beyond-leeway",
        bearer(lambda tw: signed(tw, exp=int(time.time()) - 30)),
        "bad_token",
    ),
    Case("nbf-in-future", bearer(lambda tw: signed(tw, nbf=int(time.time()) + 300)), "bad_token"),
    Case(
        "lifetime-longer-than-the-server-issues",
        bearer(lambda tw: signed(tw, exp=int(time.time()) + 10 * 86_400)),
        "bad_token",
    ),
    Case("wrong-audience", bearer(lambda tw: signed(tw, aud="someone-else")), "bad_token"),
    Case("wrong-issuer", bearer(lambda tw: signed(tw, iss="evil-vault")), "bad_token"),
    Case("missing-exp", bearer(lambda tw: signed(tw, exp=None)), "bad_token"),
    Case("missing-sub", bearer(lambda tw: signed(tw, sub=None)), "bad_token"),
    Case("missing-iat", bearer(lambda tw: signed(tw, iat=None)), "bad_token"),
    Case("missing-nbf", bearer(lambda tw: signed(tw, nbf=None)), "bad_token"),
    Case("missing-aud", bearer(lambda tw: signed(tw, aud=None)), "bad_token"),
    Case("missing-iss", bearer(lambda tw: signed(tw, iss=None)), "bad_token"),
    Case("sub-not-a-string", bearer(lambda tw: signed(tw, sub=12345)), "bad_token"),
    # Tokens from before sessions existed: nothing could revoke them.
    Case("missing-sid", bearer(lambda tw: signed(tw, sid=None)), "bad_token"),
    Case("sid-not-hex", bearer(lambda tw: signed(tw, sid="x" * 32)), "bad_token"),
    Case(
        "sid-of-no-session",
        bearer(lambda tw: signed(tw, sid=secrets.token_hex(16))),
        "session_unknown",
    ),
    Case(
        "sid-of-another-users-session",
        bearer(lambda tw: signed(tw, sid=tw.session_id("tok.victim"))),
        "session_unknown",
    ),
    Case("tampered-sub-keeping-signature", bearer(tampered_sub), "bad_token"),
    Case(
        "unknown-kid-fresh-key",
        bearer(lambda tw: es256(claims(tw), fresh_p256_pem(), "0123456789abcdef")),
        "bad_token",
    ),
    Case(
        "our-kid-other-key",
        bearer(lambda tw: es256(claims(tw), fresh_p256_pem(), tw.kid)),
        "bad_token",
    ),
    Case(
        "no-kid",
        bearer(lambda tw: jwt.encode(claims(tw), tw.private_pem.decode(), "ES256")),
        "bad_token",
    ),
    Case(
        "deleted-user-random-sub",
        bearer(lambda tw: signed(tw, sub=secrets.token_hex(16))),
        "user_unknown",
    ),
    Case("disabled-user", bearer(disabled_user), "user_disabled"),
    Case("garbage", lambda tw: "Bearer garbage", "bad_token"),
    Case("garbage-three-dots", lambda tw: "Bearer a.b.c", "bad_token"),
    Case("only-dots", lambda tw: "Bearer ..", "bad_token"),
    Case("two-segments", bearer(lambda tw: ".".join(signed(tw).split(".")[:2])), "bad_token"),
    Case("four-segments", bearer(lambda tw: signed(tw) + "." + b64url(b"extra")), "bad_token"),
    Case("over-4096-characters", bearer(lambda tw: signed(tw, pad="x" * 5000)), "bad_token"),
    Case("no-authorization-header", lambda tw: None, None),
    Case("basic-scheme", lambda tw: "Basic " + base64.b64encode(b"kz.officer:x").decode(), None),
    Case("basic-scheme-with-a-good-token", lambda tw: f"Basic {signed(tw)}", None),
    Case("bearer-without-token", lambda tw: "Bearer", None),
]


# --- helpers ----------------------------------------------------------------------------------


def ledger_entry(vault: Vault, seq: int) -> Entry:
    found = vault.unscoped_entries(seq, seq + 1)
    assert found, f"no ledger entry #{seq}"
    return found[0]


def assert_401(reply: Any) -> dict[str, Any]:
    assert reply.status_code == 401, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers.get("WWW-Authenticate") == "Bearer"
    body: dict[str, Any] = reply.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "receipt"}
    assert body["error"]["code"] == "authentication_failed"
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert "Traceback" not in reply.text
    error: dict[str, Any] = body["error"]
    return error


# --- tests --------------------------------------------------------------------------------------


def test_control_a_token_made_like_the_forgeries_but_honest_is_accepted(tw: TokenWorld) -> None:
    """The helpers make tokens the server accepts; each case below changes one thing."""
    reply = tw.client.get(ROUTE, headers={"Authorization": f"Bearer {signed(tw)}"})
    assert reply.status_code == 200, reply.text
    login = tw.client.post("/auth/login", json={"username": "kz.officer", "password": PASSWORD})
    real = login.json()["access_token"]
    assert jwt.get_unverified_header(real)["kid"] == tw.kid
    reply = tw.client.get(ROUTE, headers={"Authorization": f"bearer {real}"})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_credentials_are_401(case: Case, tw: TokenWorld) -> None:
    value = case.header(tw)
    headers = {"Authorization": value} if value is not None else {}
    error = assert_401(tw.client.get(ROUTE, headers=headers))
    if case.reason is None:
        return  # nothing was presented to check; there is no token to record
    # One message for every failed check, so a caller can't probe which one failed.
    assert error["message"] == GENERIC
    receipt = error["receipt"]
    assert isinstance(receipt, int), "a refused token must be recorded in the ledger"
    entry = ledger_entry(tw.vault, receipt)
    assert (entry.action, entry.decision, entry.reason) == ("authenticate", "deny", case.reason)
    expected_actor = {"user_disabled": "tok.disabled", "session_unknown": "kz.officer"}.get(
        case.reason, ""
    )
    assert entry.actor_user == expected_actor
    assert entry.package == ""


def test_iat_in_the_future_beyond_leeway_is_401(tw: TokenWorld) -> None:
    token = signed(tw, iat=FUTURE)
    error = assert_401(tw.client.get(ROUTE, headers={"Authorization": f"Bearer {token}"}))
    assert error["message"] == GENERIC


def test_a_disabled_users_token_stops_working_on_the_next_request(tw: TokenWorld) -> None:
    info = tw.vault.add_user(
        local_operator(),
        username="tok.later",
        agency="TJ-CUSTOMS",
        role=Role.OFFICER,
        password=PASSWORD,
    )
    login = tw.client.post("/auth/login", json={"username": "tok.later", "password": PASSWORD})
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    assert tw.client.get(ROUTE, headers=headers).status_code == 200
    tw.vault.set_user(local_operator(), "tok.later", disabled=True)
    error = assert_401(tw.client.get(ROUTE, headers=headers))
    entry = ledger_entry(tw.vault, error["receipt"])
    assert (entry.action, entry.decision, entry.reason, entry.actor_user) == (
        "authenticate",
        "deny",
        "user_disabled",
        "tok.later",
    )
    # and the disabled user can't get a new token either
    login = tw.client.post("/auth/login", json={"username": "tok.later", "password": PASSWORD})
    assert login.status_code == 401
    assert info.id  # the user still exists: this is not the "deleted user" case
