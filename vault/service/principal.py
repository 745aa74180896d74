"""Who is acting: an authenticated caller, or the operator on the server itself."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Protocol

from vault.ledger.log import Actor
from vault.models import Classification, Role


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    user_id: str
    username: str
    agency: str
    country: str
    role: Role
    clearance: Classification
    # The session the caller's access token belongs to (empty for the local operator).
    session_id: str = ""

    @property
    def actor(self) -> Actor:
        """The ledger's view of this caller."""
        return Actor(user=self.username, agency=self.agency, country=self.country)


def local_operator() -> Principal:
    """The operator running admin commands on the server itself (bootstrap, no login)."""
    return Principal(
        user_id="",
        username=f"local:{getpass.getuser()}",
        agency="",
        country="",
        role=Role.ADMIN,
        clearance=Classification.UNCLASSIFIED,
    )


class UserRow(Protocol):
    """What a principal is made of: a User, or a row of its columns."""

    @property
    def id(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def agency_code(self) -> str: ...
    @property
    def role(self) -> Role: ...
    @property
    def clearance(self) -> Classification: ...


def principal_of(user: UserRow, country: str, session_id: str = "") -> Principal:
    """The principal ``user`` of an agency in ``country`` is."""
    return Principal(
        user_id=user.id,
        username=user.username,
        agency=user.agency_code,
        country=country,
        role=user.role,
        clearance=user.clearance,
        session_id=session_id,
    )
