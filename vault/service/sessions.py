"""Sessions: starting one, the tokens a client gets for it, and ending them. Shared by the
identity service (login, refresh, password change) and administration (disabling a user)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete as sa_delete
from sqlmodel import Session, col, select

from vault.ledger.log import Actor
from vault.models import User, UserSession
from vault.schemas import LoginResult
from vault.service._core import ALLOW, Core, new_id
from vault.tokens import new_refresh_token, refresh_token_hash, session_reference


class Sessions:
    """Start and end sessions inside the caller's transaction, recording each end."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def start(self, session: Session, user_id: str, now: datetime) -> tuple[UserSession, str]:
        """A new session of ``user_id`` and its first refresh token (only its hash is stored).

        The user's sessions past their absolute lifetime go at the same time: nothing of them
        can be used any more, and the ledger keeps their story.
        """
        session.execute(
            sa_delete(UserSession).where(
                col(UserSession.user_id) == user_id, col(UserSession.expires_at) < now
            )
        )
        settings = self.core.settings
        expires = now + timedelta(seconds=settings.session_max_seconds)
        started = UserSession(
            id=new_id(),
            user_id=user_id,
            created_at=now,
            refreshed_at=now,
            idle_expires_at=min(now + timedelta(seconds=settings.session_idle_seconds), expires),
            expires_at=expires,
            refresh_hash=b"",
        )
        refresh_token = new_refresh_token(started.id)
        started.refresh_hash = refresh_token_hash(refresh_token)
        session.add(started)
        session.flush()
        return started, refresh_token

    def tokens_for(self, row: UserSession, refresh_token: str, receipt: int) -> LoginResult:
        """What a client gets for a session it may use: a new access token and refresh token."""
        since = row.refreshed_at
        tokens = self.core.tokens
        return LoginResult(
            access_token=tokens.issue(row.user_id, session_id=row.id),
            expires_in=tokens.ttl_seconds,
            receipt=receipt,
            refresh_token=refresh_token,
            refresh_expires_in=int((row.idle_expires_at - since).total_seconds()),
            session_expires_in=int((row.expires_at - since).total_seconds()),
        )

    def end_all(
        self,
        session: Session,
        actor: Actor,
        user: User,
        reason: str,
        now: datetime,
        *,
        only: str | None = None,
    ) -> int:
        """End every live session of ``user`` (or just session ``only``) in ``session``'s
        transaction, recording one ledger entry each (by ``actor``, for ``reason``); returns
        how many."""
        query = select(UserSession).where(
            col(UserSession.user_id) == user.id,
            col(UserSession.revoked_at).is_(None),
            col(UserSession.expires_at) > now,
        )
        if only is not None:
            query = query.where(col(UserSession.id) == only)
        rows = session.exec(query.with_for_update()).all()
        for row in rows:
            row.revoked_at = now
            row.revoked_reason = reason
            session.add(row)
            self.core.record_in(
                session,
                actor=actor,
                action="end-session",
                decision=ALLOW,
                reason=reason,
                subject=f"user:{user.username} {session_reference(row.id)}",
            )
        session.flush()
        return len(rows)
