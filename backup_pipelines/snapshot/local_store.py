"""Snapshots on local disk, under `BACKUP_ARTIFACTS_DIR`.

A commit is a rename of the staging directory into place (atomic on one
filesystem) followed by the manifest, itself written to a temporary name,
fsynced and renamed, so a crash at any point leaves either nothing or an
incomplete directory that nothing lists. Snapshot directories and
artifacts are never reached through a symbolic link: a link planted in the
store cannot turn a read or a delete towards anything outside it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from backup_pipelines.errors import StoreError, UnreadableManifest
from backup_pipelines.snapshot.files import disk_full, fsync_path, newest_change
from backup_pipelines.snapshot.manifest import MANIFEST_NAME, utc_now
from backup_pipelines.snapshot.names import is_snapshot_id
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.snapshot.store import (
    MAX_MANIFEST_BYTES,
    Listed,
    SnapshotStore,
    StoredSnapshot,
    parse_manifest,
)

logger = logging.getLogger(__name__)


def _open_no_follow(path: Path) -> BinaryIO:
    """Open a file for reading unless it is a symbolic link."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


class LocalSnapshotStore(SnapshotStore):
    def __init__(self, root: Path):
        self.root = Path(root)

    def describe(self) -> str:
        return f"the local store {self.root}"

    def _dir(self, source: str, snapshot_id: str) -> Path:
        return self.root / source / snapshot_id

    def location(self, source: str, snapshot_id: str) -> str:
        return f"{self._dir(source, snapshot_id)}/"

    def commit(self, staged: StagedSnapshot) -> StoredSnapshot:
        target = self._dir(staged.source, staged.snapshot_id)
        if target.exists() or target.is_symlink():
            raise StoreError(f"{staged.source} snapshot {staged.snapshot_id} already exists")
        try:
            for entry in staged.files:  # staging is not durable; a committed snapshot is
                fsync_path(staged.path_of(entry))
            target.parent.mkdir(parents=True, exist_ok=True)
            if staged.directory.stat().st_dev == target.parent.stat().st_dev:
                os.rename(staged.directory, target)
            else:
                shutil.copytree(staged.directory, target)
            fsync_path(target.parent)
            raw = staged.manifest(finished_at=utc_now()).to_bytes()
            partial = target / f".{MANIFEST_NAME}.partial"
            with partial.open("wb") as out:
                out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            os.rename(partial, target / MANIFEST_NAME)
            fsync_path(target)
        except OSError as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise disk_full(exc, target) or StoreError(
                f"could not write {staged.source} snapshot {staged.snapshot_id} to "
                f"{self.root}: {exc.strerror or exc}"
            ) from None
        location = self.location(staged.source, staged.snapshot_id)
        return parse_manifest(raw, staged.source, staged.snapshot_id, location)

    def _list(self, source: str) -> dict[str, Listed]:
        listed: dict[str, Listed] = {}
        try:
            entries = list(os.scandir(self.root / source))
        except FileNotFoundError:
            return listed
        except OSError as exc:
            raise StoreError(f"cannot list {self.root / source}: {exc.strerror}") from None
        for entry in entries:
            if not is_snapshot_id(entry.name):
                continue
            if not entry.is_dir(follow_symlinks=False):
                logger.warning("ignoring %s: not a directory (a link or a file)", entry.path)
                continue
            directory = Path(entry.path)
            try:  # the manifest is a snapshot's last write; only an attempt needs a walk
                written = (directory / MANIFEST_NAME).lstat().st_mtime
                listed[entry.name] = Listed(entry.name, True, datetime.fromtimestamp(written, UTC))
            except FileNotFoundError:
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile: not there
                    listed[entry.name] = Listed(entry.name, False, newest_change(directory))
        return listed

    def _manifest_bytes(self, source: str, snapshot_id: str) -> bytes | None:
        directory = self._dir(source, snapshot_id)
        path = directory / MANIFEST_NAME
        try:
            if directory.is_symlink():
                return None
            with _open_no_follow(path) as stream:
                return stream.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnreadableManifest(
                    f"{source}/{snapshot_id}: manifest.json is a symbolic link"
                ) from None
            raise StoreError(f"cannot read {path}: {exc.strerror}") from None

    @contextmanager
    def _open(self, source: str, snapshot_id: str, name: str) -> Iterator[BinaryIO]:
        directory = self._dir(source, snapshot_id)
        path = directory / name
        try:
            if directory.is_symlink():
                raise FileNotFoundError(2, "No such file or directory")
            stream = _open_no_follow(path)
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from None
        with stream:
            yield stream

    def _remove(self, source: str, snapshot_id: str) -> None:
        directory = self._dir(source, snapshot_id)
        if directory.is_symlink() or not directory.exists():
            return
        try:
            (directory / MANIFEST_NAME).unlink(missing_ok=True)
            shutil.rmtree(directory)
        except OSError as exc:
            raise StoreError(f"cannot delete {directory}: {exc.strerror or exc}") from None
