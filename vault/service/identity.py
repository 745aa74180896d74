"""Who a caller is: login and its throttling, token authentication, refresh, logout and
password changes. Every attempt, allowed or refused, is in the ledger; no password ever is."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import and_, bindparam, delete, or_, text
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from vault import crypto
from vault.errors import AccessDenied, AuthenticationFailed, InvalidInput, RateLimited
from vault.ledger.log import Actor
from vault.models import Agency, LoginThrottle, User, UserSession, utcnow
from vault.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from vault.prepared import Prepared
from vault.schemas import USERNAME, LoginResult
from vault.service._core import (
    ALLOW,
    DENY,
    Core,
    Principal,
    UserRow,
    principal_of,
    utc_seconds_until,
)
from vault.service.sessions import Sessions
from vault.tokens import (
    new_refresh_token,
    refresh_session_id,
    refresh_token_hash,
    session_reference,
)

# Who a token's subject is, now, and whether the token's session is still alive: read on every
# request in one round trip, so disabling a user, changing their role or clearance, or ending
# their session takes effect at once. The session columns are NULL when the token's session
# does not exist or belongs to someone else.
_PRINCIPAL = Prepared(
    sa_select(
        col(User.id),
        col(User.username),
        col(User.agency_code),
        col(User.role),
        col(User.clearance),
        col(User.disabled),
        col(Agency.country_code),
        col(UserSession.revoked_at),
        col(UserSession.idle_expires_at),
        col(UserSession.expires_at),
    )
    .join(Agency, col(Agency.code) == col(User.agency_code))
    .outerjoin(
        UserSession,
        and_(
            col(UserSession.id) == bindparam("sid"),
            col(UserSession.user_id) == col(User.id),
        ),
    )
    .where(col(User.id) == bindparam("uid"))
)

_PG_THROTTLE_LOCK = 0x424C4F54  # "BLOT"


def _session_problem(
    revoked_at: datetime | None,
    idle_expires_at: datetime | None,
    expires_at: datetime | None,
    now: datetime,
) -> str | None:
    """Why a session is dead (a ledger reason), or None while it is alive."""
    if expires_at is None or idle_expires_at is None:
        return "session_unknown"
    if revoked_at is not None:
        return "session_revoked"
    if now >= expires_at:
        return "session_expired"
    if now >= idle_expires_at:
        return "session_idle"
    return None


def _lock_throttle(session: Session) -> None:
    """Serialise login bookkeeping (SQLite's BEGIN IMMEDIATE already does)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:k, hashtext(current_schema()))"),
            {"k": _PG_THROTTLE_LOCK},
        )


def _active_locks(session: Session, keys: list[str], now: datetime) -> list[datetime]:
    """Until when each of ``keys`` that is locked out now stays locked."""
    return [
        row.locked_until
        for key in keys
        if (row := session.get(LoginThrottle, key)) is not None
        and row.locked_until is not None
        and row.locked_until > now
    ]


def _forgotten(row: LoginThrottle, now: datetime, window: timedelta) -> bool:
    """Whether ``row``'s failures are older than the window, with no lockout of it running."""
    return (row.last_failure is None or row.last_failure <= now - window) and (
        row.locked_until is None or row.locked_until <= now
    )


def _prune_throttle(session: Session, now: datetime, window: timedelta) -> None:
    """Drop the rows :func:`_forgotten` would ignore anyway."""
    session.execute(
        delete(LoginThrottle).where(
            or_(
                col(LoginThrottle.last_failure).is_(None),
                col(LoginThrottle.last_failure) <= now - window,
            ),
            or_(col(LoginThrottle.locked_until).is_(None), col(LoginThrottle.locked_until) <= now),
        )
    )


# How often one process prunes the throttle table: each prune scans it (no index on the
# times; pruning keeps it to about one window's names).
_PRUNE_EVERY = timedelta(minutes=1)


