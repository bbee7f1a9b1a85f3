"""Where snapshots live: the interface every store (local disk, S3) implements.

The layout is the contract's, the same in every store:
`<root>/<source>/<snapshot_id>/manifest.json` next to the artifacts. A store
decides only *where* bytes go; what they mean is the source modules' business.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from backup_pipelines.errors import SnapshotNotFound
from backup_pipelines.snapshot.manifest import Manifest
from backup_pipelines.snapshot.staging import StagedSnapshot

LATEST = "latest"


@dataclass(frozen=True)
class StoredSnapshot:
    """A complete snapshot: its manifest and where it is. Never its bytes."""

    manifest: Manifest
    location: str
    manifest_sha256: str

    @property
    def source(self) -> str:
        return self.manifest.source

    @property
    def snapshot_id(self) -> str:
        return self.manifest.snapshot_id

    @classmethod
    def from_manifest_bytes(cls, raw: bytes, location: str) -> StoredSnapshot:
        return cls(Manifest.from_bytes(raw), location, hashlib.sha256(raw).hexdigest())


class SnapshotStore(ABC):
    """A place snapshots are committed to, listed from, read from and deleted from."""

    @abstractmethod
    def commit(self, staged: StagedSnapshot) -> StoredSnapshot:
        """Make the staged artifacts durable, then write the manifest last."""

    @abstractmethod
    def snapshot_ids(self, source: str) -> list[str]:
        """Ids of the complete snapshots of `source` (those with a manifest)."""

    @abstractmethod
    def read_manifest(self, source: str, snapshot_id: str) -> StoredSnapshot | None:
        """The snapshot if it is complete, else None."""

    @abstractmethod
    def open_file(
        self, source: str, snapshot_id: str, name: str
    ) -> AbstractContextManager[BinaryIO]:
        """The stored bytes of one artifact, as a readable stream."""

    @abstractmethod
    def incomplete(self, source: str) -> list[tuple[str, datetime]]:
        """Interrupted attempts (a snapshot id, no manifest) and when they were last written.

        Only names shaped like snapshot ids count, so nothing else kept under a
        source (the documents' restic repository) is ever taken for one.
        """

    @abstractmethod
    def delete(self, source: str, snapshot_id: str) -> None:
        """Remove a snapshot, manifest first so it is never listed half-deleted."""

    @abstractmethod
    def location(self, source: str, snapshot_id: str) -> str:
        """Where an operator finds the snapshot (a path or an s3:// URL)."""

    def list_snapshots(self, source: str) -> list[StoredSnapshot]:
        """Complete snapshots of `source`, newest first (ids sort in time order)."""
        found = (self.read_manifest(source, sid) for sid in self.snapshot_ids(source))
        snapshots = [snapshot for snapshot in found if snapshot is not None]
        return sorted(snapshots, key=lambda s: s.snapshot_id, reverse=True)

    def iter_all(self, sources: list[str]) -> Iterator[StoredSnapshot]:
        for source in sources:
            yield from self.list_snapshots(source)

    def find(self, source: str, snapshot_id: str = LATEST) -> StoredSnapshot:
        """One complete snapshot by id, or the newest with `latest`."""
        if snapshot_id == LATEST:
            ids = sorted(self.snapshot_ids(source), reverse=True)
            for candidate in ids:
                snapshot = self.read_manifest(source, candidate)
                if snapshot is not None:
                    return snapshot
            raise SnapshotNotFound(f"there is no complete {source} snapshot in {self.describe()}")
        snapshot = self.read_manifest(source, snapshot_id)
        if snapshot is None:
            raise SnapshotNotFound(
                f"there is no complete {source} snapshot {snapshot_id!r} in {self.describe()}"
                f" (list them with 'backup-pipelines snapshots {source}')"
            )
        return snapshot

    @abstractmethod
    def describe(self) -> str:
        """The store in a few words, for messages (never with credentials)."""
