"""C2SP tlog-policy files, and checking a checkpoint's cosignatures against one (pure).

A policy (c2sp.org/tlog-policy) lists the logs whose signature makes a checkpoint, the
witnesses (type 0x04 vkeys, optional submission URLs), groups with thresholds, and the one
quorum rule. :func:`verify_witnessed` accepts a checkpoint only if a listed log signed it and
valid cosignatures from the listed witnesses satisfy the quorum. Any malformed policy is
InvalidInput; a checkpoint that fails the policy is :class:`QuorumNotMet` (a LedgerCorrupt).

Where this is stricter or looser than the spec, it says so next to the code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vault.errors import InvalidInput, LedgerCorrupt
from vault.ledger.note import (
    Checkpoint,
    NoteError,
    Verifier,
    parse_checkpoint,
    parse_note,
    parse_verifier_key,
)
from vault.witness.cosignature import CosignatureVerifier

__all__ = [
    "DEFAULT_MAX_SKEW_S",
    "Group",
    "Policy",
    "PolicyWitness",
    "QuorumNotMet",
    "WitnessedCheckpoint",
    "load_policy",
    "parse_policy",
    "verify_witnessed",
]

DEFAULT_MAX_SKEW_S = 60
"""How far in the future a cosignature's timestamp may be before it is rejected (clock skew
between countries' machines; tlog-cosignature: verifiers MAY reject future timestamps)."""

_MAX_ENTRIES = 256  # the spec asks for at least 32 logs, 32 witnesses and 32 groups
_BAD_OCTETS = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")
_WS = re.compile(r"[ \t]+")
_K = re.compile(r"[1-9][0-9]{0,3}")
NONE = "none"


class QuorumNotMet(LedgerCorrupt):
    """A checkpoint is not signed by a policy log, or its cosignatures do not meet the quorum."""

    code = "quorum_not_met"


@dataclass(frozen=True)
class PolicyWitness:
    """A witness of the policy: its name there, its cosignature key, its URL if given."""

    name: str
    verifier: CosignatureVerifier
    url: str | None = None


@dataclass(frozen=True)
class Group:
    """``group <name> <k> <member>...``: witnessed when at least ``threshold`` members are."""

    name: str
    threshold: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    """A parsed tlog-policy."""

    logs: tuple[tuple[Verifier, str | None], ...]
    witnesses: dict[str, PolicyWitness] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    quorum: str = NONE

    def satisfied_by(self, cosigned: set[str]) -> bool:
        """True if witnesses named in ``cosigned`` meet the quorum."""
        return self._witnessed(self.quorum, cosigned)

    def _witnessed(self, name: str, cosigned: set[str]) -> bool:
        if name == NONE:
            return True
        group = self.groups.get(name)
        if group is None:
            return name in cosigned
        hits = sum(self._witnessed(member, cosigned) for member in group.members)
        return hits >= group.threshold


def _fail(lineno: int, message: str) -> InvalidInput:
    return InvalidInput(f"witness policy line {lineno}: {message}")


