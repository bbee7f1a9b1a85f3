"""Restoring a documents snapshot into a directory, exactly as it was."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from backup_pipelines.errors import BackupError, IntegrityError
from backup_pipelines.snapshot.store import StoredSnapshot
from backup_pipelines.sources.documents.restic import ResticRepository, is_restic_id
from backup_pipelines.storage.names import shown


def restic_id(snapshot: StoredSnapshot) -> str | None:
    """The restic snapshot a documents snapshot's manifest names, when it is a restic id
    (hex only: never read as an option or a path)."""
    value = snapshot.manifest.stats.get("restic_snapshot_id")
    return value if is_restic_id(value) else None


def restic_id_of(snapshot: StoredSnapshot) -> str:
    """The restic snapshot a documents snapshot points at, checked (it goes on a command line)."""
    found = restic_id(snapshot)
    if found is None:
        raise IntegrityError(
            f"documents/{snapshot.snapshot_id} names no valid restic snapshot id "
            f"({shown(snapshot.manifest.stats.get('restic_snapshot_id'))})"
        )
    return found


def backed_up_root(snapshot: StoredSnapshot) -> PurePosixPath:
    """The directory that was backed up, under which restic restores the tree: an absolute,
    normalised path (no `..`), so the restored tree is looked for inside the scratch only."""
    root = snapshot.manifest.stats.get("root", "/")
    path = PurePosixPath(root) if isinstance(root, str) else None
    if path is None or not path.is_absolute() or ".." in path.parts or str(path) != root:
        raise IntegrityError(
            f"documents/{snapshot.snapshot_id} names no valid backed-up root ({shown(root)})"
        )
    return path


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
    restic_id, root = restic_id_of(snapshot), backed_up_root(snapshot)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.restore-"))
    try:
        log(f"restic restore of documents/{snapshot.snapshot_id} into {target}")
        repository.restore(restic_id, str(scratch))
        restored = scratch.joinpath(*root.parts[1:])
        if not restored.is_dir() or restored.is_symlink():
            raise IntegrityError(f"restic restored no directory {root} from {restic_id}")
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
    try:
        restic_id = restic_id_of(snapshot)
        if not repository.snapshot_exists(restic_id):
            return [f"restic snapshot {restic_id} is not in {repository.location}"]
    except BackupError as exc:
        return [str(exc)]
    try:
        repository.check(read_data)
    except BackupError as exc:
        return [str(exc)]
    return []
