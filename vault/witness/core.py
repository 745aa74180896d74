"""The witness: its directory (key and state database) and ``add-checkpoint``.

Implements the checks of c2sp.org/tlog-witness "add-checkpoint" in the order the spec lists
them. Every refusal is a :class:`~vault.errors.VaultError` subclass whose HTTP status the
witness's HTTP app maps in one place:

=====================  ======  ===============================================================
error                  status  when
=====================  ======  ===============================================================
InvalidInput           400     malformed body; old size larger than the checkpoint's size
UnknownLog             404     the checkpoint's origin is not a log this witness follows
LogSignatureInvalid    403     no signature verifies against the log's trusted key
SizeConflict           409     ``old`` is not the size last cosigned (body: that size)
RootConflict           409     same size as last cosigned, different root hash
InconsistentProof      422     the consistency proof does not verify
=====================  ======  ===============================================================

The check against the stored state and the write of the new state happen in ONE SQLite
``BEGIN IMMEDIATE`` transaction (the spec's "MUST be performed atomically"): a second request
waits for the first to commit and then sees its state, so concurrent requests can neither roll
the state back nor get two roots cosigned for one size. A refused request changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from vault.errors import (
    AccessDenied,
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    StorageUnavailable,
    VaultMissing,
)
from vault.ledger import merkle
from vault.ledger.note import (
    Checkpoint,
    NoteError,
    NoteSignature,
    Verifier,
    open_note,
    parse_checkpoint,
    parse_note,
    parse_verifier_key,
)
from vault.storage.local import fsync_dir
from vault.witness.cosignature import Cosigner, parse_cosigner_key

__all__ = [
    "KEY_FILE",
    "MAX_BODY_BYTES",
    "MAX_PROOF_LINES",
    "MAX_SIZE",
    "STATE_FILE",
    "InconsistentProof",
    "LogHead",
    "LogSignatureInvalid",
    "RootConflict",
    "SizeConflict",
    "UnknownLog",
    "Witness",
    "init_witness",
    "parse_add_checkpoint",
]

KEY_FILE = "witness.key"
STATE_FILE = "witness.db"
MAX_PROOF_LINES = 63
"""tlog-witness: "The client MUST NOT send more than 63 consistency proof lines"."""
MAX_SIZE = (1 << 63) - 1
"""Largest tree size the witness accepts. tlog-checkpoint allows 64-bit sizes; the state is a
SQLite INTEGER (signed 64-bit), and the issue asks for sizes over 2^63 to be refused (400)."""
MAX_BODY_BYTES = 64 * 1024
"""Largest request body: 63 proof lines and a checkpoint with 100 signatures fit easily."""

_KEY_TMP = KEY_FILE + ".tmp"
# What an init that stopped before writing the key can leave: its state database (SQLite's
# files) and the key's temporary file.
_INIT_LEFTOVERS = frozenset(
    {STATE_FILE, STATE_FILE + "-journal", STATE_FILE + "-wal", STATE_FILE + "-shm", _KEY_TMP}
)
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_BUSY_TIMEOUT_S = 30.0


class UnknownLog(NotFound):
    """The checkpoint's origin is not a log this witness follows (HTTP 404)."""

    code = "unknown_log"


class LogSignatureInvalid(AccessDenied):
    """No signature on the checkpoint verifies against the log's trusted key (HTTP 403)."""

    code = "log_signature_invalid"


class SizeConflict(Conflict):
    """``old`` is not the size this witness last cosigned; ``witness_size`` is (HTTP 409)."""

    code = "size_conflict"

    def __init__(self, message: str, *, witness_size: int) -> None:
        super().__init__(message)
        self.witness_size = witness_size


class RootConflict(Conflict):
    """The checkpoint has the size last cosigned but another root: a split view (HTTP 409)."""

    code = "root_conflict"


class InconsistentProof(InvalidInput):
    """The consistency proof from the old size to the checkpoint does not verify (HTTP 422)."""

    code = "inconsistent_proof"


