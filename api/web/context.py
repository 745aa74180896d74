"""What every page request carries: the browser's web session, the signed-in principal, the
language and time zone; the dependencies that establish them; and the one way a page answers
(rendered template or redirect), which also sets the session cookie."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from blo_vault.api.routing import client_address
from blo_vault.api.web import codes
from blo_vault.api.web.i18n import Language, Languages, zone_for
from blo_vault.api.web.sessions import SessionStore, WebSession
from vault.errors import AccessDenied, AuthenticationFailed
from vault.models import Classification
from vault.service import Principal, Vault

PREFIX = "/ui"
STATIC_PREFIX = PREFIX + "/static"
TEMPLATES = Path(__file__).parent / "templates"
# Tries to authenticate a session that other requests keep changing meanwhile (see _principal):
# bounded, so a request never loops; one that runs out is answered as signed out, and the
# browser's next request tries again with the session as it is then.
_AUTHENTICATIONS = 2


class SignInRequired(Exception):
    """A page that needs a signed-in user was asked for without one (answered by a redirect
    to the sign-in page)."""


class CsrfRefused(AccessDenied):
    """A state-changing form came without this session's CSRF token (403, nothing done)."""

    code = "csrf_refused"


@dataclass
class Web:
    """The web interface's parts, kept on ``app.state.web``."""

    sessions: SessionStore
    languages: Languages
    templates: Environment

    @classmethod
    def build(cls, vault: Vault) -> Web:
        """Sessions idle out with the service's sessions; templates escape everything."""
        env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=True,
            auto_reload=False,  # templates ship with the code: no stat() on every page
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        return cls(
            sessions=SessionStore(vault.web_sessions()),
            languages=Languages(),
            templates=env,
        )


@dataclass
class Visit:
    """One page request: session, who (if signed in), language and zone."""

    request: Request
    web: Web
    vault: Vault
    cookie: str
    session: WebSession
    language: Language
    principal: Principal | None = None
    new_cookie: bool = False

    @property
    def zone(self) -> str:
        """The zone this reader sees times in."""
        return zone_for(self.principal.country if self.principal else "", self.session.tz)

    @property
    def user(self) -> Principal:
        """The signed-in principal (only on pages that require one)."""
        if self.principal is None:
            raise SignInRequired
        return self.principal

    def _(self, message: str, **values: Any) -> str:
        return self.language.gettext(message, **values)

    def restart(self) -> WebSession:
        """Replace the session by a fresh one under a new cookie (at sign-in and password
        change: a cookie known before can't ride into the new session). The old row is deleted
        only as this request read it: one another request changed meanwhile (renewing its
        tokens) is that request's to answer, and ends by itself (idle, or its service session
        ended) if no other request uses it."""
        self.web.sessions.drop(self.cookie, version=self.session.version)
        return self._fresh()

    def end(self) -> bool:
        """As :meth:`restart`, for a session whose service session ended; False, changing
        nothing, if the row is gone or another request changed it since this one read it."""
        if not self.web.sessions.drop(self.cookie, version=self.session.version):
            return False
        self._fresh()
        return True

    def _fresh(self) -> WebSession:
        old = self.session
        self.cookie, self.session = self.web.sessions.new(lang=old.lang, tz=old.tz)
        self.new_cookie = True
        return self.session

    def secure(self) -> bool:
        """Whether the cookie must be Secure with the ``__Host-`` prefix: over TLS, or in
        production (where TLS ends at a proxy in front)."""
        return self.request.url.scheme == "https" or self.vault.settings.env == "production"

    def finish(self, response: Response) -> Response:
        """Set the session cookie on a page's answer when the session is new."""
        if self.new_cookie:
            response.set_cookie(
                cookie_name(self.secure()),
                self.cookie,
                path="/",
                httponly=True,
                samesite="strict",
                secure=self.secure(),
            )
        return response

    def render(
        self,
        template: str,
        *,
        status: int = 200,
        classification: Classification | None = None,
        **context: Any,
    ) -> Response:
        """A page from ``template``; its banners show ``classification`` (the highest of what
        it shows; UNCLASSIFIED when it shows no package)."""
        marking = classification or Classification.UNCLASSIFIED
        html = self.web.templates.get_template(template).render(
            _=self.language.gettext,
            ngettext=self.language.ngettext,
            when=lambda moment: self.language.datetime(moment, self.zone),
            action_text=lambda code: codes.action_text(self.language, code),
            reason_text=lambda code: codes.reason_text(self.language, code),
            relation_text=lambda code: codes.relation_text(self.language, code),
            note_text=lambda note: codes.note_text(self.language, note),
            lang=self.language,
            languages=self.web.languages.by_code.values(),
            zone=self.zone,
            user=self.principal,
            csrf=self.session.csrf,
            marking=marking,
            path=self.request.url.path,
            static=STATIC_PREFIX,
            **context,
        )
        return self.finish(HTMLResponse(html, status_code=status))

    def redirect(self, url: str) -> Response:
        """See other (303): the answer to a form that did its work."""
        return self.finish(RedirectResponse(url, status_code=303))


