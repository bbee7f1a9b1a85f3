"""Where snapshots live: the interface every store (local disk, S3) implements.

The layout is the contract's, the same in every store:
`<root>/<source>/<snapshot_id>/manifest.json` next to the artifacts. A store
decides only *where* bytes go; what they mean is the source modules' business.

Everything a store hands back is untrusted until this module has checked
it: a store lists locations (only names shaped like snapshot ids), and a
manifest read from one counts only when it is valid and names exactly the
location it was read from. Every name is checked before a store joins it
into a path or key, and deletes go only to locations a store listed.
"""

from __future__ import annotations

import contextlib
import hashlib
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO

from backup_pipelines.errors import ConfigurationError, SnapshotNotFound, UnreadableManifest
from backup_pipelines.snapshot.manifest import Manifest
from backup_pipelines.snapshot.names import (
    check_artifact_name,
    check_snapshot_id,
    check_source,
    shown,
)
from backup_pipelines.snapshot.staging import StagedSnapshot

LATEST = "latest"
MAX_MANIFEST_BYTES = 16 << 20
"""Far above any real manifest; a larger file is not read into memory at all."""


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


@dataclass(frozen=True)
class Listed:
    """One location a store found under a source, before any manifest in it is trusted."""

    snapshot_id: str
    has_manifest: bool
    modified: datetime
    """When anything in it was last written (or an upload into it began)."""


@dataclass(frozen=True)
class Unreadable:
    """A location holding a manifest that is not a valid snapshot's: reported, never restored."""

    source: str
    snapshot_id: str
    location: str
    reason: str
    modified: datetime


@dataclass
class Survey:
    """What a source's locations hold: valid snapshots, newest first, and unreadable ones."""

    snapshots: list[StoredSnapshot] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)


def parse_manifest(raw: bytes, source: str, snapshot_id: str, location: str) -> StoredSnapshot:
    """The one gate between a manifest's bytes and a snapshot the system acts on."""
    where = f"{source}/{snapshot_id}"
    if len(raw) > MAX_MANIFEST_BYTES:
        raise UnreadableManifest(
            f"{where}: manifest.json is larger than {MAX_MANIFEST_BYTES} bytes"
        )
    try:
        manifest = Manifest.from_bytes(raw)
    except ValueError as exc:
        raise UnreadableManifest(f"{where}: manifest.json is not valid ({exc})") from None
    if (manifest.source, manifest.snapshot_id) != (source, snapshot_id):
        raise UnreadableManifest(
            f"{where}: manifest.json describes {shown(manifest.source)}/"
            f"{shown(manifest.snapshot_id)}, not the location it was read from"
        )
    return StoredSnapshot(manifest, location, hashlib.sha256(raw).hexdigest())


def checked_location(source: str, snapshot_id: str) -> None:
    """Raise `ValueError` unless both names are safe to join into a path or key."""
    check_source(source)
    check_snapshot_id(snapshot_id)


