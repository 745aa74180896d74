"""A recipient's onward release (H0, H1) never outlives the release it comes from: it can't
reach the recipient's own agency, ends no later than that release, and is revoked with it.
Before, a recipient released a package to itself and kept reading after the originator
revoked its release or the release ran out (review of 2026-12-07)."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest

from tests.conftest import World
from vault.errors import AccessDenied, InvalidInput, NotFound
from vault.models import Classification, Handling, ReleaseStatus, utcnow
from vault.schemas import NewPackage
from vault.service import IncomingFile


def _package(world: World, classification: Classification = Classification.RESTRICTED) -> str:
    return world.vault.upload(
        world["uz.officer"],
        NewPackage(title="onward", classification=classification, handling=Handling.H1),
        [IncomingFile("a.txt", io.BytesIO(b"report"))],
    ).package.id


def _entries(world: World, reason: str) -> list[tuple[str, str]]:
    return [
        (e.actor_user, e.decision) for e in world.vault.unscoped_entries() if e.reason == reason
    ]


@pytest.mark.parametrize("agency", [None, "KZ-BORDER"], ids=["country", "own-agency"])
def test_a_recipient_cannot_release_to_its_own_agency(world: World, agency: str | None) -> None:
    package_id = _package(world)
    granted = world.vault.release(
        world["uz.officer"],
        package_id,
        country="KZ",
        agency="KZ-BORDER",
        expires_at=utcnow() + timedelta(hours=1),
    )
    with pytest.raises(AccessDenied, match="own agency"):
        world.vault.release(world["kz.officer"], package_id, country="KZ", agency=agency)
    assert _entries(world, "onward_to_self") == [("kz.officer", "deny")]
    world.vault.revoke_release(world["uz.officer"], package_id, granted.release.id)
    with pytest.raises(NotFound):
        world.vault.get_package(world["kz.officer"], package_id)
    # Another agency of the same country is somebody else: that is an onward release.
    world.vault.release(world["uz.officer"], package_id, country="KZ", agency="KZ-BORDER")
    passed = world.vault.release(
        world["kz.officer"], package_id, country="KZ", agency="KZ-INTERIOR"
    )
    assert passed.release.status == ReleaseStatus.ACTIVE


def test_an_onward_release_ends_no_later_than_the_release_it_comes_from(world: World) -> None:
    package_id = _package(world)
    ends = utcnow() + timedelta(hours=1)
    world.vault.release(world["uz.officer"], package_id, country="KZ", expires_at=ends)
    kz = world["kz.officer"]
    inherited = world.vault.release(kz, package_id, country="TJ")
    assert inherited.release.expires_at == ends
    with pytest.raises(InvalidInput, match="outlast"):
        world.vault.release(kz, package_id, country="TJ", expires_at=ends + timedelta(minutes=1))
    sooner = ends - timedelta(minutes=30)
    assert (
        world.vault.release(kz, package_id, country="TJ", expires_at=sooner).release.expires_at
        == sooner
    )
    # The originator's own releases are not bounded by anything.
    assert (
        world.vault.release(world["uz.officer"], package_id, country="TJ").release.expires_at
        is None
    )


def test_revoking_a_release_revokes_what_was_passed_on_from_it(world: World) -> None:
    package_id = _package(world)
    uz, kz, tj = world["uz.officer"], world["kz.officer"], world["tj.officer"]
    granted = world.vault.release(uz, package_id, country="KZ", agency="KZ-BORDER")
    to_tj = world.vault.release(kz, package_id, country="TJ")
    on_again = world.vault.release(tj, package_id, country="KZ", agency="KZ-INTERIOR")
    world.vault.get_package(world["kz.interior"], package_id)  # in force, two steps away
    unrelated = world.vault.release(uz, package_id, country="KG")

    world.vault.revoke_release(uz, package_id, granted.release.id)
    for who in ("kz.officer", "tj.officer", "kz.interior"):
        with pytest.raises(NotFound):
            world.vault.get_package(world[who], package_id)
    status = {r.id: r.status for r in world.vault.get_package(uz, package_id)[0].releases}
    assert status[to_tj.release.id] == status[on_again.release.id] == ReleaseStatus.REVOKED
    assert status[unrelated.release.id] == ReleaseStatus.ACTIVE
    assert _entries(world, "derived") == [("uz.officer", "allow")] * 2


def test_a_pending_onward_release_is_revoked_with_its_parent(world: World) -> None:
    """Four-eyes: a CONFIDENTIAL onward release to another country waits for a supervisor
    of the originating agency; revoking its parent withdraws the request too."""
    package_id = _package(world, Classification.CONFIDENTIAL)
    granted = world.vault.release(world["uz.officer"], package_id, country="KZ")
    world.vault.decide_release(world["uz.supervisor"], granted.release.id, approve=True)
    asked = world.vault.release(world["kz.officer"], package_id, country="TJ")
    assert asked.release.status == ReleaseStatus.PENDING
    world.vault.revoke_release(world["uz.officer"], package_id, granted.release.id)
    pending, _ = world.vault.pending_releases(world["uz.supervisor"])
    assert asked.release.id not in {r.id for r in pending}


def test_a_release_a_rule_allows_without_a_release_derives_from_none(world: World) -> None:
    """An admin's rule may let officers of the same country release (no release behind it):
    such a release has no parent to end with, and is made, not a server error."""
    from vault.service import local_operator

    world.vault.change_rule(
        local_operator(), "p, officer, same-country, *, *, *, release, allow", add=True
    )
    package_id = _package(world)
    made = world.vault.release(world["uz.border"], package_id, country="TJ")
    assert made.release.status == ReleaseStatus.ACTIVE
    assert made.release.expires_at is None
