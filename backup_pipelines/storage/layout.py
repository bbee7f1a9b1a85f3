"""Where everything lives in a store: the one module that builds a key or a path prefix.

Every store (the local directory `BACKUP_ARTIFACTS_DIR`, or `s3://BUCKET/PREFIX/`)
has the same layout, as restic keeps every file type's path in one place
(`internal/backend/layout/`):

```
<source>/<snapshot_id>/manifest.json       a snapshot: written last, it makes the rest count
<source>/<snapshot_id>/<artifact>          its artifacts (a location without a manifest is an
                                           interrupted attempt)
<source>/restic/                           data a source keeps beside its snapshots (documents)
postgres_wal[.<target>]/<folder>/<file>    PostgreSQL's WAL archive, one object per file
.audit/<YYYYMMDD>/<record>.json            the audit trail, one new object per operation
.verification/<source>.json                each source's last drill
.copies/dropped/<source>.json              in a copy store: the snapshots its own retention
                                           dropped, which a copy does not send back
```

and, on the backup host's local disk only, beside a local store's snapshots:
`.staging/` (snapshots being assembled, scratch space of restores and drills)
and `.outbox.sqlite` (events waiting for the broker).

Source names start with a letter, so nothing of ours that starts with a dot
is ever listed as a source. Every untrusted name is checked
(`names.py`) before it is joined into a key here.
"""

from __future__ import annotations

from backup_pipelines.storage.names import (
    check_artifact_name,
    check_snapshot_id,
    check_source,
    split_source,
)

MANIFEST_NAME = "manifest.json"
AUDIT = ".audit"
VERDICTS = ".verification"
COPIES = ".copies"
STAGING = ".staging"
OUTBOX = ".outbox.sqlite"
WAL_ARCHIVE = "postgres_wal"
"""The WAL archive's folder, and its name where a source is named (`postgres_wal[.<target>]`)."""
RESTIC_REPOSITORY = "restic"


def source_prefix(source: str) -> str:
    """`<source>/`: everything a source keeps (snapshots, attempts, its own data)."""
    return f"{check_source(source)}/"


def snapshot_prefix(source: str, snapshot_id: str) -> str:
    """`<source>/<snapshot_id>/`, both names checked: safe to hand to a backend."""
    return f"{source_prefix(source)}{check_snapshot_id(snapshot_id)}/"


def artifact_key(source: str, snapshot_id: str, name: str) -> str:
    return snapshot_prefix(source, snapshot_id) + check_artifact_name(name)


def manifest_key(source: str, snapshot_id: str) -> str:
    return snapshot_prefix(source, snapshot_id) + MANIFEST_NAME


def restic_repository(source: str) -> str:
    """The key under which a source keeps its restic repository beside its snapshots."""
    return source_prefix(source) + RESTIC_REPOSITORY


def wal_archive_name(target: str | None) -> str:
    """`postgres_wal`, or `postgres_wal.<target>` for a target of the targets file."""
    return check_source(f"{WAL_ARCHIVE}.{target}" if target else WAL_ARCHIVE)


def wal_archive_of(base_source: str) -> str:
    """The WAL archive a base backup source (`<kind>[.<target>]`) recovers from."""
    return wal_archive_name(split_source(base_source)[1])


def wal_archive_prefix(archive: str) -> str:
    """`postgres_wal[.<target>]/`: the archive's folders."""
    return source_prefix(archive)


def wal_folder_prefix(archive: str, folder: str) -> str:
    """One folder of the archive (a timeline and the high half of a position, or `history`);
    `folder` is checked by the archive, which alone knows its shape."""
    return f"{wal_archive_prefix(archive)}{folder}/"


def wal_file_key(archive: str, folder: str, stored_name: str) -> str:
    return wal_folder_prefix(archive, folder) + check_artifact_name(stored_name)


AUDIT_PREFIX = f"{AUDIT}/"


def audit_day_prefix(day: str) -> str:
    """`.audit/<YYYYMMDD>/`: the records of one UTC day."""
    return f"{AUDIT_PREFIX}{day}/"


def audit_record_key(day: str, name: str) -> str:
    return audit_day_prefix(day) + check_artifact_name(name)


VERDICTS_PREFIX = f"{VERDICTS}/"


def verdicts_prefix(source: str) -> str:
    """`.verification/<source>/`: one record per drill of the source."""
    return f"{VERDICTS_PREFIX}{check_source(source)}/"


def verdict_key(source: str, name: str) -> str:
    """`.verification/<source>/<drilled at>-<8 hex>.json`: one drill's outcome, written once."""
    return f"{verdicts_prefix(source)}{check_snapshot_id(name)}.json"


def legacy_verdict_key(source: str) -> str:
    """`.verification/<source>.json`: the one record per source, replaced at each drill, that
    stores written before per-drill records hold (read when a source has no other)."""
    return f"{VERDICTS_PREFIX}{check_source(source)}.json"


def dropped_key(source: str) -> str:
    """`.copies/dropped/<source>.json`: what a copy store's own retention dropped."""
    return f"{COPIES}/dropped/{check_source(source)}.json"
