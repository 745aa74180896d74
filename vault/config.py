"""Settings, read from ``VAULT_*`` environment variables by :func:`load_settings`.

With nothing configured the vault runs on embedded defaults under ``VAULT_DATA_DIR``: SQLite in
WAL mode, a local-disk object store and development keys generated on first start. Production
mode (``VAULT_ENV=production``) refuses development keys; see :mod:`vault.keys`.
"""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from vault.errors import ConfigError

__all__ = [
    "GiB",
    "MiB",
    "Settings",
    "default_policy_dir",
    "load_settings",
]

GiB = 1024**3
MiB = 1024**2


class Settings(BaseSettings):
    """Every knob of the vault; one instance is built per process and passed down."""

    model_config = SettingsConfigDict(env_prefix="VAULT_", extra="ignore", frozen=True)

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path("vault-data")

    # Metadata and ledger database; SQLite under data_dir when unset.
    database_url: str | None = None

    # Object store for ciphertext.
    store: Literal["local", "minio"] = "local"
    store_dir: Path | None = None
    s3_endpoint: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_bucket: str = "blo-vault"
    s3_secure: bool = True
    s3_region: str | None = None
    s3_ca_file: Path | None = None
    # Days of COMPLIANCE-mode object lock on stored ciphertext; 0 = no lock.
    s3_object_lock_days: int = Field(default=0, ge=0)

    # Key files. Unset in development: generated under data_dir/dev-keys on first start.
    kek_file: Path | None = None
    # Older KEKs still needed to unwrap data keys until `admin rotate-kek` has re-wrapped them.
    kek_old_files: list[Path] = Field(default_factory=list)
    jwt_key_file: Path | None = None
    ledger_key_file: Path | None = None

    # Tokens.
    token_issuer: str = "blo-vault"
    token_audience: str = "blo-vault-api"
    token_ttl_seconds: int = Field(default=900, ge=30, le=86_400)

    # Sessions: a login starts one; its refresh token (rotated on every use) gets new access
    # tokens until the session has gone this long without a refresh, or has lasted this long
    # in all (a shift), whichever comes first. Logout, a password change and an admin's
    # disable or role/clearance change end sessions at once.
    session_idle_seconds: int = Field(default=30 * 60, ge=1, le=7 * 86_400)
    session_max_seconds: int = Field(default=12 * 3600, ge=1, le=30 * 86_400)

    # Ledger checkpoints: C2SP origin line and signing cadence.
    ledger_origin: str = "blo-vault.local/ledger"
    checkpoint_interval_seconds: int = Field(default=60, ge=1)
    # Entry version written from now on: 2 commits to the sensitive fields and keeps their
    # openings sealed apart (README "What the log reveals"); 1 (the old format, still
    # selectable for deployments whose tooling reads entries) writes them in the clear.
    ledger_entry_version: Literal[1, 2] = 2
    # Destroy the openings of entries older than this many days (None: keep them).
    ledger_opening_retention_days: int | None = Field(default=None, ge=1)

    # Witnesses (c2sp.org/tlog-witness): a C2SP tlog-policy file naming this log, the
    # counterparts' witnesses with their URLs, and the quorum. When set, the server sends each
    # witness the newest checkpoint every witness_cadence_seconds (if the log grew) and
    # publishes the cosigned checkpoint once the quorum is met; appends never wait for it.
    witness_policy: Path | None = None
    witness_cadence_seconds: float = Field(default=10.0, gt=0, le=86_400)
    # Per request to a witness (connect, send, answer): a slow witness only delays publication.
    witness_timeout_seconds: float = Field(default=5.0, gt=0, le=300)

    # Seizure statistics keep each package's opened day totals (and their groupings) in the
    # server process, least recently used dropped past this many rows (about 300 bytes each).
    stats_cache_rows: int = Field(default=500_000, ge=0)

    # The server hands memory that transfers freed back to the system this often (glibc's
    # malloc_trim; api/memory.py says why); 0 never.
    malloc_trim_seconds: float = Field(default=10.0, ge=0, le=3600)

    # Limits.
    max_file_size: int = Field(default=10 * GiB, ge=1)
    max_package_size: int = Field(default=20 * GiB, ge=1)
    max_files_per_package: int = Field(default=1000, ge=1)
    max_metadata_bytes: int = Field(default=64 * 1024, ge=1024)

    # Brute force: after this many failures a username (or client address) is locked out,
    # for lockout_base_seconds doubling with every further failure, up to lockout_max_seconds.
    login_failures_per_user: int = Field(default=5, ge=1)
    login_failures_per_address: int = Field(default=20, ge=1)
    lockout_base_seconds: int = Field(default=30, ge=1)
    lockout_max_seconds: int = Field(default=3600, ge=1)
    # Failures older than this, with no lockout still running, are forgotten (and their rows
    # pruned): a typo a month ago must not count towards today's lockout, and names sprayed
    # once must not fill the table for ever.
    login_failure_window_seconds: int = Field(default=86400, ge=60)
    # Refusals of callers not authenticated (bad tokens, failed logins) each get an entry up
    # to this many a minute from one client address, and from all of them in one process;
    # beyond, they are counted and recorded as one summary entry refusal_summary_seconds
    # later (vault.service.refusals: a client must not be able to grow the ledger at will).
    refusal_entries_per_address: int = Field(default=60, ge=1)
    refusal_entries_total: int = Field(default=600, ge=1)
    refusal_summary_seconds: float = Field(default=60.0, gt=0, le=3600)

    # A request body that sends nothing for this long is cut off (slow-body attacks).
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    # JSON request bodies larger than this are refused with 413.
    max_json_bytes: int = Field(default=64 * 1024, ge=1024)
    # A body must also average body_min_rate bytes/s over every body_rate_window_seconds the
    # server spends waiting for it (0: no minimum), so one trickled byte every few seconds is
    # cut off. A rate, not a total deadline: a 2 GiB upload over a slow link still gets through.
    body_min_rate: int = Field(default=1024, ge=0)
    body_rate_window_seconds: float = Field(default=30.0, gt=0)
    # Request headers not complete this long after the server began waiting for them: 408.
    header_timeout_seconds: float = Field(default=10.0, gt=0)

    # Reverse proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For/-Proto are believed.
    # Empty (the default): forwarded headers are ignored and the client address is the peer of
    # the socket, so a client can't rotate the header to escape the per-address login lockout.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Bearer token a Prometheus scraper sends for GET /metrics; unset: /metrics answers 404.
    metrics_token: SecretStr | None = Field(default=None, min_length=16)

    # argon2id cost; defaults follow RFC 9106's second recommended option.
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=64 * 1024, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)
    # At most this many hashes or checks at once per process (each holds argon2_memory_kib).
    argon2_max_concurrent: int = Field(default=4, ge=1)

    # Releases of packages classified at or above this to another country need a second
    # person (a supervisor of the originating agency who is not the requester) to approve.
    four_eyes_from: Literal["UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET"] = "CONFIDENTIAL"

    # Originator-signed packages (issue 13): whether an upload must carry a signed manifest.
    # Unset: required in production, optional in development (README "Signed packages").
    require_signatures: bool | None = None

    # Casbin model and policy; the packaged copy when unset.
    policy_dir: Path | None = None

    @field_validator("ledger_origin")
    @classmethod
    def _origin_is_one_line(cls, value: str) -> str:
        if not value or "\n" in value or value != value.strip():
            raise ValueError("ledger_origin must be one non-empty line without outer spaces")
        return value

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        # Empty is unset: a compose file passes ``${VAULT_METRICS_TOKEN:-}`` whether or not
        # .env sets it, and an empty token must mean no /metrics, not a refused start.
        return None if value == "" else value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies_are_networks(cls, value: object) -> object:
        # Checked here rather than left to uvicorn, which takes a mistyped address for a
        # literal host name that never matches: the proxy would silently not be trusted.
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        if not isinstance(value, list):
            return value
        return [str(ipaddress.ip_network(str(item).strip(), strict=False)) for item in value]

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> Settings:
        """Production refuses the ``change-me-...`` secrets of .env.example, which the compose
        file only checks are not empty."""
        if self.env != "production":
            return self
        secrets = {
            "VAULT_S3_SECRET_KEY": self.s3_secret_key and self.s3_secret_key.get_secret_value()
        }
        if self.database_url:
            # A malformed URL is refused where the database is opened, with its own message.
            with contextlib.suppress(ArgumentError):
                secrets["the database URL's password"] = make_url(self.database_url).password
        for name, value in secrets.items():
            if isinstance(value, str) and value.lower().startswith("change-me"):
                # Not a ValueError: pydantic would quote the whole input, secrets and all.
                raise ConfigError(f"{name} is still the .env.example placeholder: set a secret")
        return self

    @property
    def signatures_required(self) -> bool:
        """Whether unsigned uploads are refused (``require_signatures``, else production)."""
        if self.require_signatures is not None:
            return self.require_signatures
        return self.env == "production"

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force: the configured one, or SQLite under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'vault.db').resolve()}"

    @property
    def resolved_store_dir(self) -> Path:
        """Folder of the local object store."""
        return (self.store_dir or self.data_dir / "objects").resolve()

    @property
    def resolved_policy_dir(self) -> Path:
        """Folder holding ``model.conf`` and ``policy.csv``."""
        if self.policy_dir is not None:
            return self.policy_dir
        return default_policy_dir()


def default_policy_dir() -> Path:
    """The packaged policies: inside the wheel, or ``policies/`` of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_policies", here.parent / "policies"):
        if (candidate / "model.conf").is_file():
            return candidate
    raise ConfigError("no Casbin policy found; set VAULT_POLICY_DIR")


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides winning (used by tests)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        # Each field and why, never the value given: it may be a secret (a token, a password).
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {exc}") from None
