"""Officers' signing keys (issue 13): register, revoke, show, and the key history of a user.

Every registration and revocation is a ledger entry written in the same transaction as the
key's row (conventions in :mod:`vault.ledger.entry`): ``key.register`` / ``key.revoke``, the
key's owner in ``subject``, and in ``reason`` "ed25519 KEYID PUBLICKEY AGENCY" (the key id,
the base64 public key and the owner's agency; a revocation leaves the public key as "-").
A key the operator slips in for an officer is therefore in the ledger for the officer to see
(``blovault keys audit`` asks :meth:`OfficerKeyService.history`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator

from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlmodel import Session, col, select

from vault import crypto, manifest
from vault.errors import AccessDenied, Conflict, InvalidInput, NotFound
from vault.ledger import log as ledger
from vault.ledger.entry import decode
from vault.models import OfficerKey, Role, User, utcnow
from vault.schemas import InclusionProof, KeyHistory, OfficerKeyInfo, check_id
from vault.service._core import ALLOW, Core, Principal
from vault.service.ledger_ops import LedgerService
from vault.service.refusals import records_refusals
from vault.witness import published

__all__ = ["OfficerKeyService", "active_key", "key_entry_reason"]

# Cheap test before decoding an entry: every key entry holds this action name.
_KEY_ACTION = b"key."


def key_entry_reason(key_id: str, public_key: bytes | None, agency: str) -> str:
    """The ``reason`` field of a key entry (see the module docstring)."""
    shown = base64.b64encode(public_key).decode() if public_key is not None else "-"
    return f"ed25519 {key_id} {shown} {agency}"


def _public_key_from(text: str) -> bytes:
    """32 raw bytes of an Ed25519 public key given as base64; InvalidInput otherwise."""
    try:
        raw = base64.b64decode(text, validate=True)
        crypto.ed25519_public_key(raw)
    except (binascii.Error, ValueError):
        raise InvalidInput("public key must be the base64 of a 32-byte Ed25519 key") from None
    return raw


def active_key(session: Session, user_id: str) -> OfficerKey | None:
    """The user's unrevoked key, if any."""
    return session.exec(
        select(OfficerKey).where(
            OfficerKey.user_id == user_id, col(OfficerKey.revoked_at).is_(None)
        )
    ).first()


