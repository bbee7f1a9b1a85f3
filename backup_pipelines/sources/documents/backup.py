"""The documents tree into restic, and a contract snapshot that points at restic's.

The snapshot directory `documents/<snapshot_id>/` holds `restic.json`
(restic's summary and snapshot id); the file data lives, deduplicated, in
the restic repository `documents/restic/` of the same store. The manifest
is written only after restic has committed its own snapshot, so a listed
snapshot always points at complete data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from backup_pipelines.errors import ConfigurationError
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


def tree_fingerprint(root: Path) -> list[int]:
    """[entries, newest mtime in ns]: cheap, and changes with any add, delete or write."""
    entries, newest = 0, 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as listing:
            for entry in listing:
                entries += 1
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime_ns)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
    return [entries, newest]


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
