"""Restoring a documents snapshot into a directory, exactly as it was."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from backup_pipelines.errors import BackupError
from backup_pipelines.snapshot.store import StoredSnapshot
from backup_pipelines.sources.documents.restic import ResticRepository


def restic_id_of(snapshot: StoredSnapshot) -> str:
    try:
        return str(snapshot.manifest.stats["restic_snapshot_id"])
    except KeyError:
        raise BackupError(f"documents/{snapshot.snapshot_id} names no restic snapshot") from None


def _empty(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def restore_tree(
    snapshot: StoredSnapshot,
    repository: ResticRepository,
    target: Path,
    *,
    force: bool,
    log: Callable[[str], None],
) -> str:
    """Names, contents, modes, symlinks, empty files and directories, as backed up.

    restic restores a snapshot under its full original path, so it restores
    into a scratch directory beside the target and the tree is moved into
    place from there (a rename when both are on one filesystem).
    """
    if target.exists() and any(target.iterdir()) and not force:
        raise BackupError(f"{target} is not empty; add --force to replace its contents")
    root = str(snapshot.manifest.stats.get("root", "/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.restore-"))
    try:
        log(f"restic restore of documents/{snapshot.snapshot_id} into {target}")
        repository.restore(restic_id_of(snapshot), str(scratch))
        restored = scratch / root.lstrip("/")
        if target.exists():
            _empty(target)
        else:
            target.mkdir()
        for child in restored.iterdir():
            shutil.move(child, target / child.name)
        shutil.copystat(restored, target, follow_symlinks=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return f"restored documents/{snapshot.snapshot_id} into {target}"


def check_repository(
    snapshot: StoredSnapshot, repository: ResticRepository, read_data: str | None
) -> list[str]:
    """The snapshot's restic id exists, and `restic check` (reading that much data) passes."""
    restic_id = restic_id_of(snapshot)
    if not repository.snapshot_exists(restic_id):
        return [f"restic snapshot {restic_id} is not in {repository.location}"]
    try:
        repository.check(read_data)
    except BackupError as exc:
        return [str(exc)]
    return []