class OfficerKeyService:
    """Register, revoke and show officers' keys; list a user's key entries from the ledger."""

    def __init__(self, core: Core, ledger_ops: LedgerService) -> None:
        self.core = core
        self.ledger = ledger_ops

    def _owner(self, session: Session, principal: Principal, username: str | None) -> User:
        """The key's owner: the caller, or (an operator's admin command) the named user."""
        if username is None or username == principal.username:
            user = session.get(User, principal.user_id)
        else:
            if principal.role is not Role.ADMIN:
                raise AccessDenied("only your own keys")
            user = session.exec(select(User).where(User.username == username)).first()
        if user is None:
            raise NotFound("user not found")
        return user

    @records_refusals("key.register")
    def register(
        self, principal: Principal, public_key: str, *, owner: str | None = None
    ) -> OfficerKeyInfo:
        """Register an Ed25519 public key for the caller (or, run by the operator, ``owner``);
        Conflict if the owner has an active key or the key was registered before."""
        if owner is None:
            self.core.require_global(principal, "key.register")
        raw = _public_key_from(public_key)
        key_id = manifest.key_id(raw)
        try:
            with self.core.tx() as session:
                user = self._owner(session, principal, owner)
                if (current := active_key(session, user.id)) is not None:
                    raise Conflict(f"an active key ({current.id}) exists; revoke it first")
                if session.get(OfficerKey, key_id) is not None:
                    raise Conflict("this key was registered before; create a new one")
                seq = self.core.record_in(
                    session,
                    actor=principal.actor,
                    action="key.register",
                    decision=ALLOW,
                    reason=key_entry_reason(key_id, raw, user.agency_code),
                    subject=user.username,
                )
                row = OfficerKey(
                    id=key_id,
                    user_id=user.id,
                    public_key=raw,
                    created_at=utcnow(),
                    registered_seq=seq,
                )
                session.add(row)
                session.flush()
                return _info(row, user)
        except DbIntegrityError:  # a concurrent registration won the one-active-key index
            raise Conflict("an active key exists; revoke it first") from None

    @records_refusals("key.revoke")
    def revoke(
        self, principal: Principal, key_id: str, *, owner: str | None = None
    ) -> OfficerKeyInfo:
        """Revoke the caller's key ``key_id`` (or ``owner``'s, run by the operator); NotFound
        for a key that is not theirs, Conflict if already revoked."""
        check_id(key_id, "key id")
        if owner is None:
            self.core.require_global(principal, "key.revoke")
        with self.core.tx() as session:
            user = self._owner(session, principal, owner)
            row = session.get(OfficerKey, key_id)
            if row is None or row.user_id != user.id:
                raise NotFound("key not found")
            if row.revoked_at is not None:
                raise Conflict("this key is already revoked")
            row.revoked_seq = self.core.record_in(
                session,
                actor=principal.actor,
                action="key.revoke",
                decision=ALLOW,
                reason=key_entry_reason(row.id, None, user.agency_code),
                subject=user.username,
            )
            row.revoked_at = utcnow()
            session.add(row)
            session.flush()
            return _info(row, user)

    @records_refusals("key.read")
    def show(self, principal: Principal, key_id: str) -> OfficerKeyInfo:
        """A registered key with the inclusion proof of its registration entry. Keys are
        public (they are in the ledger), so any caller allowed ``key.read`` may look one up."""
        check_id(key_id, "key id")
        self.core.require_global(principal, "key.read")
        with self.core.tx(readonly=True) as session:
            row = session.get(OfficerKey, key_id)
            user = session.get(User, row.user_id) if row is not None else None
        if row is None or user is None:
            raise NotFound("key not found")
        receipt = self.core.record_decision(
            principal.actor, "key.read", ALLOW, "ok", subject=f"key:{key_id}"
        )
        proof = self.ledger.prove_entry(row.registered_seq)
        witnessed = self._witnessed_proof(row.registered_seq)
        return _info(row, user).model_copy(
            update={"proof": proof, "witnessed_proof": witnessed, "receipt": receipt}
        )

    def _witnessed_proof(self, seq: int) -> str | None:
        """Entry ``seq``'s tlog-proof bundle up to the newest witnessed checkpoint; None while
        nothing witnessed covers it (the key's show is recorded already: no entry of its own)."""
        with self.core.tx(readonly=True) as session:
            try:
                bundle, _ = published.tlog_proof(
                    session, seq, self.ledger.verifier, self.core.settings.ledger_origin
                )
            except NotFound:
                return None
        return bundle

    @records_refusals("key.read")
    def history(self, principal: Principal, username: str | None = None) -> KeyHistory:
        """Every key entry of ``username`` (default: the caller) in the ledger, each with its
        inclusion proof. Allowed for the user themself and for an auditor of their agency;
        any other user is NotFound, as if absent."""
        self.core.require_global(principal, "key.read")
        name = username or principal.username
        with self.core.tx(readonly=True) as session:
            user = session.exec(select(User).where(User.username == name)).first()
            visible = user is not None and (
                user.id == principal.user_id
                or (principal.role is Role.AUDITOR and user.agency_code == principal.agency)
            )
            if not visible:
                raise NotFound("user not found")
            found = list(self._key_entries(session, name))
        receipt = self.core.record_decision(
            principal.actor, "key.read", ALLOW, "ok", subject=f"history:{name}"
        )
        proofs: list[InclusionProof] = [self.ledger.prove_entry(seq) for seq in found]
        return KeyHistory(username=name, entries=proofs, receipt=receipt)

    @staticmethod
    def _key_entries(session: Session, username: str) -> Iterator[int]:
        """Sequence numbers of the key.* entries naming ``username``, read from the ledger
        itself (not the key table, which the operator could edit unseen). A full scan: key
        audits are rare, and the ledger's entries are not indexed by action."""
        for seq, data in ledger.iter_entries(session):
            if _KEY_ACTION in data:
                entry = decode(data)
                if entry.action.startswith("key.") and entry.subject == username:
                    yield seq


def _info(row: OfficerKey, user: User) -> OfficerKeyInfo:
    return OfficerKeyInfo(
        id=row.id,
        username=user.username,
        agency=user.agency_code,
        public_key=base64.b64encode(row.public_key).decode(),
        created_at=row.created_at,
        registered_seq=row.registered_seq,
        revoked_at=row.revoked_at,
        revoked_seq=row.revoked_seq,
    )
