"""The one entry point the API, the web pages and the CLI all call.

Each operation authorises through :class:`~vault.authz.Authorizer`, acts, and appends to the
ledger in the same database transaction as the action. Refusals are appended in a transaction
of their own and then raised. Items a caller may not know exist are refused with NotFound,
exactly like items that don't exist.

:class:`Vault` is a facade: it builds one shared :class:`~vault.service._core.Core` and one
service per domain over it, and delegates each operation to its service. A new operation goes
in the service of its domain (``identity``, ``admin``, ``packages``, ``releases``, ``audit``,
``ledger_ops``), with a one-line delegation here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime, timedelta

from sqlalchemy import Engine

from vault.authz import Authorizer
from vault.config import Settings
from vault.db import deployment_warnings
from vault.keys import KeyMaterial, key_file_warnings
from vault.ledger import note
from vault.ledger.entry import Entry
from vault.listing import PackageFilter
from vault.models import Classification, Role
from vault.passwords import Passwords
from vault.schemas import (
    AuditView,
    CheckpointInfo,
    ConsistencyProof,
    Explanation,
    InclusionProof,
    KeyHistory,
    LedgerEntries,
    LedgerReport,
    LoginResult,
    NewPackage,
    OfficerKeyInfo,
    PackageDetail,
    PackageList,
    ReleaseInfo,
    ReleaseResult,
    UploadResult,
    UserInfo,
    WitnessedCheckpointInfo,
    WitnessStatus,
)
from vault.seizures.figures import BeforeAfter, SeizureStats
from vault.seizures.schema import CrossingPointInfo, SeizureRecord
from vault.service._core import (
    ALLOW,
    DENY,
    ERROR,
    POLICY_REFRESH_SECONDS,
    Core,
    Principal,
    local_operator,
    new_id,
)
from vault.service.access import Access, listing_params, package_facts
from vault.service.admin import GC_GRACE, AdminService, Purged
from vault.service.audit import AuditService
from vault.service.identity import IdentityService
from vault.service.ledger_ops import MAX_LEDGER_PAGE, LedgerService, TextOut
from vault.service.officer_keys import OfficerKeyService
from vault.service.packages import MAX_PAGE, Download, IncomingFile, PackageService
from vault.service.reads import AuditedReads
from vault.service.releases import ReleaseService
from vault.service.seizures import SeizureService
from vault.service.sessions import Sessions
from vault.service.signatures import SignedManifest
from vault.storage import ObjectStore
from vault.tokens import TokenService
from vault.websessions import WebSessionStore
from vault.witness.running import PublishingThread

__all__ = [
    "ALLOW",
    "DENY",
    "ERROR",
    "MAX_LEDGER_PAGE",
    "MAX_PAGE",
    "POLICY_REFRESH_SECONDS",
    "Core",
    "Download",
    "IncomingFile",
    "Principal",
    "Purged",
    "Vault",
    "listing_params",
    "local_operator",
    "new_id",
    "package_facts",
]


class Vault:
    """The vault's service layer: every operation decides, acts and records.

    The domain services are public attributes (``core``, ``access``, ``identity``, ``admin``,
    ``packages``, ``releases``, ``audit``, ``ledger``, ``seizures``) for callers that measure
    or test one part; the API and the CLI call the operations below.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        store: ObjectStore,
        keys: KeyMaterial,
        authz: Authorizer,
        passwords: Passwords,
        tokens: TokenService,
    ) -> None:
        self._attach(
            Core(
                settings=settings,
                engine=engine,
                store=store,
                keys=keys,
                authz=authz,
                passwords=passwords,
                tokens=tokens,
            )
        )

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        store: ObjectStore | None = None,
        create: bool = True,
        repair: bool = True,
        require_guard: bool = True,
    ) -> Vault:
        """Build the service from settings: database, store, keys, policy.

        ``create`` lets it make what is missing (data folder, SQLite file, development keys,
        schema): only ``admin init`` and embedded uses ask for that. Without it a missing
        vault is VaultMissing naming where it looked, and nothing is written there.

        ``repair`` (development only) upgrades the schema and restores the ledger's
        append-only guard on open; without it the database is only checked, as production
        always does, so a command that inspects the vault never changes it. A ledger whose
        guard is gone stops the start, unless ``require_guard`` is False (``ledger verify``:
        then it is only logged).
        """
        return cls.over(
            Core.open(
                settings, store=store, create=create, repair=repair, require_guard=require_guard
            )
        )

    @classmethod
    def over(cls, core: Core) -> Vault:
        """The facade over an existing core (its services built on it)."""
        vault = cls.__new__(cls)
        vault._attach(core)
        return vault

    def _attach(self, core: Core) -> None:
        self.core = core
        sessions = Sessions(core)
        self.access = Access(core)
        self.identity = IdentityService(core, sessions)
        self.admin = AdminService(core, sessions)
        self.packages = PackageService(core, self.access)
        self.releases = ReleaseService(core, self.access)
        self.audit = AuditService(core, self.access)
        self.ledger = LedgerService(core)
        self.seizures = SeizureService(core, self.access)
        self.officer_keys = OfficerKeyService(core, self.ledger)
        # The API's hot path for reads: the same operations, their entries awaited on a loop.
        self.reads = AuditedReads(core, self.identity, self.packages)

    def close(self) -> None:
        """Finish pending ledger appends and release database connections."""
        self.core.close()

    def deployment_warnings(self) -> list[str]:
        """What about its database and key files the operator should fix, though the vault
        runs (``serve`` prints them)."""
        return deployment_warnings(self.core.engine) + key_file_warnings(self.core.settings)

    # --- what the vault is built from -----------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings the vault runs with."""
        return self.core.settings

    @property
    def engine(self) -> Engine:
        """The database engine."""
        return self.core.engine

    @property
    def store(self) -> ObjectStore:
        """The object store holding sealed file contents."""
        return self.core.store

    @property
    def keys(self) -> KeyMaterial:
        """The key material (KEKs, ledger and token keys)."""
        return self.core.keys

    @property
    def passwords(self) -> Passwords:
        """The password hasher."""
        return self.core.passwords

    @property
    def tokens(self) -> TokenService:
        """The access-token service."""
        return self.core.tokens

    @property
    def authz(self) -> Authorizer:
        """The authorizer for the policy version in force (admin rules re-read twice a second)."""
        return self.core.authz

    def decision_counts(self) -> dict[str, int]:
        """Ledger entries this process wrote, by decision (for metrics)."""
        return self.core.decision_counts()

    def refusals_summarised(self) -> int:
        """Refusals this process counted into summary entries (vault.service.refusals)."""
        return self.core.refusals.suppressed.total

    def record_refused_request(
        self, principal: Principal, *, route: str, reason: str, package_id: str | None = None
    ) -> int:
        """Record a request the API refused before any operation ran; the receipt."""
        return self.core.record_refused_request(
            principal, route=route, reason=reason, package_id=package_id
        )

    # --- identity -------------------------------------------------------------------------------

    def login(self, username: str, password: str, *, client: str = "") -> LoginResult:
        """Check a password and start a session (see IdentityService.login)."""
        return self.identity.login(username, password, client=client)

    def authenticate(
        self, token: str, *, client: str = "", now: datetime | None = None
    ) -> Principal:
        """The caller a token speaks for; AuthenticationFailed otherwise."""
        return self.identity.authenticate(token, client=client, now=now)

    def reading_as(self, token: str) -> contextlib.AbstractContextManager[Principal]:
        """The caller a token speaks for, its reads sharing one transaction (see identity)."""
        return self.identity.reading_as(token)

    def refresh(
        self, refresh_token: str, *, client: str = "", now: datetime | None = None
    ) -> LoginResult:
        """New tokens for a live session; the refresh token presented is spent."""
        return self.identity.refresh(refresh_token, client=client, now=now)

    def logout(self, principal: Principal) -> int:
        """End the caller's session; returns the ledger receipt."""
        return self.identity.logout(principal)

    def change_password(
        self, principal: Principal, current_password: str, new_password: str
    ) -> LoginResult:
        """Change the caller's password, end their sessions and start a new one."""
        return self.identity.change_password(principal, current_password, new_password)

    # --- administration -------------------------------------------------------------------------

    def add_country(self, principal: Principal, code: str, name: str) -> int:
        """Create a country; returns the ledger receipt."""
        return self.admin.add_country(principal, code, name)

    def add_agency(self, principal: Principal, code: str, country: str, name: str) -> int:
        """Create an agency of an existing country; returns the ledger receipt."""
        return self.admin.add_agency(principal, code, country, name)

    def add_user(
        self,
        principal: Principal,
        *,
        username: str,
        agency: str,
        role: Role,
        password: str,
        clearance: Classification = Classification.UNCLASSIFIED,
    ) -> UserInfo:
        """Create a user with an argon2id-hashed password."""
        return self.admin.add_user(
            principal,
            username=username,
            agency=agency,
            role=role,
            password=password,
            clearance=clearance,
        )

    def set_user(
        self,
        principal: Principal,
        username: str,
        *,
        role: Role | None = None,
        clearance: Classification | None = None,
        disabled: bool | None = None,
    ) -> UserInfo:
        """Change a user's role, clearance or disabled flag; ends their sessions."""
        return self.admin.set_user(
            principal, username, role=role, clearance=clearance, disabled=disabled
        )

    def rules(self, principal: Principal) -> list[str]:
        """Rules admins added on top of the policy file."""
        return self.admin.rules(principal)

    def change_rule(self, principal: Principal, line: str, *, add: bool) -> str:
        """Add or remove an admin rule; returns the resulting policy hash."""
        return self.admin.change_rule(principal, line, add=add)

    def rotate_kek(self, principal: Principal, *, batch: int = 500) -> int:
        """Re-wrap every data key not under the current KEK; returns how many."""
        return self.admin.rotate_kek(principal, batch=batch)

    def purge(self, principal: Principal, package_id: str) -> Purged:
        """Crypto-shred a package; its ledger receipt, and whether the log was emptied."""
        return self.admin.purge(principal, package_id)

    def gc(self, principal: Principal, *, grace: timedelta = GC_GRACE) -> tuple[int, int, int]:
        """Delete stray objects; returns (objects removed, temp files removed, receipt)."""
        return self.admin.gc(principal, grace=grace)

    # --- officers' signing keys (issue 13) ------------------------------------------------------

    def register_key(
        self, principal: Principal, public_key: str, *, owner: str | None = None
    ) -> OfficerKeyInfo:
        """Register an officer's Ed25519 public key (base64); a key.register ledger entry."""
        return self.officer_keys.register(principal, public_key, owner=owner)

    def revoke_key(
        self, principal: Principal, key_id: str, *, owner: str | None = None
    ) -> OfficerKeyInfo:
        """Revoke an officer's key; a key.revoke ledger entry."""
        return self.officer_keys.revoke(principal, key_id, owner=owner)

    def show_key(self, principal: Principal, key_id: str) -> OfficerKeyInfo:
        """A registered key with the inclusion proof of its registration."""
        return self.officer_keys.show(principal, key_id)

    def key_history(self, principal: Principal, username: str | None = None) -> KeyHistory:
        """Every key entry of a user in the ledger, with inclusion proofs."""
        return self.officer_keys.history(principal, username)

    # --- packages -------------------------------------------------------------------------------

    def upload(
        self,
        principal: Principal,
        meta: NewPackage,
        files: Iterable[IncomingFile],
        signature: Callable[[], SignedManifest | None] | None = None,
        *,
        records: Sequence[SeizureRecord] = (),
    ) -> UploadResult:
        """Seal and store every file (and seizure records), then record the package: all of it
        or nothing. ``signature`` gives the officer's signed manifest after the files."""
        return self.packages.upload(principal, meta, files, signature, records=records)

    def list_packages(
        self,
        principal: Principal,
        *,
        limit: int = 50,
        offset: int = 0,
        filters: PackageFilter | None = None,
    ) -> PackageList:
        """One page of the packages the caller may read, newest first, within ``filters``."""
        return self.packages.list_packages(principal, limit=limit, offset=offset, filters=filters)

    def get_package(self, principal: Principal, package_id: str) -> tuple[PackageDetail, int]:
        """Details of one package the caller may read, and the ledger receipt."""
        return self.packages.get_package(principal, package_id)

    def download(self, principal: Principal, package_id: str, file_id: str) -> Download:
        """Authorise and record a download; plaintext streamed and checked."""
        return self.packages.download(principal, package_id, file_id)

    # --- releases -------------------------------------------------------------------------------

    def release(
        self,
        principal: Principal,
        package_id: str,
        *,
        country: str,
        agency: str | None = None,
        not_before: datetime | None = None,
        expires_at: datetime | None = None,
    ) -> ReleaseResult:
        """Release a package to a country, or one agency of it, optionally timed."""
        return self.releases.release(
            principal,
            package_id,
            country=country,
            agency=agency,
            not_before=not_before,
            expires_at=expires_at,
        )

    def request_release(
        self, principal: Principal, package_id: str, *, country: str, agency: str | None = None
    ) -> ReleaseResult:
        """Ask the originating agency to release further (H2)."""
        return self.releases.request_release(principal, package_id, country=country, agency=agency)

    def decide_release(
        self, principal: Principal, release_id: str, *, approve: bool
    ) -> ReleaseResult:
        """Approve or reject a pending release (never by its requester)."""
        return self.releases.decide_release(principal, release_id, approve=approve)

    def revoke_release(
        self, principal: Principal, package_id: str, release_id: str
    ) -> ReleaseResult:
        """Withdraw a release; it stops granting access on the very next request."""
        return self.releases.revoke_release(principal, package_id, release_id)

    def acknowledge(self, principal: Principal, package_id: str) -> int:
        """Record that the caller accepts an H3 package's stated restrictions."""
        return self.releases.acknowledge(principal, package_id)

    def pending_releases(self, principal: Principal) -> tuple[list[ReleaseInfo], int]:
        """A supervisor's inbox: pending releases of their agency's packages they may decide."""
        return self.releases.pending_releases(principal)

    # --- audit ----------------------------------------------------------------------------------

    def audit_package(self, principal: Principal, package_id: str) -> tuple[AuditView, int]:
        """What an auditor may see of a package: no title, description, filenames or content."""
        return self.audit.audit_package(principal, package_id)

    def explain(
        self, principal: Principal, *, username: str, package_id: str, action: str
    ) -> tuple[Explanation, int]:
        """Allow or deny for ``username`` doing ``action`` to a package, and why."""
        return self.audit.explain(
            principal, username=username, package_id=package_id, action=action
        )

    # --- seizure records and statistics (issue 16) ---------------------------------------------

    def add_crossing_point(
        self, principal: Principal, code: str, *, country: str, name: str, blo_opened: date
    ) -> int:
        """Register a border-crossing point and its BLO opening date; the ledger receipt."""
        return self.seizures.add_crossing_point(
            principal, code, country=country, name=name, blo_opened=blo_opened
        )

    def crossing_points(self, principal: Principal) -> tuple[list[CrossingPointInfo], int]:
        """Every registered crossing point (code, country, name, blo_opened), by code."""
        return self.seizures.crossing_points(principal)

    def seizure_stats(
        self,
        principal: Principal,
        *,
        by: Sequence[str],
        date_from: date | None = None,
        date_to: date | None = None,
    ) -> tuple[SeizureStats, int]:
        """Seizure totals over exactly the records the caller may read; the ledger receipt."""
        return self.seizures.seizure_stats(principal, by=by, date_from=date_from, date_to=date_to)

    def seizure_before_after(
        self,
        principal: Principal,
        *,
        crossing_point: str | None = None,
        window_days: int | None = None,
    ) -> tuple[list[BeforeAfter], int]:
        """Readable totals in equal windows around each BLO opening date; the receipt."""
        return self.seizures.seizure_before_after(
            principal, crossing_point=crossing_point, window_days=window_days
        )

    # --- ledger ---------------------------------------------------------------------------------

    @property
    def ledger_verifier(self) -> note.Verifier:
        """The C2SP verifier of the log key (name = the ledger's origin)."""
        return self.ledger.verifier

    @property
    def ledger_vkey(self) -> str:
        """The verifier-key string counterparts use to check checkpoints offline."""
        return self.ledger.vkey

    def verify_ledger(
        self,
        principal: Principal,
        progress: Callable[[int], None] | None = None,
        *,
        workers: int = 1,
    ) -> LedgerReport:
        """Verify chain, tree and every signed checkpoint; report the first bad entry."""
        return self.ledger.verify_ledger(principal, progress, workers=workers)

    def checkpoint(self) -> CheckpointInfo:
        """Sign a checkpoint of the current tree (or return the latest if nothing changed)."""
        return self.ledger.checkpoint()

    def latest_checkpoint(self, principal: Principal) -> CheckpointInfo:
        """The newest signed checkpoint (signed now if the tree grew since)."""
        return self.ledger.latest_checkpoint(principal)

    def ledger_entries(self, principal: Principal, start: int, end: int) -> LedgerEntries:
        """Entries ``[start, end)``, at most MAX_LEDGER_PAGE, as base64."""
        return self.ledger.ledger_entries(principal, start, end)

    def inclusion_proof(self, principal: Principal, seq: int) -> InclusionProof:
        """Prove entry ``seq`` is in the tree of the latest checkpoint."""
        return self.ledger.inclusion_proof(principal, seq)

    def consistency_proof(self, principal: Principal, old_checkpoint: str) -> ConsistencyProof:
        """Prove the current ledger extends a checkpoint saved earlier; LedgerCorrupt if not."""
        return self.ledger.consistency_proof(principal, old_checkpoint)

    def export_ledger(
        self,
        principal: Principal,
        out: TextOut,
        progress: Callable[[int], None] | None = None,
        *,
        scoped: bool = False,
    ) -> CheckpointInfo:
        """Write the export document to ``out``, streamed (``scoped``: with the openings the
        caller may see)."""
        return self.ledger.export_ledger(principal, out, progress, scoped=scoped)

    def ledger_show(self, principal: Principal) -> Iterator[Entry]:
        """Every entry, decoded, in order; the read is recorded first."""
        return self.ledger.ledger_show(principal)

    def unscoped_entries(self, start: int = 0, stop: int | None = None) -> list[Entry]:
        """Entries ``[start, stop)``, every committed one opened, unrecorded: the server-side
        operator's (and tests') view, which no route or command exposes."""
        return self.ledger.unscoped_entries(start, stop)

    # --- the web interface's browser sessions -------------------------------------------------

    def web_sessions(self) -> WebSessionStore:
        """The pages' session store, in this vault's database. It only maps a cookie to the
        sealed state the pages keep (service tokens, CSRF token, language); every page still
        authenticates those tokens here, so sign-out, disabling and role changes take effect on
        the next request. Sessions idle out and expire with the service's own."""
        settings = self.core.settings
        return WebSessionStore(
            self.core.engine,
            idle_seconds=settings.session_idle_seconds,
            lifetime_seconds=settings.session_max_seconds,
        )

    # --- witnesses ------------------------------------------------------------------------------

    def witness_publisher(self) -> PublishingThread | None:
        """The witness publisher VAULT_WITNESS_POLICY asks for (the server starts it), or None."""
        return self.ledger.witness_publisher()

    def witnessed_checkpoint(self, principal: Principal) -> WitnessedCheckpointInfo:
        """The newest checkpoint a quorum of witnesses cosigned; NotFound if none yet."""
        return self.ledger.witnessed_checkpoint(principal)

    def tlog_proof(self, principal: Principal, seq: int) -> tuple[str, bytes, int]:
        """A C2SP tlog-proof bundle of entry ``seq``, the entry's bytes and the receipt."""
        return self.ledger.tlog_proof(principal, seq)

    def witness_status(self) -> WitnessStatus:
        """Ledger size, witnessed size and each witness's lag (metrics, ``ledger status``)."""
        return self.ledger.witness_status()

    def ledger_size(self) -> int:
        """Number of ledger entries (for health and metrics)."""
        return self.ledger.ledger_size()

    def stats(self) -> dict[str, int]:
        """Ledger size, packages and plaintext bytes stored (for metrics)."""
        return self.ledger.stats()

    def check_ready(self) -> None:
        """Raise StorageUnavailable unless database and object store answer."""
        self.ledger.check_ready()
