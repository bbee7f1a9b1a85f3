"""Local files as snapshots need them: durable writes, leftovers' ages, a full disk said plainly."""

from __future__ import annotations

import errno
import grp
import os
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_pipelines.errors import ConfigurationError, StorageFull

LEFTOVER_AGE = timedelta(hours=24)
"""Work an interrupted run left is removed only once this old: younger, it may still be written."""
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
PRIVATE_MODE = 0o700
GROUP_MODE = 0o2750
"""With `BACKUP_STORE_GROUP`: its members (a verifier's or an exporter's account) read, and
what is made inside takes the group (setgid)."""


def make_private(directory: Path, group: str | None) -> None:
    """Make `directory` (a local store's root, the artifacts directory with the staging area
    and the outbox) if it is missing: open to its owner alone, or also readable by `group`.
    A private directory keeps everything below it from other local users, whatever their own
    modes. One that exists keeps its mode: `openness` reports it, the operator decides."""
    if directory.exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    if group:
        os.chown(directory, -1, group_id(group))
    os.chmod(directory, GROUP_MODE if group else PRIVATE_MODE)


def openness(directory: Path, group: str | None) -> str | None:
    """Why `directory` is more open than `make_private` makes it, None when it is not (or is
    not there yet)."""
    try:
        mode = stat.S_IMODE(directory.stat().st_mode)
    except FileNotFoundError:
        return None
    if mode & 0o007:
        opened = "every local user"
    elif mode & 0o070 and not group:
        opened = "its group, and BACKUP_STORE_GROUP is not set"
    else:
        return None
    wanted = "chmod 2750 and chgrp BACKUP_STORE_GROUP" if group else "chmod 700"
    return f"{directory} (mode {mode:04o}) is open to {opened}: {wanted} it"


def group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigurationError(
            f"BACKUP_STORE_GROUP names no group of this host: {group!r}"
        ) from None


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
