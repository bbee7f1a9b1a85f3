"""The documents tree into restic, and a contract snapshot that points at restic's.

The snapshot directory `documents/<snapshot_id>/` holds `restic.json`
(restic's summary and snapshot id); the file data lives, deduplicated, in
the restic repository `documents/restic/` of the same store. The manifest
is written only after restic has committed its own snapshot, so a listed
snapshot always points at complete data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from backup_pipelines.errors import ConfigurationError
from backup_pipelines.settings import BackupSettings
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.sources.documents.restic import ResticRepository

SUMMARY_ARTIFACT = "restic.json"
SUMMARY_FIELDS = (
    "files_new",
    "files_changed",
    "files_unmodified",
    "dirs_new",
    "dirs_changed",
    "data_added",
    "total_files_processed",
    "total_bytes_processed",
)


def repository_location(settings: BackupSettings) -> str:
    """`<root>/documents/restic` in the same store as every other snapshot."""
    if settings.s3_enabled:
        endpoint = (settings.s3_endpoint_url or "https://s3.amazonaws.com").rstrip("/")
        prefix = "/".join(p for p in (settings.s3_prefix.strip("/"), "documents/restic") if p)
        return f"s3:{endpoint}/{settings.s3_bucket}/{prefix}"
    return str(settings.artifacts_dir / "documents" / "restic")


def repository_from_settings(settings: BackupSettings) -> ResticRepository:
    if settings.restic_password is None:
        raise ConfigurationError("BACKUP_RESTIC_PASSWORD is required for the documents source")
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_enabled else None
    access = settings.s3_access_key.get_secret_value() if settings.s3_enabled else None
    return ResticRepository(
        repository_location(settings),
        settings.restic_password.get_secret_value(),
        access,
        secret,
        settings.s3_region,
    )


def backup_documents(
    staged: StagedSnapshot,
    root: Path | None,
    repository: ResticRepository,
    log: Callable[[str], None] = print,
) -> None:
    if root is None or not root.is_dir():
        raise ConfigurationError(
            f"BACKUP_DOCUMENTS_ROOT ({root or 'unset'}) must name the documents directory"
        )
    log(f"restic backup of {root}")
    summary = repository.backup(str(root), staged.snapshot_id, log)
    record = {
        "restic_snapshot_id": summary["snapshot_id"],
        "root": str(root),
        "repository": repository.location,
        "summary": summary,
    }
    staged.add_stream(SUMMARY_ARTIFACT, [json.dumps(record, indent=1).encode()], expect_prefix=b"{")
    staged.stats.update(
        restic_snapshot_id=summary["snapshot_id"],
        root=str(root),
        **{name: summary.get(name, 0) for name in SUMMARY_FIELDS},
    )
