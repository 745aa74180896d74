"""The prepared statements of a package's reads (vault.prepared): plain rows, no ORM
entities, since showing and downloading are the hot path."""

from __future__ import annotations

from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlmodel import col

from vault.models import PackageFile, PackageRecords, Release
from vault.prepared import Prepared

__all__ = ["PACKAGE_FILE", "PACKAGE_FILES", "PACKAGE_RECORDS", "PACKAGE_RELEASES"]

# A package's files, in order, as the columns its details show (no ORM entities: reads are
# the hot path).
PACKAGE_FILES = Prepared(
    sa_select(
        col(PackageFile.id),
        col(PackageFile.package_id),
        col(PackageFile.size),
        col(PackageFile.sealed_meta),
    )
    .where(col(PackageFile.package_id) == bindparam("pid"))
    .order_by(col(PackageFile.position))
)

# A package's releases, oldest first (shown to its originator), as plain rows.
PACKAGE_RELEASES = Prepared(
    sa_select(*Release.__table__.columns)  # type: ignore[attr-defined]
    .where(col(Release.package_id) == bindparam("pid"))
    .order_by(col(Release.created_at))
)

# A package's sealed seizure records, if it has any.
PACKAGE_RECORDS = Prepared(
    sa_select(col(PackageRecords.sealed)).where(col(PackageRecords.package_id) == bindparam("pid"))
)

# A download's file as a plain row (no ORM object), only if it belongs to the package.
PACKAGE_FILE = Prepared(
    sa_select(*PackageFile.__table__.columns).where(  # type: ignore[attr-defined]
        col(PackageFile.id) == bindparam("fid"), col(PackageFile.package_id) == bindparam("pid")
    )
)