@dataclass(frozen=True)
class AddCheckpointRequest:
    """A parsed ``add-checkpoint`` body whose checkpoint signature is NOT yet verified."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str
    checkpoint: Checkpoint


@dataclass(frozen=True)
class LogHead:
    """A followed log and the latest checkpoint this witness cosigned for it (size 0: none)."""

    origin: str
    log_vkey: str
    size: int
    root_hash: bytes
    cosigned_at: int | None
    checkpoint: str | None


def _decimal(text: str, what: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise InvalidInput(f"{what} is not a decimal number without leading zeros")
    value = int(text)
    if value > MAX_SIZE:
        raise InvalidInput(f"{what} {value} exceeds 2^63 - 1")
    return value


def parse_add_checkpoint(body: bytes) -> AddCheckpointRequest:
    """Parse ``old N\\n``, up to 63 base64 hash lines, an empty line and a signed checkpoint.

    Raises InvalidInput (400) for anything malformed. Signatures are not checked here."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidInput(f"request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InvalidInput("request body is not valid UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise InvalidInput("request body has no empty line before the checkpoint")
    lines = head.split("\n")
    first = lines[0]
    if not first.startswith("old "):
        raise InvalidInput("request body does not start with an 'old <size>' line")
    old_size = _decimal(first[len("old ") :], "old size")
    proof_lines = lines[1:]
    if len(proof_lines) > MAX_PROOF_LINES:
        raise InvalidInput(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof: list[bytes] = []
    for line in proof_lines:
        try:
            raw = base64.b64decode(line.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            raise InvalidInput("consistency proof line is not base64") from None
        if len(raw) != merkle.HASH_SIZE or base64.b64encode(raw).decode("ascii") != line:
            raise InvalidInput("consistency proof line is not one base64 SHA-256 hash")
        proof.append(raw)
    try:
        checkpoint = parse_checkpoint(parse_note(note).text)
    except NoteError as exc:
        raise InvalidInput(f"malformed checkpoint: {exc}") from None
    if checkpoint.size > MAX_SIZE:
        raise InvalidInput(f"checkpoint size {checkpoint.size} exceeds 2^63 - 1")
    return AddCheckpointRequest(old_size, tuple(proof), note, checkpoint)


# --------------------------------------------------------------------------- the state database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    origin TEXT PRIMARY KEY,
    vkey TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS heads (
    origin TEXT PRIMARY KEY REFERENCES logs(origin),
    size INTEGER NOT NULL CHECK (size >= 0),
    root BLOB NOT NULL CHECK (length(root) = 32),
    cosigned_at INTEGER NOT NULL,
    checkpoint TEXT NOT NULL
);
-- Defence in depth under the code's checks: the state only ever moves forward.
CREATE TRIGGER IF NOT EXISTS heads_forward_only BEFORE UPDATE ON heads
WHEN NEW.size < OLD.size OR (NEW.size = OLD.size AND NEW.root != OLD.root)
BEGIN SELECT RAISE(ABORT, 'witness state may not roll back or change a cosigned root'); END;
CREATE TRIGGER IF NOT EXISTS heads_no_delete BEFORE DELETE ON heads
BEGIN SELECT RAISE(ABORT, 'witness state may not be deleted'); END;
"""


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves.
    conn = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT_S)
    conn.execute("PRAGMA synchronous=FULL")  # "MUST persist the new checkpoint before responding"
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _log_verifier(vkey: str) -> Verifier:
    try:
        return parse_verifier_key(vkey.strip())
    except NoteError as exc:
        raise InvalidInput(f"log verifier key: {exc}") from None


def init_witness(directory: Path, *, name: str, log_vkeys: Iterable[str]) -> Cosigner:
    """Create a witness in ``directory`` (mode 0700): a fresh key (0600) and a state database
    following the logs of ``log_vkeys`` (type 0x01 vkeys whose names are the log origins).

    The key is written last, in one rename: a folder without it holds no witness yet (nothing
    was ever cosigned from it), so init run again after a crash finishes the job.

    Raises Conflict if a witness already lives there, InvalidInput for a bad name or vkey."""
    verifiers = [_log_verifier(v) for v in log_vkeys]
    if not verifiers:
        raise InvalidInput("a witness needs at least one --log-vkey")
    if len({v.name for v in verifiers}) != len(verifiers):
        raise InvalidInput("two log verifier keys for the same origin")
    try:
        cosigner = Cosigner.generate(name)
    except NoteError as exc:
        raise InvalidInput(f"witness name: {exc}") from None
    _prepare_directory(directory)
    with closing(_connect(directory / STATE_FILE)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO logs (origin, vkey) VALUES (?, ?)",
            [(v.name, v.vkey()) for v in verifiers],
        )
        conn.execute("COMMIT")
    fsync_dir(directory)  # the state's name is on disk before the key's can be
    _write_key(directory, cosigner)
    return cosigner


def _prepare_directory(directory: Path) -> None:
    """Make ``directory`` (0700) ready for a new witness: it must be new, empty, or hold only
    what an interrupted init left (a state that never cosigned, no key). Raises Conflict."""
    if (directory / KEY_FILE).exists():
        if directory.is_dir() and not (directory / STATE_FILE).exists():
            raise Conflict(
                f"{directory} holds a witness key but no state: restore {STATE_FILE} from its "
                "backup (a fresh state would cosign a log rolled back behind the old one)"
            )
        raise Conflict(f"a witness already exists in {directory}")
    # Only a new or empty directory: init tightens its mode to 0700, which must never happen
    # to a home or project folder given by mistake.
    if directory.exists() and (
        not directory.is_dir() or any(p.name not in _INIT_LEFTOVERS for p in directory.iterdir())
    ):
        raise Conflict(f"{directory} exists and is not an empty directory")
    if (directory / STATE_FILE).exists() and _has_cosigned(directory / STATE_FILE):
        raise Conflict(
            f"{directory} holds a witness's state but not its key: restore {KEY_FILE} from "
            "its backup (init would start a new witness from nothing)"
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask
    for leftover in _INIT_LEFTOVERS:
        (directory / leftover).unlink(missing_ok=True)


def _has_cosigned(db_path: Path) -> bool:
    """Whether a state database without a key ever recorded a cosigned checkpoint; True when
    it can't be read, so only a state known to be unused is discarded."""
    try:
        with closing(_connect(db_path)) as conn:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'heads'").fetchone():
                return False  # the crash came before the schema was whole
            return conn.execute("SELECT 1 FROM heads LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return True


def _write_key(directory: Path, cosigner: Cosigner) -> None:
    """Write the key under a temporary name (0600, synced), then link it into place: it
    appears whole or not at all, and never replaces a key another init put there."""
    tmp = directory / _KEY_TMP
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(cosigner.skey() + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, directory / KEY_FILE)
    except FileExistsError:
        raise Conflict(f"a witness already exists in {directory}") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(directory)


def _load_key(key_path: Path) -> Cosigner:
    try:
        info = key_path.stat()
    except FileNotFoundError:
        raise VaultMissing(f"no witness key at {key_path} (run 'blovault witness init')") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(f"witness key {key_path} is readable by others: chmod 600 it")
    try:
        return parse_cosigner_key(key_path.read_text(encoding="utf-8").strip())
    except (NoteError, UnicodeDecodeError) as exc:
        raise ConfigError(f"witness key {key_path} is malformed: {exc}") from None


class Witness:
    """A witness opened from its directory: cosigns checkpoints that extend what it cosigned."""

    def __init__(
        self, *, directory: Path, cosigner: Cosigner, clock: Callable[[], float] = time.time
    ) -> None:
        """Use ``cosigner`` and the state database in ``directory``; ``clock`` gives POSIX time."""
        self.directory = directory
        self.cosigner = cosigner
        self._db_path = directory / STATE_FILE
        self._clock = clock

    @classmethod
    def open(cls, directory: Path, *, clock: Callable[[], float] = time.time) -> Witness:
        """Open the witness in ``directory``; VaultMissing if there is none, ConfigError if its
        key file is unsafe or malformed."""
        state, key = directory / STATE_FILE, directory / KEY_FILE
        if not state.is_file():
            if key.exists():
                # A fresh state would let this key cosign from size 0 again: a log rolled
                # back behind what it cosigned before would pass. Never made by init (it
                # writes the key last), so the state was lost: only its backup will do.
                raise VaultMissing(
                    f"no witness state at {state} beside its key: restore {STATE_FILE} "
                    "from its backup"
                )
            raise VaultMissing(f"no witness state at {state} (run 'blovault witness init')")
        if not key.exists():
            raise VaultMissing(
                f"no witness key at {key} (an interrupted init: run 'blovault witness init' "
                "again; a lost key: restore it from its backup)"
            )
        return cls(directory=directory, cosigner=_load_key(key), clock=clock)

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """One write transaction taken up front (BEGIN IMMEDIATE), committed on success."""
        try:
            conn = _connect(self._db_path)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"witness state database: {exc}") from None
        with closing(conn):
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StorageUnavailable(f"witness state database busy: {exc}") from None
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def heads(self) -> list[LogHead]:
        """Every followed log with its latest cosigned checkpoint, by origin."""
        with closing(_connect(self._db_path)) as conn:
            rows = conn.execute(
                "SELECT l.origin, l.vkey, h.size, h.root, h.cosigned_at, h.checkpoint "
                "FROM logs l LEFT JOIN heads h ON h.origin = l.origin ORDER BY l.origin"
            ).fetchall()
        return [
            LogHead(
                origin=origin,
                log_vkey=vkey,
                size=size or 0,
                root_hash=root if root is not None else merkle.EMPTY_ROOT,
                cosigned_at=cosigned_at,
                checkpoint=checkpoint,
            )
            for origin, vkey, size, root, cosigned_at, checkpoint in rows
        ]

    def add_checkpoint(self, body: bytes) -> str:
        """Handle a tlog-witness ``add-checkpoint`` body; return the cosignature line(s).

        Raises the errors in the module docstring; on any of them nothing is stored."""
        req = parse_add_checkpoint(body)
        origin = req.checkpoint.origin
        with closing(_connect(self._db_path)) as conn:
            row = conn.execute("SELECT vkey FROM logs WHERE origin = ?", (origin,)).fetchone()
        if row is None:
            raise UnknownLog(f"unknown log origin {origin!r}")
        try:
            # Ignores signatures from unknown keys (the spec's MUST); needs one good one.
            open_note(req.note, [parse_verifier_key(row[0])])
        except NoteError:
            raise LogSignatureInvalid(f"no valid signature from the log {origin!r}") from None
        new = req.checkpoint
        if req.old_size > new.size:
            raise InvalidInput(
                f"old size {req.old_size} is larger than the checkpoint's {new.size}"
            )
        body_text = new.to_text()
        with self._immediate() as conn:
            head = conn.execute(
                "SELECT size, root, cosigned_at FROM heads WHERE origin = ?", (origin,)
            ).fetchone()
            size, root, last_time = head if head else (0, merkle.EMPTY_ROOT, 0)
            if req.old_size != size:
                raise SizeConflict(
                    f"old size {req.old_size} is not the size last cosigned, {size}",
                    witness_size=size,
                )
            if new.size == size:
                if req.proof:
                    raise InconsistentProof("the proof between equal sizes must be empty")
                if new.root_hash != root:
                    raise RootConflict(
                        f"size {size} was cosigned with another root: refusing a split view"
                    )
            else:
                try:
                    merkle.verify_consistency(size, new.size, root, new.root_hash, req.proof)
                except merkle.ProofError as exc:
                    raise InconsistentProof(f"consistency proof does not verify: {exc}") from None
            # Never date a cosignature before the last one: a later statement must not look
            # older if the clock steps back.
            timestamp = max(int(self._clock()), last_time)
            cosignature: NoteSignature = self.cosigner.cosign(body_text, timestamp)
            conn.execute(
                "INSERT INTO heads (origin, size, root, cosigned_at, checkpoint) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET "
                "size = excluded.size, root = excluded.root, "
                "cosigned_at = excluded.cosigned_at, checkpoint = excluded.checkpoint",
                (origin, new.size, new.root_hash, timestamp, req.note),
            )
        return cosignature.line()
