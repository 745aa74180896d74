"""Access tokens: the one module that touches python-jose.

Tokens are ES256 JWTs. Verification pins the algorithm list to ES256, looks the key up by
``kid`` among keys we hold (never a key named by the token), and requires exp, iat, nbf, sub,
aud and iss, and ``sid``: the server-side session the token belongs to, checked on every
request so logout and revocation take effect at once (a token without one could not be
revoked, so it is refused). Every failure is the same AuthenticationFailed, so a caller can't
probe which check failed.

Refresh tokens are not JWTs: ``<session id>.<32 random bytes, base64url>``, opaque to the
client; the server keeps only their SHA-256 (:func:`refresh_token_hash`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from jose import jwt
from jose.exceptions import JOSEError

from vault.errors import AuthenticationFailed

__all__ = [
    "ALGORITHMS",
    "TokenClaims",
    "TokenService",
    "key_id",
    "new_refresh_token",
    "refresh_session_id",
    "refresh_token_hash",
    "session_reference",
]

ALGORITHMS = ["ES256"]
_REQUIRED = ("exp", "iat", "nbf", "sub", "aud", "iss")
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
# 32 random bytes in unpadded base64url.
_REFRESH_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
_LEEWAY_SECONDS = 5
_CACHE_SIZE = 10_000


def key_id(public_pem: bytes) -> str:
    """Key id of a public key: a hash of its DER encoding, so a kid can't name another key."""
    der = serialization.load_pem_public_key(public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


@dataclass(frozen=True)
class TokenClaims:
    """The verified claims the vault uses."""

    subject: str
    issued_at: int
    expires_at: int
    token_id: str
    session_id: str


class TokenService:
    """Issues and verifies the vault's access tokens."""

    def __init__(
        self,
        *,
        private_pem: bytes,
        public_pems: list[bytes],
        issuer: str,
        audience: str,
        ttl_seconds: int,
    ) -> None:
        self._private_pem = private_pem.decode()
        self._public = {key_id(pem): pem.decode() for pem in public_pems}
        self._kid = key_id(public_pems[0])
        self._issuer = issuer
        self._audience = audience
        self.ttl_seconds = ttl_seconds
        self._verified: dict[str, TokenClaims] = {}

    def issue(self, subject: str, *, session_id: str, now: int | None = None) -> str:
        """A signed token for ``subject`` in session ``session_id``, valid for the configured
        lifetime; ValueError for a malformed session id."""
        if not _SESSION_ID.fullmatch(session_id):
            raise ValueError("session ids are 32 lowercase hex characters")
        issued = int(time.time()) if now is None else now
        claims = {
            "sub": subject,
            "sid": session_id,
            "iss": self._issuer,
            "aud": self._audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + self.ttl_seconds,
            "jti": secrets.token_hex(16),
        }
        token: str = jwt.encode(
            claims, self._private_pem, algorithm="ES256", headers={"kid": self._kid}
        )
        return token

    def verify(self, token: str) -> TokenClaims:
        """Verify signature, algorithm, key id and every required claim.

        A token that verified once is remembered until it expires (tokens are immutable), so
        the ECDSA check runs once per token rather than once per request.
        """
        failed = AuthenticationFailed("invalid or expired token")
        if not isinstance(token, str) or len(token) > 4096 or token.count(".") != 2:
            raise failed
        known = self._verified.get(token)
        if known is not None:
            if known.expires_at + _LEEWAY_SECONDS < time.time():
                self._verified.pop(token, None)
                raise failed
            return known
        claims = self._verify_uncached(token, failed)
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.clear()  # crude but bounded; a miss only costs one verification
        self._verified[token] = claims
        return claims

    def _verify_uncached(self, token: str, failed: AuthenticationFailed) -> TokenClaims:
        try:
            header: dict[str, Any] = jwt.get_unverified_header(token)
        except JOSEError:
            raise failed from None
        key = self._public.get(str(header.get("kid", "")))
        if key is None or header.get("alg") not in ALGORITHMS:
            raise failed
        options: dict[str, bool | int] = {f"require_{name}": True for name in _REQUIRED}
        options |= {
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "leeway": _LEEWAY_SECONDS,
        }
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options=options,
            )
        except (JOSEError, ValueError, TypeError):
            raise failed from None
        sub, iat, exp = claims.get("sub"), claims.get("iat"), claims.get("exp")
        if not isinstance(sub, str) or not isinstance(iat, int) or not isinstance(exp, int):
            raise failed
        # Tokens from before sessions existed have no sid: nothing could revoke them.
        sid = claims.get("sid")
        if not isinstance(sid, str) or not _SESSION_ID.fullmatch(sid):
            raise failed
        # python-jose only checks that iat is a number; a token "issued" in the future is forged
        # or from a skewed clock, and would outlive its TTL.
        if iat > time.time() + _LEEWAY_SECONDS or exp - iat > self.ttl_seconds + _LEEWAY_SECONDS:
            raise failed
        return TokenClaims(
            subject=sub,
            issued_at=iat,
            expires_at=exp,
            token_id=str(claims.get("jti", "")),
            session_id=sid,
        )


def new_refresh_token(session_id: str) -> str:
    """A fresh refresh token for ``session_id``: the id, a dot, 256 random bits."""
    return f"{session_id}.{secrets.token_urlsafe(32)}"


def refresh_token_hash(token: str) -> bytes:
    """What the server stores of a refresh token: its SHA-256 (the token has 256 random bits,
    so no salt or slow hash is needed)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def refresh_session_id(token: object) -> str | None:
    """The session a well-formed refresh token names; None for anything else."""
    if not isinstance(token, str) or len(token) != 32 + 1 + 43:
        return None
    session_id, _, secret = token.partition(".")
    if not _SESSION_ID.fullmatch(session_id) or not _REFRESH_SECRET.fullmatch(secret):
        return None
    return session_id


def session_reference(session_id: str) -> str:
    """How the ledger names a session: a hash of its id, never the id itself.

    Entries link one session's login, refreshes and end, but an entry's reader can't use it:
    a session id together with a guessed refresh token would be enough to end the session.
    """
    digest = hashlib.sha256(b"blo-vault/session/v1\x00" + session_id.encode()).hexdigest()
    return f"session:{digest[:16]}"
