"""Snapshots on local disk, under `BACKUP_ARTIFACTS_DIR`.

A commit is a rename of the staging directory into place (atomic on one
filesystem) followed by the manifest, itself written to a temporary name,
fsynced and renamed, so a crash at any point leaves either nothing or an
incomplete directory that nothing lists.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from backup_pipelines.errors import StoreError
from backup_pipelines.snapshot.manifest import MANIFEST_NAME, SNAPSHOT_ID_PATTERN, utc_now
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot

logger = logging.getLogger(__name__)


def _fsync(path: Path) -> None:
    """Flush a file's bytes, or a directory's entries (so a rename survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        if target.exists():
            raise StoreError(f"{staged.source} snapshot {staged.snapshot_id} already exists")
        try:
            for entry in staged.files:  # staging is not durable; a committed snapshot is
                _fsync(staged.path_of(entry))
            target.parent.mkdir(parents=True, exist_ok=True)
            if staged.directory.stat().st_dev == target.parent.stat().st_dev:
                os.rename(staged.directory, target)
            else:
                shutil.copytree(staged.directory, target)
            _fsync(target.parent)
            raw = staged.manifest(finished_at=utc_now()).to_bytes()
            partial = target / f".{MANIFEST_NAME}.partial"
            with partial.open("wb") as out:
                out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            os.rename(partial, target / MANIFEST_NAME)
            _fsync(target)
        except OSError as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise StoreError(
                f"could not write {staged.source} snapshot {staged.snapshot_id} to "
                f"{self.root}: {exc.strerror or exc}"
            ) from None
        return StoredSnapshot.from_manifest_bytes(
            raw, self.location(staged.source, staged.snapshot_id)
        )

    def snapshot_ids(self, source: str) -> list[str]:
        source_dir = self.root / source
        if not source_dir.is_dir():
            return []
        return [entry.parent.name for entry in source_dir.glob(f"*/{MANIFEST_NAME}")]

    def read_manifest(self, source: str, snapshot_id: str) -> StoredSnapshot | None:
        path = self._dir(source, snapshot_id) / MANIFEST_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return StoredSnapshot.from_manifest_bytes(raw, self.location(source, snapshot_id))
        except ValidationError:
            logger.warning("ignoring %s: not a valid snapshot manifest", path)
            return None

    @contextmanager
    def open_file(self, source: str, snapshot_id: str, name: str) -> Iterator[BinaryIO]:
        path = self._dir(source, snapshot_id) / name
        try:
            stream = path.open("rb")
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from None
        with stream:
            yield stream

    def incomplete(self, source: str) -> list[tuple[str, datetime]]:
        source_dir = self.root / source
        if not source_dir.is_dir():
            return []
        found = []
        for directory in source_dir.iterdir():
            if (
                not SNAPSHOT_ID_PATTERN.match(directory.name)
                or (directory / MANIFEST_NAME).exists()
            ):
                continue
            times = [p.stat().st_mtime for p in (directory, *directory.rglob("*"))]
            found.append((directory.name, datetime.fromtimestamp(max(times), UTC)))
        return found

    def delete(self, source: str, snapshot_id: str) -> None:
        directory = self._dir(source, snapshot_id)
        (directory / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)
