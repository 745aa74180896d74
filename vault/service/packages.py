"""Packages: upload (seal and store), list, show and download (open and check)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.exc import OperationalError

from vault import crypto
from vault.authz import NONE, ORIGINATOR, Facts
from vault.errors import (
    AccessDenied,
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    StorageUnavailable,
    TooLarge,
    VaultError,
)
from vault.listing import PackageFilter
from vault.models import Package, PackageFile, utcnow
from vault.schemas import (
    FileInfo,
    NewPackage,
    PackageDetail,
    PackageList,
    PackageSignature,
    PackageSummary,
    UploadResult,
    check_filename,
    check_id,
    filename_key,
)
from vault.seizures.schema import SeizureRecord
from vault.seizures.store import open_records, records_row
from vault.service import sealed, signatures
from vault.service._core import ALLOW, DENY, ERROR, Core, PackageRef, Principal, new_id
from vault.service.access import Access
from vault.service.package_reads import (
    PACKAGE_FILE,
    PACKAGE_FILES,
    PACKAGE_RECORDS,
    PACKAGE_RELEASES,
)
from vault.service.pending import PendingRead
from vault.service.refusals import REFUSALS, records_refusals
from vault.service.releases import ReleaseRow, release_info
from vault.service.sealed import FileRow, OpenedMeta, SealedRow, SummaryRow

MAX_PAGE = 200
_ID_IN_USE = "this package id is already in use; choose a fresh one"


class StoredFileRow(FileRow, Protocol):
    """A file as a download opens it: its details and its wrapped data key."""

    @property
    def kek_id(self) -> str: ...
    @property
    def wrapped_key(self) -> bytes: ...


@dataclass
class IncomingFile:
    """One file of an upload: its name and a stream of its plaintext."""

    name: str
    reader: crypto.Readable


@dataclass
class Download:
    """An authorised download: metadata now, plaintext as it is read and checked."""

    file: FileInfo
    package_id: str
    handling: str
    receipt: int
    chunks: Generator[bytes, None, None] = field(repr=False)


@dataclass
class _Sealing:
    """An upload in progress: what is stored so far, to commit or to delete again."""

    package_id: str
    package_key: bytes
    written: list[str] = field(default_factory=list)
    rows: list[PackageFile] = field(default_factory=list)
    infos: list[FileInfo] = field(default_factory=list)
    total: int = 0
    # filename_key -> position of the file that has it
    first_with: dict[str, int] = field(default_factory=dict)


class PackageService:
    """Upload, list, show and download packages."""

    def __init__(self, core: Core, access: Access) -> None:
        self.core = core
        self.access = access

    # --- opening sealed metadata --------------------------------------------------------------

    def open_meta(self, package: SealedRow) -> OpenedMeta:
        """A package's metadata and, beside it, the package key that opens its files'
        metadata; IntegrityError if either was tampered with."""
        return sealed.open_meta(self.core.keys, package)

    def summary(self, package: SummaryRow, country: str) -> PackageSummary:
        """A package as a listing shows it (title opened, or remembered from an earlier
        opening of the same sealed bytes: vault.service.titles); ``country`` is its
        originator's."""
        keys = self.core.keys
        title = self.core.titles.title(
            package, lambda: sealed.open_meta(keys, package).meta["title"]
        )
        return sealed.summary(keys, package, country, title)

    # --- upload -------------------------------------------------------------------------------

    @records_refusals("upload")
    def upload(
        self,
        principal: Principal,
        meta: NewPackage,
        files: Iterable[IncomingFile],
        signature: Callable[[], signatures.SignedManifest | None] | None = None,
        *,
        records: Sequence[SeizureRecord] = (),
    ) -> UploadResult:
        """Seal and store every file, then record the package and its ledger entry at once.

        Objects are written before the database row; on any failure they are deleted again,
        so a package is either wholly visible or not at all. ``signature`` gives the
        originator's signed manifest once the files are read (None: unsigned), checked
        before the package is committed (vault.service.signatures). ``records`` (validated
        seizure records) are sealed under the package key in the same transaction.
        """
        self._check_upload(principal, meta)
        sealing = _Sealing(
            package_id=self._fresh_id(meta.package_id), package_key=crypto.new_data_key()
        )
        try:
            for position, incoming in enumerate(files):
                self._seal_file(sealing, position, incoming)
            if not sealing.rows:
                raise InvalidInput("a package needs at least one file")
            signed = self._signed(signature)
            package, digest = self._sealed_package(principal, meta, sealing, signed)
            with self.core.tx() as session:
                if signed is not None:
                    received = signatures.received(
                        package.id, principal.agency, meta, sealing.infos, records
                    )
                    signatures.check_upload(session, principal, signed, received)
                session.add(package)
                try:
                    session.flush()
                except DBIntegrityError:
                    # A chosen id that another upload took after _fresh_id looked.
                    raise Conflict(_ID_IN_USE) from None
                session.add_all(sealing.rows)
                if records:
                    session.add(records_row(session, package.id, sealing.package_key, records))
                session.flush()
                self._check_still_stored(sealing)
                receipt = self.core.record_allowed(principal, "upload", package, session=session)
        except BaseException as exc:
            self._undo_upload(principal, sealing, exc)
            raise
        self.core.openings.uploaded(package.id, principal.country)
        detail = PackageDetail(
            id=package.id,
            title=meta.title,
            classification=meta.classification,
            handling=meta.handling,
            agency=principal.agency,
            country=principal.country,
            created_at=package.created_at,
            size=sealing.total,
            file_count=len(sealing.rows),
            description=meta.description,
            handling_note=meta.handling_note,
            fields=meta.fields,
            digest=digest,
            creator=principal.username,
            files=sealing.infos,
            releases=[],
            signature=self._signature_of(signed.sealed_form() if signed else None),
            records=list(records),
        )
        return UploadResult(package=detail, receipt=receipt)

    def _check_still_stored(self, sealing: _Sealing) -> None:
        """StorageUnavailable if an object this upload stored is gone. Its rows are not
        committed yet, so ``admin gc`` takes an object stored longer ago than its grace for a
        stray (a small file sent first, then a large one over a slow link): failing here
        beats committing a package with a file missing."""
        for key in sealing.written:
            try:
                self.core.store.modified(key)
            except NotFound:
                raise StorageUnavailable(
                    "a file of this upload was removed from the store before the upload was "
                    "committed (admin gc with a grace shorter than the upload?); upload again"
                ) from None

    def _fresh_id(self, chosen: str | None) -> str:
        """The client's chosen package id if unused (Conflict otherwise), else a new one."""
        if chosen is None:
            return new_id()
        with self.core.tx(readonly=True) as session:
            if session.get(Package, chosen) is not None:
                raise Conflict(_ID_IN_USE)
        return chosen

    def _signed(
        self, signature: Callable[[], signatures.SignedManifest | None] | None
    ) -> signatures.SignedManifest | None:
        """The upload's signed manifest; AccessDenied when one is required and absent."""
        signed = signature() if signature is not None else None
        if signed is None and self.core.settings.signatures_required:
            raise AccessDenied(
                "this vault accepts only signed packages: upload with 'blovault package "
                "upload' after 'blovault keys init' and 'blovault keys register'"
            )
        return signed

    def _signature_of(self, sealed_form: object) -> PackageSignature | None:
        """The signature a package's details show (None for an unsigned package)."""
        if sealed_form is None:
            return None
        with self.core.tx(readonly=True) as session:
            return signatures.shown(session, sealed_form)

    def _check_upload(self, principal: Principal, meta: NewPackage) -> None:
        """Refuse (and record) an upload the caller may not make, before a byte is stored."""
        self.core.require_global(principal, "upload")
        # A package above its creator's clearance could then be neither read nor released by
        # them: refused here (policy: "uncleared ... upload, deny").
        cleared = principal.clearance.rank >= meta.classification.rank
        facts = Facts(
            role=principal.role.value,
            relations=frozenset({NONE}),
            cleared=cleared,
            handling=meta.handling.value,
            acknowledged=False,
            action="upload",
        )
        if not self.core.authz.allows(facts):
            raise self.core.record_refusal(
                AccessDenied(
                    f"classification {meta.classification.value} is above your clearance "
                    f"{principal.clearance.value}"
                    if not cleared
                    else "you may not upload this package"
                ),
                principal.actor,
                "upload",
                "clearance_below_classification" if not cleared else "policy_denied",
                subject=f"classification:{meta.classification.value}",
            )

    def _seal_file(self, sealing: _Sealing, position: int, incoming: IncomingFile) -> None:
        """Check one file's name, seal and store its content, and add its row to ``sealing``."""
        settings = self.core.settings
        if position >= settings.max_files_per_package:
            raise InvalidInput(f"at most {settings.max_files_per_package} files a package")
        name = check_filename(incoming.name)
        # One name per file once case and normalisation are ignored, or the package can't be
        # saved on NTFS or APFS. Positions, not names: names are content.
        if (other := sealing.first_with.setdefault(filename_key(name), position)) != position:
            raise InvalidInput(
                f"files {other + 1} and {position + 1} have the same name "
                "(ignoring case and Unicode normalisation)"
            )
        file_id = new_id()
        identity = sealed.file_identity(sealing.package_id, file_id)
        data_key = crypto.new_data_key()
        limit = min(settings.max_file_size, settings.max_package_size - sealing.total)
        reader = crypto.SealingReader(
            incoming.reader,
            data_key,
            identity=identity,
            max_size=limit,
            limit_error=TooLarge(
                "file exceeds the size limit "
                f"({settings.max_file_size} a file, {settings.max_package_size} a package)"
            ),
        )
        sealing.written.append(file_id)
        try:
            self.core.store.put(file_id, reader)
            digest = reader.sha256_hex()
        finally:
            reader.close()
        wrapped = self.core.keys.keyring.wrap(data_key, context=identity)
        sealed_name = crypto.seal_bytes(
            sealing.package_key,
            json.dumps({"name": name, "sha256": digest}).encode(),
            context=identity,
        )
        size = reader.plaintext_size
        sealing.rows.append(
            PackageFile(
                id=file_id,
                package_id=sealing.package_id,
                position=position,
                size=size,
                kek_id=wrapped.kek_id,
                wrapped_key=wrapped.blob,
                sealed_meta=sealed_name,
            )
        )
        sealing.infos.append(FileInfo(id=file_id, name=name, size=size, sha256=digest))
        sealing.total += size

    def _sealed_package(
        self,
        principal: Principal,
        meta: NewPackage,
        sealing: _Sealing,
        signed: signatures.SignedManifest | None,
    ) -> tuple[Package, str]:
        """The package row, its metadata sealed under the package key; and its digest."""
        digest = sealed.package_digest(sealing.infos)
        identity = sealed.package_identity(sealing.package_id)
        wrapped = self.core.keys.keyring.wrap(sealing.package_key, context=identity)
        sealed_meta = crypto.seal_bytes(
            sealing.package_key,
            json.dumps(
                {
                    "title": meta.title,
                    "description": meta.description,
                    "handling_note": meta.handling_note,
                    "fields": meta.fields,
                    "digest": digest,
                    # Sealed like the rest: the manifest holds the names and digests.
                    "signature": signed.sealed_form() if signed is not None else None,
                }
            ).encode(),
            context=identity,
        )
        package = Package(
            id=sealing.package_id,
            agency_code=principal.agency,
            creator_id=principal.user_id,
            created_at=utcnow(),
            size=sealing.total,
            file_count=len(sealing.rows),
            classification=meta.classification,
            handling=meta.handling,
            kek_id=wrapped.kek_id,
            wrapped_key=wrapped.blob,
            sealed_meta=sealed_meta,
        )
        return package, digest

    def _undo_upload(self, principal: Principal, sealing: _Sealing, exc: BaseException) -> None:
        """Delete what a failed upload stored, and record the refusal or failure."""
        for key in sealing.written:
            with contextlib.suppress(Exception):
                self.core.store.delete(key)
        if isinstance(exc, Exception):  # not an interpreter's exit or a task's cancellation
            reason = (
                exc.code
                if isinstance(exc, VaultError)
                else "io_error"
                if isinstance(exc, OSError)
                else "internal_error"  # a fault of the vault's, recorded all the same
            )
            # Bad input (no file, too large, a bad name, an id in use) is refused; the rest
            # failed.
            decision = DENY if isinstance(exc, REFUSALS) else ERROR
            with contextlib.suppress(VaultError, OperationalError):
                receipt = self.core.record_decision(principal.actor, "upload", decision, reason)
                if isinstance(exc, VaultError):
                    exc.receipt = receipt

    # --- reading ------------------------------------------------------------------------------

    def list_packages(
        self,
        principal: Principal,
        *,
        limit: int = 50,
        offset: int = 0,
        filters: PackageFilter | None = None,
    ) -> PackageList:
        """One page of the packages the caller may read, newest first (narrowed by
        ``filters``: the web interface's list)."""
        return self.core.finish(
            self.listing(principal, limit=limit, offset=offset, filters=filters)
        )

    @records_refusals("list")
    def listing(
        self,
        principal: Principal,
        *,
        limit: int = 50,
        offset: int = 0,
        filters: PackageFilter | None = None,
    ) -> PendingRead[PackageList]:
        """:meth:`list_packages`, short of its ledger entry (see PendingRead)."""
        if not 1 <= limit <= MAX_PAGE or offset < 0:
            raise InvalidInput(f"limit must be 1-{MAX_PAGE} and offset >= 0")
        self.core.require_global(principal, "list")
        with self.core.read() as connection:
            found = self.access.listing_page(
                connection, principal, limit=limit, offset=offset, filters=filters
            )
        entry = self.core.entry(
            actor=principal.actor,
            action="list",
            decision=ALLOW,
            reason="ok",
            subject=f"count:{len(found)}",
        )

        def answer(receipt: int) -> PackageList:
            items = [self.summary(cast(SummaryRow, row), row.country_code) for row in found]
            return PackageList(items=items, limit=limit, offset=offset, receipt=receipt)

        return PendingRead(entry, answer)

    def get_package(self, principal: Principal, package_id: str) -> tuple[PackageDetail, int]:
        """Details of one package the caller may read, and the ledger receipt."""
        return self.core.finish(self.package(principal, package_id))

    @records_refusals("read")
    def package(
        self, principal: Principal, package_id: str
    ) -> PendingRead[tuple[PackageDetail, int]]:
        """:meth:`get_package`, short of its ledger entry (see PendingRead)."""
        with self.core.read() as connection:
            package, facts = self.access.load_package_for(connection, principal, package_id, "read")
            pid = {"pid": package.id}
            files = PACKAGE_FILES.all(connection, pid)
            releases = (
                PACKAGE_RELEASES.all(connection, pid) if ORIGINATOR in facts.relations else []
            )
            stored_records = PACKAGE_RECORDS.scalar(connection, pid)

        def answer(receipt: int) -> tuple[PackageDetail, int]:
            try:
                opened = self.open_meta(package)
                infos = [sealed.file_info(opened.key, cast(FileRow, row)) for row in files]
                sealed.check_package_digest(opened.meta["digest"], infos)
            except IntegrityError as exc:
                # Queued, not waited for: this may run on the server's event loop, and the
                # read's own entry is already committed.
                self.core.submit(self.core.entry(**_failed(principal, "read", package, exc)))
                raise
            meta = opened.meta
            detail = PackageDetail(
                id=package.id,
                title=meta["title"],
                classification=package.classification,
                handling=package.handling,
                agency=package.agency_code,
                country=package.country_code,
                created_at=package.created_at,
                size=package.size,
                file_count=package.file_count,
                description=meta["description"],
                handling_note=meta["handling_note"],
                fields=meta["fields"],
                digest=meta["digest"],
                creator=package.creator or "",
                files=infos,
                releases=[release_info(cast(ReleaseRow, r)) for r in releases],
                signature=self._signature_of(meta.get("signature")),
                records=(
                    open_records(opened.key, package.id, stored_records)
                    if stored_records is not None
                    else []
                ),
            )
            return detail, receipt

        return PendingRead(self.core.allowed_entry(principal, "read", package), answer)

    def download(self, principal: Principal, package_id: str, file_id: str) -> Download:
        """Authorise and record a download, then stream plaintext checked segment by segment.

        The returned iterator raises IntegrityError if the stored object fails authentication
        or its recorded size; the caller must then discard everything it received.
        """
        return self.core.finish(self.start_download(principal, package_id, file_id))

    @records_refusals("download")
    def start_download(
        self, principal: Principal, package_id: str, file_id: str
    ) -> PendingRead[Download]:
        """:meth:`download`, short of its ledger entry (see PendingRead)."""
        check_id(file_id, "file id")
        with self.core.read() as connection:
            package, _ = self.access.load_package_for(connection, principal, package_id, "download")
            found = PACKAGE_FILE.first(connection, {"fid": file_id, "pid": package.id})
            if found is None:
                raise NotFound("file not found")
            row = cast(StoredFileRow, found)

        def record_failure(exc: VaultError) -> None:
            with contextlib.suppress(VaultError, OperationalError):
                self.core.record(**_failed(principal, "download", package, exc, file=row.id))

        def answer(receipt: int) -> Download:
            try:
                info = sealed.file_info(self.open_meta(package).key, row)
                data_key = self.core.keys.keyring.unwrap(
                    crypto.WrappedKey(row.kek_id, row.wrapped_key),
                    context=sealed.file_identity(package.id, row.id),
                )
            except IntegrityError as exc:
                record_failure(exc)
                raise
            return Download(
                file=info,
                package_id=package.id,
                handling=package.handling.value,
                receipt=receipt,
                chunks=self._plaintext(row, data_key, info, record_failure),
            )

        entry = self.core.allowed_entry(principal, "download", package, file=file_id)
        return PendingRead(entry, answer)

    def _plaintext(
        self,
        row: StoredFileRow,
        data_key: bytes,
        info: FileInfo,
        record_failure: Callable[[VaultError], None],
    ) -> Generator[bytes, None, None]:
        """The file's plaintext, checked segment by segment and, at the end, against its size;
        a failure is recorded and raised as IntegrityError.

        Not hashed again: the sealed stream's authentication proves these are, whole and in
        order, the bytes whose SHA-256 was sealed at upload, and whoever could seal others
        holds the key to that digest too. The recipient checks the digest, against the
        officer's signed manifest, where it proves something (README, "Security model").
        """
        identity = sealed.file_identity(row.package_id, row.id)
        size = 0
        # The segment that reaches the recorded size (a plain column: the answer's
        # Content-Length) goes out only once the stream is seen to end with it: a database edit
        # shrinking the size must not let a client get a prefix of the file as a whole answer.
        held: bytes | None = None
        try:
            # The plaintext stream is closed before the object is: the nesting order of this
            # with-statement.
            with (
                self.core.store.open(row.id) as source,
                contextlib.closing(
                    crypto.open_stream(source, data_key, identity=identity)
                ) as plains,
            ):
                for plain in plains:
                    size += len(plain)
                    if size >= info.size:
                        held = plain
                        size += sum(len(rest) for rest in plains)  # to the stream's checked end
                        break
                    yield plain
            if size != info.size:
                raise IntegrityError("downloaded content does not match its recorded size")
            if held is not None:
                yield held
        except (IntegrityError, StorageUnavailable, NotFound) as exc:
            record_failure(exc)
            if isinstance(exc, NotFound):
                raise IntegrityError("stored object is missing") from None
            raise


def _failed(
    principal: Principal, action: str, package: PackageRef, exc: VaultError, **target: str
) -> dict[str, Any]:
    """The entry of an allowed read of ``package`` that failed after its own entry was
    committed: its stored data did not verify, or the store did not answer."""
    return {
        "actor": principal.actor,
        "action": action,
        "decision": ERROR,
        "reason": exc.code,
        "package": package.id,
        "handling": package.handling.value,
        **target,
    }
