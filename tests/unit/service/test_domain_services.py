"""Domain services built from the shared core alone, without the Vault facade: each decides,
acts and records through the one core, and refusals raised inside nested transactions are
recorded once, after the rollback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlmodel import select

from tests.conftest import PASSWORD
from vault.config import Settings
from vault.errors import AccessDenied, AuthenticationFailed, InvalidInput, NotFound
from vault.ledger.entry import Entry
from vault.ledger.log import Actor
from vault.models import Agency, Classification, Role
from vault.service import Core, Principal, local_operator
from vault.service.admin import AdminService
from vault.service.identity import IdentityService
from vault.service.ledger_ops import LedgerService
from vault.service.sessions import Sessions


@pytest.fixture
def core(settings: Settings) -> Iterator[Core]:
    opened = Core.open(settings)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def admin(core: Core) -> AdminService:
    return AdminService(core, Sessions(core))


def entries(core: Core) -> list[Entry]:
    return LedgerService(core).unscoped_entries()


def officer() -> Principal:
    return Principal(
        user_id="0" * 32,
        username="uz.officer",
        agency="UZ-CUSTOMS",
        country="UZ",
        role=Role.OFFICER,
        clearance=Classification.SECRET,
    )


def test_admin_service_alone_creates_and_records(core: Core, admin: AdminService) -> None:
    op = local_operator()
    first = admin.add_country(op, "UZ", "Uzbekistan")
    second = admin.add_agency(op, "UZ-CUSTOMS", "UZ", "State Customs Committee")
    user = admin.add_user(
        op, username="uz.officer", agency="UZ-CUSTOMS", role=Role.OFFICER, password=PASSWORD
    )
    assert (user.country, user.role, user.clearance) == (
        "UZ",
        Role.OFFICER,
        Classification.UNCLASSIFIED,
    )
    log = entries(core)
    assert [(e.seq, e.action, e.decision, e.reason, e.subject) for e in log] == [
        (first, "manage", "allow", "created", "country:UZ"),
        (second, "manage", "allow", "created", "agency:UZ-CUSTOMS"),
        (second + 1, "manage", "allow", "created", "user:uz.officer"),
    ]
    assert {e.policy for e in log} == {core.authz.policy_hash}
    assert core.decision_counts() == {"allow": 3}


def test_admin_service_alone_records_a_refusal_once_and_writes_nothing(
    core: Core, admin: AdminService
) -> None:
    """The unknown country is found inside the operation's transaction: the refusal is
    written after its rollback, once, and its receipt is on the error."""
    with pytest.raises(InvalidInput) as raised:
        admin.add_agency(local_operator(), "KZ-BORDER", "KZ", "Border Guard Service")
    [entry] = entries(core)
    assert raised.value.receipt == entry.seq
    assert (entry.action, entry.decision, entry.reason) == ("manage", "deny", "invalid_input")
    with core.tx(readonly=True) as session:
        assert session.exec(select(Agency)).all() == []


def test_admin_service_alone_refuses_an_officer(core: Core, admin: AdminService) -> None:
    with pytest.raises(AccessDenied) as raised:
        admin.add_country(officer(), "KZ", "Kazakhstan")
    [entry] = entries(core)
    assert raised.value.receipt == entry.seq
    assert (entry.actor_user, entry.decision, entry.reason, entry.subject) == (
        "uz.officer",
        "deny",
        "role_not_permitted",
        "country:KZ",
    )


def refuse_in_nested_transactions(core: Core, actor: Actor) -> None:
    """Add a row, then refuse two transactions deep."""
    with core.tx() as outer:
        outer.add(Agency(code="XX-NOWHERE", country_code="XX", name="never committed"))
        with core.tx(readonly=True):
            raise core.record_refusal(NotFound("package not found"), actor, "read", "not_found")


def test_core_records_a_refusal_in_nested_transactions_after_the_outer_rollback(
    core: Core,
) -> None:
    actor = Actor(user="someone")
    with pytest.raises(NotFound) as raised:
        refuse_in_nested_transactions(core, actor)
    [entry] = entries(core)
    assert raised.value.receipt == entry.seq
    assert (entry.actor_user, entry.action, entry.reason) == ("someone", "read", "not_found")
    with core.tx(readonly=True) as session:
        assert session.exec(select(Agency)).all() == []
    # Outside any transaction the refusal is written at once.
    alone = core.record_refusal(NotFound("package not found"), actor, "read", "not_found")
    assert alone.receipt == entry.seq + 1 == len(entries(core)) - 1


def test_identity_service_alone_logs_in_and_refuses(core: Core, admin: AdminService) -> None:
    op = local_operator()
    admin.add_country(op, "UZ", "Uzbekistan")
    admin.add_agency(op, "UZ-CUSTOMS", "UZ", "State Customs Committee")
    admin.add_user(
        op, username="uz.officer", agency="UZ-CUSTOMS", role=Role.OFFICER, password=PASSWORD
    )
    identity = IdentityService(core, Sessions(core))
    principal = identity.authenticate(identity.login("uz.officer", PASSWORD).access_token)
    assert (principal.username, principal.country, principal.role) == (
        "uz.officer",
        "UZ",
        Role.OFFICER,
    )
    with pytest.raises(AuthenticationFailed) as raised:
        identity.login("no.such.user", PASSWORD)
    last = entries(core)[-1]
    assert raised.value.receipt == last.seq
    assert (last.action, last.decision, last.reason) == ("login", "deny", "bad_credentials")
    assert last.actor_user.startswith("unknown:")  # never the name as typed
