"""The one enforcement point: Casbin over attribute classes, memoised per policy version.

Casbin never sees individual packages or releases (a plain enforcer with a policy line per
release costs about a second per denied request at 100,000 lines). The service derives a few
facts per request from indexed lookups -- the caller's role, the relations that hold between
caller and package, cleared or not, the handling code -- and asks :class:`Authorizer` about that
small class; the answer for each distinct class is computed by pycasbin once per policy version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from threading import Lock

import casbin

from vault.errors import ConfigError

# Relations between a caller and a package, strongest first.
ORIGINATOR = "originator"
RELEASED_AGENCY = "released-agency"
RELEASED_COUNTRY = "released-country"
SAME_COUNTRY = "same-country"
NONE = "none"
RELATIONS = (ORIGINATOR, RELEASED_AGENCY, RELEASED_COUNTRY, SAME_COUNTRY, NONE)


@dataclass(frozen=True)
class Facts:
    """What the decision depends on, as computed by the service for one request."""

    role: str
    relations: frozenset[str]
    cleared: bool
    handling: str
    action: str


@dataclass(frozen=True)
class Decision:
    """An access decision, with the rules that decided it (for explain)."""

    allowed: bool
    relation: str | None
    rules: tuple[tuple[str, ...], ...]
    policy_hash: str


class Authorizer:
    """Loads the Casbin model and policy from a folder and answers decisions."""

    def __init__(self, *, policy_dir: Path) -> None:
        model = policy_dir / "model.conf"
        policy = policy_dir / "policy.csv"
        try:
            model_bytes, policy_bytes = model.read_bytes(), policy.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read Casbin policy: {exc}") from None
        self.policy_hash = hashlib.sha256(
            b"blo-vault policy v1\x00" + model_bytes + b"\x00" + policy_bytes
        ).hexdigest()
        self._enforcer = casbin.Enforcer(str(model), str(policy))
        self._memo: dict[tuple[str, str, str, str, str], tuple[bool, tuple[str, ...]]] = {}
        self._lock = Lock()

    def _ask(self, role: str, relation: str, cleared: bool, handling: str, action: str) -> tuple[bool, tuple[str, ...]]:
        key = (role, relation, "cleared" if cleared else "uncleared", handling, action)
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
            allowed, rule = self._ask(
                facts.role, relation, facts.cleared, facts.handling, facts.action
            )
            if rule:
                rules.append(rule)
            if allowed:
                return Decision(True, relation, tuple(rules), self.policy_hash)
        return Decision(False, None, tuple(rules), self.policy_hash)

    def allows(self, facts: Facts) -> bool:
        """Shorthand for ``decide(facts).allowed``."""
        return self.decide(facts).allowed

    @cached_property
    def all_handlings(self) -> tuple[str, ...]:
        """Handling codes the listing filter enumerates."""
        from vault.models import Handling

        return tuple(h.value for h in Handling)

    def readable_classes(
        self, *, role: str, action: str, cleared_for: frozenset[str], classifications: tuple[str, ...]
    ) -> dict[str, list[tuple[str, str]]]:
        """For listing: per relation, the (classification, handling) pairs the caller may read."""
        out: dict[str, list[tuple[str, str]]] = {}
        for relation in RELATIONS:
            pairs = [
                (cls, hnd)
                for cls in classifications
                for hnd in self.all_handlings
                if self._ask(role, relation, cls in cleared_for, hnd, action)[0]
            ]
            if pairs:
                out[relation] = pairs
        return out
