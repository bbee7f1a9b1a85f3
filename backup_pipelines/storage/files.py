"""Local files as snapshots need them: durable writes, leftovers' ages, a full disk said plainly."""

from __future__ import annotations

import errno
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_pipelines.errors import StorageFull

LEFTOVER_AGE = timedelta(hours=24)
"""Work an interrupted run left is removed only once this old: younger, it may still be written."""
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def fsync_path(path: Path) -> None:
    """Flush a file's bytes, or a directory's entries (so a rename survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def newest_change(path: Path) -> datetime:
    """When anything under `path` was last written (symbolic links are not followed).

    A dump that runs for hours keeps its file's time fresh while its
    directory's own time stays at the start, so only the newest of all
    tells whether the work is still going on.
    """
    newest = path.lstat().st_mtime
    for directory, subdirectories, files in os.walk(path):
        for name in (*subdirectories, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(directory, name)).st_mtime)
            except FileNotFoundError:
                continue
    return datetime.fromtimestamp(newest, UTC)


def remove_stale(parent: Path, now: datetime) -> list[Path]:
    """Remove the entries of `parent` in which nothing changed for `LEFTOVER_AGE`; return them."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        try:
            if now - newest_change(entry) <= LEFTOVER_AGE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry)
    return removed


STAGING_HINT = "free space there or point BACKUP_ARTIFACTS_DIR at a larger disk"


def disk_full(exc: BaseException, path: Path | str, hint: str = STAGING_HINT) -> StorageFull | None:
    """A `StorageFull` naming `path` when `exc` is a full disk or quota, else None."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return StorageFull(
            f"no space left on the device of {path} ({os.strerror(exc.errno)}): {hint}"
        )
    return None