class SnapshotStore(ABC):
    """A place snapshots are committed to, listed from, read from and deleted from.

    Subclasses implement the primitives (`_list`, `_manifest_bytes`, `_open`,
    `_remove`, `commit`); the checks on names and manifests live here once.
    """

    @abstractmethod
    def commit(self, staged: StagedSnapshot) -> StoredSnapshot:
        """Make the staged artifacts durable, then write the manifest last."""

    @abstractmethod
    def _list(self, source: str) -> dict[str, Listed]:
        """Locations under `source` whose names are snapshot ids, by id."""

    @abstractmethod
    def _manifest_bytes(self, source: str, snapshot_id: str) -> bytes | None:
        """The raw manifest (at most `MAX_MANIFEST_BYTES` + 1 bytes), None when there is none."""

    @abstractmethod
    def _open(self, source: str, snapshot_id: str, name: str) -> AbstractContextManager[BinaryIO]:
        """The stored bytes of one artifact; every name was checked by the caller."""

    @abstractmethod
    def _remove(self, source: str, snapshot_id: str) -> None:
        """Remove one listed location, manifest first so it is never listed half-deleted."""

    @abstractmethod
    def location(self, source: str, snapshot_id: str) -> str:
        """Where an operator finds the snapshot (a path or an s3:// URL)."""

    @abstractmethod
    def describe(self) -> str:
        """The store in a few words, for messages (never with credentials)."""

    def snapshot_ids(self, source: str) -> list[str]:
        """Ids of the locations of `source` that hold a manifest (valid or not)."""
        check_source(source)
        return [sid for sid, listed in self._list(source).items() if listed.has_manifest]

    def read_manifest(self, source: str, snapshot_id: str) -> StoredSnapshot | None:
        """The snapshot if it is complete, None if there is no manifest.

        Raises `UnreadableManifest` when there is one but it is not a valid
        snapshot's: the caller decides whether to report or skip it.
        """
        checked_location(source, snapshot_id)
        raw = self._manifest_bytes(source, snapshot_id)
        if raw is None:
            return None
        return parse_manifest(raw, source, snapshot_id, self.location(source, snapshot_id))

    def list_snapshots(self, source: str) -> list[StoredSnapshot]:
        """Complete snapshots of `source`, newest first (ids sort in time order)."""
        return self.survey(source).snapshots

    def survey(self, source: str) -> Survey:
        """Every location of `source` holding a manifest, read once: the complete snapshots
        (newest first) and those whose manifest is not a valid snapshot's, with the reason."""
        check_source(source)
        survey = Survey()
        for snapshot_id, listed in sorted(self._list(source).items(), reverse=True):
            if not listed.has_manifest:
                continue
            try:
                snapshot = self.read_manifest(source, snapshot_id)
            except UnreadableManifest as exc:
                location = self.location(source, snapshot_id)
                survey.unreadable.append(
                    Unreadable(source, snapshot_id, location, str(exc), listed.modified)
                )
                continue
            if snapshot is not None:
                survey.snapshots.append(snapshot)
        return survey

    def incomplete(self, source: str) -> list[tuple[str, datetime]]:
        """Interrupted attempts (a snapshot id, no manifest) and when they were last written.

        Only names shaped like snapshot ids count, so nothing else kept under a
        source (the documents' restic repository) is ever taken for one.
        """
        check_source(source)
        listed = self._list(source).values()
        return [(entry.snapshot_id, entry.modified) for entry in listed if not entry.has_manifest]

    def open_file(
        self, source: str, snapshot_id: str, name: str
    ) -> AbstractContextManager[BinaryIO]:
        """The stored bytes of one artifact, as a readable stream."""
        checked_location(source, snapshot_id)
        check_artifact_name(name)
        return self._open(source, snapshot_id, name)

    def delete(self, source: str, snapshot_id: str) -> None:
        """Remove a snapshot, manifest first so it is never listed half-deleted."""
        checked_location(source, snapshot_id)
        self._remove(source, snapshot_id)

    def find(self, source: str, snapshot_id: str = LATEST) -> StoredSnapshot:
        """One complete snapshot by id, or the newest with `latest`.

        An id that is not shaped like one is a usage error (it is never joined
        into a path); a manifest that fails the checks is reported as such.
        """
        check_source(source)
        if snapshot_id == LATEST:
            for candidate in sorted(self.snapshot_ids(source), reverse=True):
                with contextlib.suppress(UnreadableManifest):  # `survey` reports those
                    if snapshot := self.read_manifest(source, candidate):
                        return snapshot
            raise SnapshotNotFound(f"there is no complete {source} snapshot in {self.describe()}")
        try:
            check_snapshot_id(snapshot_id)
        except ValueError as exc:
            raise ConfigurationError(f"{exc} or 'latest'") from None
        snapshot = self.read_manifest(source, snapshot_id)
        if snapshot is None:
            raise SnapshotNotFound(
                f"there is no complete {source} snapshot {snapshot_id!r} in {self.describe()}"
                f" (list them with 'backup-pipelines snapshots {source}')"
            )
        return snapshot
