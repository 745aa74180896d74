"""The service's stable codes shown on the pages — ledger reasons and actions, explain's
notes, relations — as words of the reader's language.

The service records codes (``not_found``, ``request-release``) and writes explain's notes in
English for the API and the CLI; the pages translate them here, by code, so the service stays
as it is. ``tests/ui/test_codes.py`` enumerates what the service can emit from its source and
fails when a code has no entry here.
"""

from __future__ import annotations

import re

from blo_vault.api.web.i18n import N_, Language
from vault.models import ReleaseStatus

ACTIONS = {
    "upload": N_("upload"),
    "list": N_("list"),
    "read": N_("read"),
    "download": N_("download"),
    "release": N_("release"),
    "revoke": N_("revoke"),
    "approve": N_("approve"),
    "request-release": N_("request release"),
    "acknowledge": N_("acknowledge"),
    "audit": N_("audit"),
    "explain": N_("explain"),
    "ledger": N_("read the ledger"),
    "manage": N_("manage"),
    "login": N_("sign in"),
    "logout": N_("sign out"),
    "refresh": N_("refresh session"),
    "authenticate": N_("authenticate"),
    "password": N_("change password"),
    "end-session": N_("end session"),
    "gc": N_("collect garbage"),
    "request": N_("request"),
    "key.register": N_("register signing key"),
    "key.revoke": N_("revoke signing key"),
    "key.read": N_("look up signing keys"),
}

REASONS = {
    "ok": N_("ok"),
    "allow": N_("allowed"),
    "deny": N_("denied"),
    "already": N_("already done"),
    "approved": N_("approved"),
    "rejected": N_("rejected"),
    "changed": N_("changed"),
    "created": N_("created"),
    "rule added": N_("rule added"),
    "rule removed": N_("rule removed"),
    "kek rotated": N_("key-encryption key rotated"),
    "password_changed": N_("password changed"),
    "logout": N_("signed out"),
    "bad_credentials": N_("wrong user name or password"),
    "bad_token": N_("invalid token"),
    "bad_refresh_token": N_("invalid refresh token"),
    "refresh_reused": N_("refresh token used twice"),
    "session_unknown": N_("unknown session"),
    "session_revoked": N_("session ended"),
    "session_expired": N_("session expired"),
    "session_idle": N_("session idle too long"),
    "user_disabled": N_("user disabled"),
    "user_unknown": N_("unknown user"),
    "invalid_password": N_("password not acceptable"),
    "rate_limited": N_("too many failed attempts"),
    "role_not_permitted": N_("role not permitted"),
    "policy_denied": N_("denied by policy"),
    "clearance_below_classification": N_("clearance below classification"),
    "four_eyes_same_person": N_("four-eyes: same person"),
    "h2_onward_release": N_("H2: no onward release"),
    "onward_to_self": N_("onward release to own agency"),
    "derived": N_("revoked with its parent release"),
    "h3_not_acknowledged": N_("H3: restrictions not acknowledged"),
    "quorum_not_met": N_("quorum not met"),
    "unknown_log": N_("unknown log"),
    "log_signature_invalid": N_("log signature invalid"),
    "size_conflict": N_("checkpoint size conflict"),
    "root_conflict": N_("checkpoint root conflict"),
    "inconsistent_proof": N_("inconsistent proof"),
    "separation_of_duties": N_("separation of duties"),
    "locks_out_admins": N_("would lock administrators out"),
    "not_found": N_("not found"),
    "access_denied": N_("access denied"),
    "invalid_input": N_("invalid input"),
    "too_large": N_("too large"),
    "request_timeout": N_("request too slow"),
    "conflict": N_("conflict"),
    "authentication_failed": N_("authentication failed"),
    "integrity_error": N_("integrity check failed"),
    "ledger_corrupt": N_("ledger corrupt"),
    "storage_unavailable": N_("storage unavailable"),
    "config_error": N_("configuration error"),
    "vault_missing": N_("vault missing"),
    "vault_error": N_("vault error"),
    "io_error": N_("input/output error"),
    "internal_error": N_("internal error of the vault"),
    "csrf_refused": N_("form token refused"),
}
# A release's state change is recorded as ``status:<state>``.
STATUS_PREFIX = "status:"
STATUS_REASON = N_("release %(state)s")
STATES = {state.value: state.value for state in ReleaseStatus}  # msgids: i18n.DATA_WORDS

RELATIONS = {
    "originator": N_("originator"),
    "released-agency": N_("released to the agency"),
    "released-country": N_("released to the country"),
    "same-country": N_("same country"),
    "none": N_("none"),
}

# Explain's notes (vault/service/audit.py ``_notes``): a pattern over the English note, and
# the message with the same placeholders.
NOTES = (
    (
        re.compile(r"no rule allows this for the facts above: denied by default"),
        N_("No rule allows this for the facts above: denied by default."),
    ),
    (
        re.compile(
            r"(?P<agency>.+) is not the originator and no release to (?P=agency) "
            r"or (?P<country>.+) is in force"
        ),
        N_(
            "%(agency)s is not the originator and no release to %(agency)s or "
            "%(country)s is in force."
        ),
    ),
    (
        re.compile(r"the user is disabled: every request is refused at authentication"),
        N_("The user is disabled: every request is refused at authentication."),
    ),
    (
        re.compile(r"four-eyes: the requester of a release can never approve it"),
        N_("Four-eyes: the requester of a release can never approve it."),
    ),
)


def action_text(language: Language, code: str) -> str:
    """An action code in ``language`` (an unknown one as it is)."""
    return language.gettext(ACTIONS[code]) if code in ACTIONS else code


def reason_text(language: Language, code: str) -> str:
    """A ledger reason in ``language`` (an unknown one as it is)."""
    if code in REASONS:
        return language.gettext(REASONS[code])
    state = code.removeprefix(STATUS_PREFIX)
    if code.startswith(STATUS_PREFIX) and state in STATES:
        return language.gettext(STATUS_REASON, state=language.gettext(STATES[state]))
    return code


def relation_text(language: Language, code: str) -> str:
    """A relation of a user to a package in ``language``."""
    return language.gettext(RELATIONS[code]) if code in RELATIONS else code


def note_text(language: Language, note: str) -> str:
    """One of explain's notes in ``language`` (an unknown one as it is)."""
    for pattern, message in NOTES:
        matched = pattern.fullmatch(note)
        if matched:
            return language.gettext(message, **matched.groupdict())
    return note