def parse_policy(data: bytes | str) -> Policy:
    """Parse a tlog-policy file; InvalidInput naming the line for anything the spec forbids."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    bad = _BAD_OCTETS.search(raw)
    if bad:
        raise InvalidInput(f"witness policy contains control byte 0x{bad.group()[0]:02x}")
    # Octets with the high bit set are opaque to the spec: surrogateescape keeps names exact.
    text = raw.decode("utf-8", errors="surrogateescape")
    logs: list[tuple[Verifier, str | None]] = []
    witnesses: dict[str, PolicyWitness] = {}
    groups: dict[str, Group] = {}
    quorum: str | None = None
    seen_keys: set[bytes] = set()
    # Names already listed as a member of some group: the spec lets a name be a member of
    # one group only, so that no witness counts towards the quorum along two paths (listed
    # in a "uz" and a "kz" group, one witness would meet "all uz kz" alone).
    members_listed: set[str] = set()
    # The spec terminates every line with a newline; a missing final one is tolerated, as
    # policies often arrive through environment variables or editors that drop it.
    for lineno, line in enumerate(text.split("\n"), start=1):
        words = _WS.split(line.strip(" \t"))
        if words == [""] or words[0].startswith("#"):
            continue
        keyword, args = words[0], words[1:]
        if keyword == "log":
            if len(args) not in (1, 2):
                raise _fail(lineno, "expected 'log <vkey> [<url>]'")
            try:
                verifier = parse_verifier_key(args[0])
            except NoteError as exc:
                raise _fail(lineno, f"log vkey: {exc}") from None
            if verifier.public_bytes() in seen_keys:
                raise _fail(lineno, "duplicate public key")
            seen_keys.add(verifier.public_bytes())
            logs.append((verifier, args[1] if len(args) == 2 else None))
        elif keyword == "witness":
            if len(args) not in (2, 3):
                raise _fail(lineno, "expected 'witness <name> <vkey> [<url>]'")
            name = args[0]
            if name == NONE or name in witnesses or name in groups:
                raise _fail(lineno, f"name {name!r} is reserved or already defined")
            try:
                cosigner = CosignatureVerifier.from_vkey(args[1])
            except NoteError as exc:
                raise _fail(lineno, f"witness vkey: {exc}") from None
            if cosigner.public_key in seen_keys:
                raise _fail(lineno, "duplicate public key")
            seen_keys.add(cosigner.public_key)
            witnesses[name] = PolicyWitness(name, cosigner, args[2] if len(args) == 3 else None)
        elif keyword == "group":
            group = _parse_group(lineno, args, witnesses, groups, members_listed)
            groups[group.name] = group
        elif keyword == "quorum":
            if len(args) != 1:
                raise _fail(lineno, "expected 'quorum <name>'")
            if quorum is not None:
                raise _fail(lineno, "a policy has exactly one quorum line")
            if args[0] != NONE and args[0] not in witnesses and args[0] not in groups:
                raise _fail(lineno, f"quorum {args[0]!r} is not defined on an earlier line")
            quorum = args[0]
        else:
            raise _fail(lineno, f"unknown keyword {keyword!r}")
        if max(len(logs), len(witnesses), len(groups)) > _MAX_ENTRIES:
            raise _fail(lineno, f"more than {_MAX_ENTRIES} logs, witnesses or groups")
    if quorum is None:
        raise InvalidInput("witness policy has no quorum line")
    return Policy(tuple(logs), witnesses, groups, quorum)


def _parse_group(
    lineno: int,
    args: list[str],
    witnesses: dict[str, PolicyWitness],
    groups: dict[str, Group],
    members_listed: set[str],
) -> Group:
    """A ``group`` line's group (its members added to ``members_listed``); InvalidInput for
    anything the spec forbids."""
    if len(args) < 3:
        raise _fail(lineno, "expected 'group <name> all|any|<k> <name>...'")
    name, k_text, members = args[0], args[1], tuple(args[2:])
    if name == NONE or name in witnesses or name in groups:
        raise _fail(lineno, f"name {name!r} is reserved or already defined")
    if len(set(members)) != len(members):
        raise _fail(lineno, "a member is listed twice")
    for member in members:
        if member not in witnesses and member not in groups:
            raise _fail(lineno, f"member {member!r} is not defined on an earlier line")
        if member in members_listed:
            raise _fail(lineno, f"{member!r} is already a member of another group")
    members_listed.update(members)
    if k_text == "all":
        k = len(members)
    elif k_text == "any":
        k = 1
    elif _K.fullmatch(k_text) and int(k_text) <= len(members):
        k = int(k_text)
    else:
        raise _fail(lineno, f"threshold must be all, any or 1..{len(members)}")
    return Group(name, k, members)


def load_policy(path: Path) -> Policy:
    """Read and parse the policy file at ``path``; InvalidInput naming it if unreadable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read witness policy {path}: {exc.strerror}") from None
    return parse_policy(data)


@dataclass(frozen=True)
class WitnessedCheckpoint:
    """A checkpoint that passed a policy, and when each witness that counted cosigned it."""

    checkpoint: Checkpoint
    log: str
    cosigned_at: dict[str, int]


def verify_witnessed(
    note: str | bytes,
    policy: Policy,
    *,
    now: int,
    max_skew: int = DEFAULT_MAX_SKEW_S,
    extra_logs: Iterable[Verifier] = (),
) -> WitnessedCheckpoint:
    """Check ``note``: a policy log's signature, and cosignatures meeting the quorum at ``now``.

    Signatures from keys the policy does not list are ignored (signed-note); a listed witness's
    signature that does not verify, or that is dated more than ``max_skew`` seconds after
    ``now``, rejects the whole checkpoint. Raises QuorumNotMet (or InvalidInput if malformed)."""
    try:
        parsed = parse_note(note)
        checkpoint = parse_checkpoint(parsed.text)
    except NoteError as exc:
        raise InvalidInput(f"malformed checkpoint: {exc}") from None
    message = parsed.text.encode("utf-8")
    logs = [v for v, _ in policy.logs] + list(extra_logs)
    signed_by: str | None = None
    for sig in parsed.signatures:
        for log in logs:
            if (sig.name, sig.key_id) != (log.name, log.key_id):
                continue
            if not log.verify(message, sig.signature):
                raise QuorumNotMet(f"invalid signature from log {log.name}")
            # tlog-policy: the log's key name is its origin.
            if log.name == checkpoint.origin:
                signed_by = log.name
    if signed_by is None:
        raise QuorumNotMet(f"checkpoint of {checkpoint.origin!r} is not signed by a policy log")
    cosigned: dict[str, int] = {}
    for sig in parsed.signatures:
        for witness in policy.witnesses.values():
            if not witness.verifier.matches(sig):
                continue
            try:
                timestamp = witness.verifier.verify(parsed.text, sig)
            except NoteError as exc:
                raise QuorumNotMet(f"witness {witness.name}: {exc}") from None
            if timestamp > now + max_skew:
                raise QuorumNotMet(f"witness {witness.name} cosigned in the future ({timestamp})")
            cosigned[witness.name] = timestamp
    if not policy.satisfied_by(set(cosigned)):
        raise QuorumNotMet(
            f"cosignatures from {sorted(cosigned) or 'no witness'} do not meet quorum "
            f"{policy.quorum!r}"
        )
    return WitnessedCheckpoint(checkpoint, signed_by, cosigned)