def cookie_name(secure: bool) -> str:
    """The session cookie's name: ``__Host-`` prefixed when Secure (RFC 6265bis, 4.1.3.2)."""
    return "__Host-vault_session" if secure else "vault_session"


def visit(request: Request) -> Visit:
    """The page request's session (started if the browser has none), language and, when the
    session is signed in, its principal, authenticated by the service on every request."""
    current = _visit(request, start=True)
    assert current is not None
    return current


def existing_visit(request: Request) -> Visit | None:
    """As :func:`visit`, but None, starting nothing, if the browser has no live session: for
    an error page, which must not store a session for every request that a junk cookie or
    none at all makes."""
    return _visit(request, start=False)


def passing_visit(request: Request) -> Visit:
    """A visit, for an error page, by a browser without a live session: its language from
    Accept-Language, and nothing stored, no cookie set and no CSRF token (the error page has
    no form; anything posted without a token is refused)."""
    web: Web = request.app.state.web
    accept = request.headers.get("accept-language", "")
    language = web.languages.choose(None, accept)
    return Visit(request, web, request.app.state.vault, "", WebSession(csrf=""), language)


def _visit(request: Request, *, start: bool) -> Visit | None:
    web: Web = request.app.state.web
    vault: Vault = request.app.state.vault
    secure = request.url.scheme == "https" or vault.settings.env == "production"
    cookie = request.cookies.get(cookie_name(secure), "")
    session = web.sessions.get(cookie)
    new = session is None
    if session is None:
        if not start:
            return None
        cookie, session = web.sessions.new()
    accept = request.headers.get("accept-language", "")
    current = Visit(
        request, web, vault, cookie, session, web.languages.choose(session.lang, accept)
    )
    current.new_cookie = new
    if session.signed_in:
        current.principal = _principal(current)
    request.state.visit = current
    return current


def _principal(current: Visit) -> Principal | None:
    """Whom the session's tokens speak for, authenticated by the service. None, and the
    session replaced by a fresh one, if its service session ended (sign-out elsewhere,
    password changed, user disabled, role changed, timed out): so does this one. None, the
    session left as it is, if other requests kept changing it (see _AUTHENTICATIONS)."""
    client = client_address(current.request)
    refresh = functools.partial(current.vault.refresh, client=client)
    for _ in range(_AUTHENTICATIONS):
        try:
            return current.vault.authenticate(current.session.access(refresh), client=client)
        except AuthenticationFailed:
            if current.end():
                return None
        # Another request changed the session since this one read it: most likely it renewed
        # the tokens this one found expired, so those it holds now may be good.
        latest = current.web.sessions.get(current.cookie)
        if latest is None:  # gone meanwhile (signed out)
            current.restart()
            return None
        current.session = latest
        if not latest.signed_in:
            return None
    return None


VisitDep = Annotated[Visit, Depends(visit)]


def signed_in(current: VisitDep) -> Visit:
    """A visit by a signed-in user; SignInRequired otherwise."""
    if current.principal is None:
        raise SignInRequired
    return current


SignedIn = Annotated[Visit, Depends(signed_in)]


_STALE_FORM = "the form is stale or came from elsewhere; nothing was changed"


def check_csrf(current: Visit, given: str) -> None:
    """CsrfRefused unless ``given`` is the session's CSRF token."""
    if not given or not current.session.csrf_ok(given):
        raise CsrfRefused(_STALE_FORM)


def posted(request: Request, csrf: Annotated[str, Form()] = "") -> Visit:
    """A visit posting a form: refused (403, nothing done) without the session's CSRF token.

    A browser without a live session holds no token that could match: refused without
    starting one, so that posts from nowhere store nothing."""
    current = existing_visit(request)
    if current is None:
        raise CsrfRefused(_STALE_FORM)
    check_csrf(current, csrf)
    return current


Posted = Annotated[Visit, Depends(posted)]


def posted_signed_in(current: Posted) -> Visit:
    """A signed-in user's form post, CSRF checked."""
    return signed_in(current)


PostedSignedIn = Annotated[Visit, Depends(posted_signed_in)]
