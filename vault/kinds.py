"""The vault's enumerations of kinds: roles, classifications, handling codes and the states of
a release.

Kept apart from :mod:`vault.models` (which re-exports them) so that the command line can name
them without importing SQLModel and SQLAlchemy at start-up.
"""

from __future__ import annotations

import enum

__all__ = [
    "Classification",
    "Handling",
    "ReleaseKind",
    "ReleaseStatus",
    "Role",
]


class Role(enum.StrEnum):
    """What a user does; see policies/ for what each may do."""

    OFFICER = "officer"
    SUPERVISOR = "supervisor"
    AUDITOR = "auditor"
    ADMIN = "admin"


class Classification(enum.StrEnum):
    """Package classification and user clearance, in increasing order."""

    UNCLASSIFIED = "UNCLASSIFIED"
    RESTRICTED = "RESTRICTED"
    CONFIDENTIAL = "CONFIDENTIAL"
    SECRET = "SECRET"

    @property
    def rank(self) -> int:
        """Position in the order UNCLASSIFIED < RESTRICTED < CONFIDENTIAL < SECRET."""
        return list(Classification).index(self)


class Handling(enum.StrEnum):
    """Europol-style handling codes."""

    H0 = "H0"
    H1 = "H1"
    H2 = "H2"
    H3 = "H3"


class ReleaseStatus(enum.StrEnum):
    """Life of a release: pending approval, in force, refused, or withdrawn.

    Whether an active release is *in force* also depends on its not-before and expiry times.
    """

    PENDING = "pending"
    ACTIVE = "active"
    REJECTED = "rejected"
    REVOKED = "revoked"


class ReleaseKind(enum.StrEnum):
    """Why a release exists: released directly, awaiting a second person, or asked for."""

    DIRECT = "direct"
    FOUR_EYES = "four-eyes"
    ONWARD_REQUEST = "onward-request"
