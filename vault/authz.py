"""The one enforcement point: Casbin over attribute classes, memoised per policy version.

Casbin never sees individual packages or releases (a plain enforcer with a policy line per
release costs about a second per denied request at 100,000 lines). The service derives a few
facts per request from indexed lookups -- the caller's role, the relations that hold between
caller and package, cleared or not, the handling code, acknowledged or not -- and asks
:class:`Authorizer` about that small class; pycasbin answers each distinct class once per
policy version and the answer is memoised.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from threading import Lock

import casbin

from vault.errors import ConfigError, InvalidInput

__all__ = [
    "ACTIONS",
    "CONTENT_ACTIONS",
    "HANDLINGS",
    "NONE",
    "NO_CONTENT_ROLES",
    "ORIGINATOR",
    "RELATIONS",
    "RELEASED_AGENCY",
    "RELEASED_COUNTRY",
    "ROLES",
    "SAME_COUNTRY",
    "SEPARATION_OF_DUTIES",
    "Authorizer",
    "Decision",
    "Facts",
    "Key",
    "parse_rule",
    "rule_line",
]

log = logging.getLogger("vault.authz")

# Relations between a caller and a package, strongest first.
ORIGINATOR = "originator"
RELEASED_AGENCY = "released-agency"
RELEASED_COUNTRY = "released-country"
SAME_COUNTRY = "same-country"
NONE = "none"
RELATIONS = (ORIGINATOR, RELEASED_AGENCY, RELEASED_COUNTRY, SAME_COUNTRY, NONE)

ROLES = ("officer", "supervisor", "auditor", "admin")
ACTIONS = (
    "upload",
    "list",
    "read",
    "download",
    "release",
    "revoke",
    "approve",
    "request-release",
    "acknowledge",
    "audit",
    "explain",
    "ledger",
    "manage",
    "key.register",
    "key.revoke",
    "key.read",
)
HANDLINGS = ("H0", "H1", "H2", "H3")
# Separation of duties: admins and auditors never see a package's content, title,
# description or filenames. Those are shown by listing (titles), read (details, filenames)
# and download (content); every other action shows ids and metadata at most.
CONTENT_ACTIONS = frozenset({"list", "read", "download"})
NO_CONTENT_ROLES = ("admin", "auditor")
SEPARATION_OF_DUTIES = (
    "separation of duties: admin and auditor may never list, read or download packages; "
    "a rule allowing that to them (by name, by '*' or through a role they inherit) is refused"
)
_RULE_FIELDS = 7  # role, rel, clr, hnd, ack, act, eft

Key = tuple[str, str, str, str, str, str]


@dataclass(frozen=True)
class Facts:
    """What the decision depends on, as computed by the service for one request."""

    role: str
    relations: frozenset[str]
    cleared: bool
    handling: str
    acknowledged: bool
    action: str

    @classmethod
    def global_action(cls, role: str, action: str) -> Facts:
        """The facts of an action that concerns no package (upload, list, manage, ledger):
        no relation, nothing to be cleared for or acknowledged."""
        return cls(
            role=role,
            relations=frozenset({NONE}),
            cleared=True,
            handling="*",
            acknowledged=False,
            action=action,
        )

    def key(self, relation: str) -> Key:
        """The Casbin request for one relation."""
        return (
            self.role,
            relation,
            "cleared" if self.cleared else "uncleared",
            self.handling,
            "yes" if self.acknowledged else "no",
            self.action,
        )


@dataclass(frozen=True)
class Decision:
    """An access decision, with the rules that decided it (for explain)."""

    allowed: bool
    relation: str | None
    rules: tuple[tuple[str, ...], ...]
    policy_hash: str


def parse_rule(line: str) -> tuple[str, ...]:
    """A rule line ``p, role, rel, clr, hnd, ack, act, eft`` checked field by field."""
    try:
        fields = next(csv.reader(io.StringIO(line), skipinitialspace=True))
    except (StopIteration, csv.Error):
        raise InvalidInput("a rule is one CSV line") from None
    fields = [f.strip() for f in fields]
    if len(fields) != 1 + _RULE_FIELDS or fields[0] != "p":
        raise InvalidInput(
            "a rule is: p, role, relation, clearance, handling, acknowledged, action, effect"
        )
    _, role, rel, clr, hnd, ack, act, eft = fields
    checks = [
        (role, ("*", *ROLES), "role"),
        (rel, ("*", *RELATIONS), "relation"),
        (clr, ("*", "cleared", "uncleared"), "clearance"),
        (hnd, ("*", *HANDLINGS), "handling"),
        (ack, ("*", "yes", "no"), "acknowledged"),
        (act, ACTIONS, "action"),
        (eft, ("allow", "deny"), "effect"),
    ]
    for value, allowed, what in checks:
        if value not in allowed:
            raise InvalidInput(f"rule {what} must be one of {', '.join(allowed)}")
    return tuple(fields[1:])


def rule_line(rule: tuple[str, ...]) -> str:
    """The canonical text of a rule, as :func:`parse_rule` reads it."""
    return ", ".join(("p", *rule))


class Authorizer:
    """Casbin model and policy from a folder, plus rules added by admins; answers decisions.

    Raises ConfigError if the policy file lets admins or auditors at content; admin rules
    that would are not enforced (and logged), whenever they were stored.
    """

    def __init__(self, *, policy_dir: Path, extra_rules: Sequence[tuple[str, ...]] = ()) -> None:
        model = policy_dir / "model.conf"
        policy = policy_dir / "policy.csv"
        try:
            model_bytes, policy_bytes = model.read_bytes(), policy.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read Casbin policy: {exc}") from None
        self._enforcer = casbin.Enforcer(str(model), str(policy))
        for line in self._enforcer.get_policy():
            if self.gives_content_to_no_content_role(tuple(line)):
                raise ConfigError(f"{policy}: {SEPARATION_OF_DUTIES}: {rule_line(tuple(line))}")
        # What the caller stored, to tell when the stored rules change (see Vault).
        self.stored_rules = tuple(sorted(extra_rules))
        enforced = []
        for rule in self.stored_rules:
            if self.gives_content_to_no_content_role(rule):
                # Stored before this check existed, or behind the service's back: never
                # enforced. A warning, not a refusal to start: the rule only ever widened
                # access, so dropping it is safe, and an admin can remove it (remove-rule).
                log.warning("rule not enforced, %s: %s", SEPARATION_OF_DUTIES, rule_line(rule))
                continue
            enforced.append(rule)
        digest = hashlib.sha256(b"blo-vault policy v1\x00" + model_bytes + b"\x00" + policy_bytes)
        for rule in enforced:
            digest.update(b"\x00" + ",".join(rule).encode())
        self.policy_hash = digest.hexdigest()
        self.extra_rules = tuple(enforced)
        for rule in enforced:
            self._enforcer.add_policy(*rule)
        self._memo: dict[Key, tuple[bool, tuple[str, ...]]] = {}
        self._lock = Lock()

    def gives_content_to_no_content_role(self, rule: tuple[str, ...]) -> bool:
        """Whether ``rule`` (role, rel, clr, hnd, ack, act, eft) would allow admin or auditor
        a content action: the matcher's own role test (``*``, or ``g`` with the policy
        file's inheritance), whatever the other fields say. Deny rules never give anything."""
        role, action, effect = rule[0], rule[5], rule[6]
        if effect != "allow" or action not in CONTENT_ACTIONS:
            return False
        roles = self._enforcer.get_role_manager()
        return role == "*" or any(roles.has_link(name, role) for name in NO_CONTENT_ROLES)

    @property
    def memo_size(self) -> int:
        """How many attribute classes have been decided and remembered (a miss shows as
        growth; the authorization benchmark reports it)."""
        return len(self._memo)

    def ask(self, key: Key) -> tuple[bool, tuple[str, ...]]:
        """Casbin's answer for one attribute class (memoised), and the rule that decided it."""
        hit = self._memo.get(key)
        if hit is None:
            with self._lock:  # pycasbin's enforcer is not documented as thread-safe
                allowed, rule = self._enforcer.enforce_ex(*key)
            hit = (bool(allowed), tuple(str(x) for x in rule))
            self._memo[key] = hit
        return hit

    def decide(self, facts: Facts) -> Decision:
        """Allowed if any relation that holds is allowed (deny rules override inside Casbin)."""
        rules: list[tuple[str, ...]] = []
        for relation in RELATIONS:
            if relation not in facts.relations:
                continue
            allowed, rule = self.ask(facts.key(relation))
            if rule:
                rules.append(rule)
            if allowed:
                return Decision(True, relation, tuple(rules), self.policy_hash)
        return Decision(False, None, tuple(rules), self.policy_hash)

    def allows(self, facts: Facts) -> bool:
        """Shorthand for ``decide(facts).allowed``."""
        for relation in RELATIONS:
            if relation in facts.relations and self.ask(facts.key(relation))[0]:
                return True
        return False

    def readable_classes(
        self, *, role: str, action: str, cleared_for: frozenset[str], classifications: Sequence[str]
    ) -> dict[str, list[tuple[str, str]]]:
        """For listing: per relation, the (classification, handling) pairs the caller may read.

        Listing shows what may be *read*; an H3 package not yet acknowledged is readable (its
        restrictions are shown so they can be acknowledged), so ``ack`` is taken as "no".
        """
        out: dict[str, list[tuple[str, str]]] = {}
        for relation in RELATIONS:
            pairs = [
                (cls, hnd)
                for cls in classifications
                for hnd in HANDLINGS
                if self.ask(
                    (
                        role,
                        relation,
                        "cleared" if cls in cleared_for else "uncleared",
                        hnd,
                        "no",
                        action,
                    )
                )[0]
            ]
            if pairs:
                out[relation] = pairs
        return out