class IdentityService:
    """Login, authentication, refresh, logout and password changes."""

    def __init__(self, core: Core, sessions: Sessions) -> None:
        self.core = core
        self.sessions = sessions
        self._next_prune = datetime.min.replace(tzinfo=UTC)

    def login(self, username: str, password: str, *, client: str = "") -> LoginResult:
        """Check a password and start a session: an access token and a refresh token.

        Wrong password and unknown user look alike, in answer and in time (a dummy hash is
        checked), and both count towards lockout of the username and of the client address:
        after ``login_failures_per_*`` failures each further attempt is refused unchecked for
        a back-off that doubles with each failure. Every refusal is in the ledger.
        """
        core = self.core
        name = username[:64] if isinstance(username, str) else ""
        keys = [self._user_throttle_key(name)] + ([f"addr:{client[:64]}"] if client else [])
        now = utcnow()
        with core.tx() as session:
            # The attempt counts as a failure before the password is checked (a success
            # resets it), under a lock: concurrent guesses can't all slip in before the
            # first failure is on record.
            locks = self._count_attempt(session, keys, now)
            user = (
                session.exec(select(User).where(User.username == name)).first()
                if USERNAME.fullmatch(name)
                else None
            )
        # A name no account has may be a password typed into the wrong field: the ledger,
        # which keeps everything forever, gets only a keyed hash of it. The same name always
        # gives the same hash, so repeated attempts still correlate.
        actor = Actor(user=name if user is not None else self._pseudonym(name))
        if locks:
            wait = utc_seconds_until(max(locks), now)
            raise core.refusals.refuse(
                RateLimited(f"too many failed logins; try again in {wait} s", retry_after=wait),
                actor,
                "login",
                "rate_limited",
                client=client,
            )
        ok = core.passwords.verify(user.password_hash if user else None, password)
        if user is None or not ok or user.disabled:
            raise core.refusals.refuse(
                AuthenticationFailed("unknown user or wrong password"),
                actor,
                "login",
                "bad_credentials",
                client=client,
            )
        with core.tx() as session:
            principal = core.principal_for(session, user)
            started, refresh_token = self.sessions.start(session, user.id, utcnow())
            receipt = core.record_in(
                session,
                actor=principal.actor,
                action="login",
                decision=ALLOW,
                reason="ok",
                subject=session_reference(started.id),
            )
            for key in keys:
                row = session.get(LoginThrottle, key)
                if row is not None:
                    session.delete(row)
        return self.sessions.tokens_for(started, refresh_token, receipt)

    @property
    def _failure_window(self) -> timedelta:
        return timedelta(seconds=self.core.settings.login_failure_window_seconds)

    def _pseudonym(self, name: str) -> str:
        """How the ledger names a username that no account has."""
        return "unknown:" + self._name_digest(name)

    def _user_throttle_key(self, username: str) -> str:
        """The lockout key of a username: any string works (PostgreSQL text refuses NUL), and
        the table holds no usernames. Keyed, as the ledger's pseudonyms are: a password typed
        into the name field stays there until that name signs in, and an unkeyed hash of it
        in a stolen backup falls to a dictionary."""
        return "user:" + self._name_digest(username[:64])

    def _name_digest(self, name: str) -> str:
        raw = name.encode("utf-8", "surrogatepass")
        return crypto.keyed_digest(self.core.keys.pseudonym_key, raw)[:32]

    def _count_attempt(self, session: Session, keys: list[str], now: datetime) -> list[datetime]:
        """Until when each of ``keys`` is locked out now; if none is, count this attempt as a
        failure of each. Under the throttle lock, so concurrent guesses can't all slip in
        before the first failure is on record."""
        _lock_throttle(session)
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_EVERY
            _prune_throttle(session, now, self._failure_window)
        locks = _active_locks(session, keys, now)
        if not locks:
            self._count_failure(session, keys, now)
        return locks

    def _count_failure(self, session: Session, keys: list[str], now: datetime) -> None:
        """One more failure for each key; lock it once it reaches its threshold (runs under
        the throttle lock, so concurrent attempts can't race on the same row)."""
        settings = self.core.settings
        for key in keys:
            threshold = (
                settings.login_failures_per_user
                if key.startswith("user:")
                else settings.login_failures_per_address
            )
            row = session.get(LoginThrottle, key) or LoginThrottle(key=key, failures=0)
            if _forgotten(row, now, self._failure_window):
                row.failures, row.locked_until = 0, None
            row.failures += 1
            row.last_failure = now
            if row.failures >= threshold:
                seconds = min(
                    settings.lockout_max_seconds,
                    settings.lockout_base_seconds * 2 ** min(row.failures - threshold, 20),
                )
                row.locked_until = now + timedelta(seconds=seconds)
            session.add(row)

    def authenticate(
        self, token: str, *, client: str = "", now: datetime | None = None
    ) -> Principal:
        """The caller a token speaks for; AuthenticationFailed if the token is invalid, its
        user gone or disabled, or its session ended (logout, revocation, idle or absolute
        timeout). ``client`` is the caller's address, for the budget of refusals' entries.
        ``now`` is for tests; the token's own times are checked against the clock."""
        core = self.core
        try:
            claims = core.tokens.verify(token)
        except AuthenticationFailed as exc:
            raise core.refusals.refuse(
                exc, Actor(user=""), "authenticate", "bad_token", client=client
            ) from None
        with core.lookup() as connection:
            user = _PRINCIPAL.first(connection, {"uid": claims.subject, "sid": claims.session_id})
        if user is None or user.disabled:
            raise core.refusals.refuse(
                AuthenticationFailed("invalid or expired token"),
                Actor(user=user.username if user else ""),
                "authenticate",
                "user_disabled" if user else "user_unknown",
                client=client,
            )
        problem = _session_problem(
            user.revoked_at, user.idle_expires_at, user.expires_at, now or utcnow()
        )
        if problem is not None:
            raise core.refusals.refuse(
                AuthenticationFailed("invalid or expired token"),
                Actor(user=user.username, agency=user.agency_code, country=user.country_code),
                "authenticate",
                problem,
                client=client,
                subject=session_reference(claims.session_id),
            )
        return principal_of(cast(UserRow, user), user.country_code, claims.session_id)

    @contextlib.contextmanager
    def reading_as(self, token: str, *, client: str = "") -> Iterator[Principal]:
        """Authenticate ``token`` in a read-only transaction that the reads made inside the
        block, in this thread, share (Core.read; Core.tx joins it): a request's lookup of its
        caller and its read then cost one transaction, and see one snapshot, on a plain
        connection (no ORM session). Refusals raised inside are recorded once it has ended,
        as for any transaction."""
        with self.core.read():
            yield self.authenticate(token, client=client)

    def refresh(
        self, refresh_token: str, *, client: str = "", now: datetime | None = None
    ) -> LoginResult:
        """A new access token and a new refresh token for a live session; the one presented
        is spent.

        AuthenticationFailed (recorded) if the token is malformed or unknown, or its session
        has ended, timed out (idle or absolute) or its user was disabled. Presenting a
        refresh token that was already spent is taken as theft (RFC 9700, section 4.14.2):
        one of two holders is not the officer, so the whole session ends, for both.
        ``client`` is the caller's address (see :meth:`authenticate`); ``now`` is for tests.
        """
        core = self.core
        now = now or utcnow()
        refused = "invalid or expired refresh token; log in again"
        session_id = refresh_session_id(refresh_token)
        if session_id is None:
            raise core.refusals.refuse(
                AuthenticationFailed(refused),
                Actor(user=""),
                "refresh",
                "bad_refresh_token",
                client=client,
            )
        reference = session_reference(session_id)
        presented = refresh_token_hash(refresh_token)
        receipt: int | None = None
        problem: str | None = None
        with core.tx() as session:
            found = session.exec(
                select(UserSession, User)
                .join(User, col(User.id) == col(UserSession.user_id))
                .where(col(UserSession.id) == session_id)
                .with_for_update()
            ).first()
            if found is None:
                actor, problem = Actor(user=""), "session_unknown"
            else:
                row, user = found
                actor = core.principal_for(session, user).actor
                problem = "user_disabled" if user.disabled else None
                if problem is None and row.revoked_at is not None:
                    problem = "session_revoked"
                if problem is None and not crypto.constant_time_equal(row.refresh_hash, presented):
                    # Committed before the refusal is raised: the session must stay ended.
                    problem = "refresh_reused"
                    receipt = core.record_in(
                        session,
                        actor=actor,
                        action="refresh",
                        decision=DENY,
                        reason=problem,
                        subject=reference,
                    )
                    self.sessions.end_all(session, actor, user, problem, now, only=row.id)
                if problem is None:
                    problem = _session_problem(None, row.idle_expires_at, row.expires_at, now)
                if problem is None:
                    return self._renew(session, row, actor, reference, now)
        assert problem is not None  # the one way through without a problem returned above
        if receipt is not None:  # a spent token: recorded with the session's end
            raise AuthenticationFailed(refused, receipt=receipt)
        raise core.refusals.refuse(
            AuthenticationFailed(refused),
            actor,
            "refresh",
            problem,
            client=client,
            subject=reference,
        )

    def _renew(
        self, session: Session, row: UserSession, actor: Actor, reference: str, now: datetime
    ) -> LoginResult:
        """Spend a live session's refresh token for a new one, in ``session``'s transaction."""
        refresh_token = new_refresh_token(row.id)
        row.refresh_hash = refresh_token_hash(refresh_token)
        row.refreshed_at = now
        row.idle_expires_at = min(
            now + timedelta(seconds=self.core.settings.session_idle_seconds),
            row.expires_at,
        )
        session.add(row)
        receipt = self.core.record_in(
            session,
            actor=actor,
            action="refresh",
            decision=ALLOW,
            reason="ok",
            subject=reference,
        )
        return self.sessions.tokens_for(row, refresh_token, receipt)

    def logout(self, principal: Principal) -> int:
        """End the caller's session: its access and refresh tokens are refused from the next
        request on. Returns the ledger receipt."""
        now = utcnow()
        reference = session_reference(principal.session_id)
        with self.core.tx() as session:
            row = session.get(UserSession, principal.session_id, with_for_update=True)
            if row is None or row.user_id != principal.user_id or row.revoked_at is not None:
                # authenticate() has just found it alive: only a concurrent logout gets here.
                raise self.core.record_refusal(
                    AuthenticationFailed("invalid or expired token"),
                    principal.actor,
                    "logout",
                    "session_revoked",
                    subject=reference,
                )
            row.revoked_at = now
            row.revoked_reason = "logout"
            session.add(row)
            return self.core.record_in(
                session,
                actor=principal.actor,
                action="logout",
                decision=ALLOW,
                reason="ok",
                subject=reference,
            )

    def change_password(
        self, principal: Principal, current_password: str, new_password: str
    ) -> LoginResult:
        """Change the caller's own password and end every session of theirs; returns a new
        session for the caller.

        A wrong current password is refused with AccessDenied and counts towards the login
        lockout of the username, like a failed login (so a stolen session can't be used to
        guess the password); while locked out, the change is refused unchecked (RateLimited).
        Every attempt is recorded, never a password.
        """
        actor = principal.actor
        subject = f"user:{principal.username}"
        problem: str | None = None
        if not MIN_PASSWORD_LENGTH <= len(new_password) <= MAX_PASSWORD_LENGTH:
            problem = f"passwords must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
        elif crypto.constant_time_equal(
            current_password.encode("utf-8", "surrogatepass"),
            new_password.encode("utf-8", "surrogatepass"),
        ):
            problem = "the new password must differ from the current one"
        if problem is not None:
            raise self.core.record_refusal(
                InvalidInput(problem), actor, "password", "invalid_password", subject=subject
            )
        self._check_current_password(principal, current_password)
        return self._replace_password(principal, self.core.passwords.hash(new_password))

    def _check_current_password(self, principal: Principal, current_password: str) -> None:
        """Refuse (and count, as a failed login) a wrong current password; refuse unchecked
        while the username is locked out."""
        core = self.core
        actor, subject = principal.actor, f"user:{principal.username}"
        key = self._user_throttle_key(principal.username)
        now = utcnow()
        with core.tx() as session:
            # As in login: counted as a failure before the check, under the lock.
            locks = self._count_attempt(session, [key], now)
            user = session.get(User, principal.user_id)
        if locks:
            wait = utc_seconds_until(max(locks), now)
            raise core.record_refusal(
                RateLimited(f"too many failed attempts; try again in {wait} s", retry_after=wait),
                actor,
                "password",
                "rate_limited",
                subject=subject,
            )
        if not core.passwords.verify(user.password_hash if user else None, current_password):
            raise core.record_refusal(
                AccessDenied("the current password is wrong"),
                actor,
                "password",
                "bad_credentials",
                subject=subject,
            )

    def _replace_password(self, principal: Principal, new_hash: str) -> LoginResult:
        """Store the new password hash, end the caller's sessions and start a new one."""
        core = self.core
        actor, subject = principal.actor, f"user:{principal.username}"
        now = utcnow()
        with core.tx() as session:
            user = session.get(User, principal.user_id, with_for_update=True)
            if user is None or user.disabled:
                raise core.record_refusal(
                    AuthenticationFailed("invalid or expired token"),
                    actor,
                    "password",
                    "user_disabled",
                    subject=subject,
                )
            user.password_hash = new_hash
            session.add(user)
            throttle = session.get(LoginThrottle, self._user_throttle_key(principal.username))
            if throttle is not None:
                session.delete(throttle)
            core.record_in(
                session,
                actor=actor,
                action="password",
                decision=ALLOW,
                reason="changed",
                subject=subject,
            )
            self.sessions.end_all(session, actor, user, "password_changed", now)
            started, refresh_token = self.sessions.start(session, user.id, now)
            receipt = core.record_in(
                session,
                actor=actor,
                action="login",
                decision=ALLOW,
                reason="password_changed",
                subject=session_reference(started.id),
            )
        return self.sessions.tokens_for(started, refresh_token, receipt)
