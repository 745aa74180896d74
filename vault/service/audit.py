"""Audit: what an auditor may see of a package (never its content), and ``explain`` — why a
user may or may not do something, from the very facts enforcement uses."""

from __future__ import annotations

from sqlmodel import col, select

from vault.authz import ACTIONS, NONE, Decision, Facts
from vault.errors import AccessDenied, InvalidInput, NotFound
from vault.models import PackageFile, Release, Role, User
from vault.schemas import AuditView, Explanation, check_id, check_username
from vault.service._core import ALLOW, Core, Principal
from vault.service.access import Access, PackageRow, package_facts
from vault.service.refusals import records_refusals
from vault.service.releases import release_info


def _notes(
    decision: Decision, facts: Facts, subject: Principal, user: User, action: str
) -> list[str]:
    """What an auditor should know beside the rules that decided."""
    notes = []
    if not decision.allowed and not decision.rules:
        notes.append("no rule allows this for the facts above: denied by default")
    if facts.relations == frozenset({NONE}):
        notes.append(
            f"{subject.agency} is not the originator and no release to {subject.agency} "
            f"or {subject.country} is in force"
        )
    if user.disabled:
        notes.append("the user is disabled: every request is refused at authentication")
    if action == "approve":
        notes.append("four-eyes: the requester of a release can never approve it")
    return notes


class AuditService:
    """The audit view of a package, and explanations of decisions."""

    def __init__(self, core: Core, access: Access) -> None:
        self.core = core
        self.access = access

    @records_refusals("audit")
    def audit_package(self, principal: Principal, package_id: str) -> tuple[AuditView, int]:
        """What an auditor may see of a package: no title, description, filenames or content."""
        with self.core.tx(readonly=True) as session:
            package, _ = self.access.load_package_for(session, principal, package_id, "audit")
            files = session.exec(
                select(PackageFile.id)
                .where(PackageFile.package_id == package.id)
                .order_by(col(PackageFile.position))
            ).all()
            releases = session.exec(
                select(Release)
                .where(Release.package_id == package.id)
                .order_by(col(Release.created_at))
            ).all()
            country = self.core.country_of(session, package.agency_code)
            receipt = self.core.record_allowed(principal, "audit", package)
            view = AuditView(
                id=package.id,
                agency=package.agency_code,
                country=country,
                classification=package.classification,
                handling=package.handling,
                created_at=package.created_at,
                size=package.size,
                file_count=package.file_count,
                file_ids=list(files),
                releases=[
                    release_info(r)
                    for r in releases
                    # Another country's auditor sees only the releases to their own country:
                    # where else a package went is the originator's business (issue 18).
                    if principal.role != Role.AUDITOR
                    or principal.country in (country, r.country_code)
                ],
            )
        return view, receipt

    @records_refusals("explain")
    def explain(
        self, principal: Principal, *, username: str, package_id: str, action: str
    ) -> tuple[Explanation, int]:
        """Allow or deny for ``username`` doing ``action`` to a package, and why.

        Auditors and admins get the facts, the rules that decided and the policy version, for
        packages the audit view shows them; anyone else may only ask about themselves, about
        packages they may read, and gets the bare answer. Every other package is NotFound,
        exactly like a missing one.
        """
        core = self.core
        username = check_username(username)
        check_id(package_id, "package id")
        if action not in ACTIONS:
            raise InvalidInput(f"action must be one of {', '.join(ACTIONS)}")
        full = core.authz.allows(
            Facts(principal.role.value, frozenset({NONE}), True, "*", False, "explain")
        )
        if not full and username != principal.username:
            raise core.record_refusal(
                AccessDenied("only auditors and admins may ask about other users"),
                principal.actor,
                "explain",
                "role_not_permitted",
                subject=f"user:{username}",
            )
        with core.tx(readonly=True) as session:
            # The package first, whoever is asked about: one the caller may not know exists
            # answers exactly like a missing id. Auditors and admins see what the audit view
            # shows them (its very check); anyone else what they may read.
            shown, _ = self.access.load_package_for(
                session, principal, package_id, "audit" if full else "read", record_as="explain"
            )
            user = session.exec(select(User).where(User.username == username)).first()
            if user is None:
                raise NotFound(f"unknown user {username}")
            subject = core.principal_for(session, user)
            if principal.role == Role.AUDITOR and principal.country not in (
                shown.country_code,
                subject.country,
            ):
                # Another country's auditor sees only the releases to their own country (the
                # audit view, above); an answer about a third country's user would tell where
                # else the package went, and that the user exists: answered as for no user.
                raise NotFound(f"unknown user {username}")
            found = package_facts(session, subject, package_id, action)
            if found is None:  # loaded just above, in this transaction
                raise NotFound("package not found")
            package, facts = found
            decision = core.authz.decide(facts)
            grants = [
                rid for rid, _, _ in self.access.grants_in_force(session, subject, package.id)
            ]
            receipt = core.record(
                actor=principal.actor,
                action="explain",
                decision=ALLOW,
                reason="allow" if decision.allowed else "deny",
                package=package.id,
                subject=f"user:{username} action:{action}",
                handling=package.handling.value,
            )
        if not full:
            return Explanation(
                allowed=decision.allowed,
                user=username,
                package=package_id,
                action=action,
                policy_hash=decision.policy_hash,
            ), receipt
        return self._full_explanation(decision, facts, subject, user, package, grants), receipt

    @staticmethod
    def _full_explanation(
        decision: Decision,
        facts: Facts,
        subject: Principal,
        user: User,
        package: PackageRow,
        grants: list[str],
    ) -> Explanation:
        """The explanation auditors and admins get: facts, rules, grants and notes."""
        return Explanation(
            allowed=decision.allowed and not user.disabled,
            user=user.username,
            package=package.id,
            action=facts.action,
            policy_hash=decision.policy_hash,
            relation=decision.relation,
            facts={
                "role": subject.role.value,
                "agency": subject.agency,
                "country": subject.country,
                "relations": sorted(facts.relations),
                "clearance": subject.clearance.value,
                "classification": package.classification.value,
                "cleared": facts.cleared,
                "handling": facts.handling,
                "acknowledged": facts.acknowledged,
                "originating_agency": package.agency_code,
            },
            rules=[list(r) for r in decision.rules],
            grants=list(grants),
            notes=_notes(decision, facts, subject, user, facts.action),
        )
