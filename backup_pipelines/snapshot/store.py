"""Snapshots in a store: the write ordering, what counts as complete, and the one gate for
everything read back, the same over every backend (local disk, S3).

The layout is the contract's, and `storage/layout.py` names every key:
`<root>/<source>/<snapshot_id>/manifest.json` next to the artifacts. A
commit puts every artifact first and the manifest last, so a snapshot is
listed only once all its bytes are durable (restic's "snapshot last"
ordering); a location without a manifest is an interrupted attempt,
invisible to everything but `prune`.

Everything a backend hands back is untrusted until this module has checked
it: only names shaped like snapshot ids are locations, and a manifest counts
only when it is valid and names exactly the location it was read from.
Every name is checked before it is joined into a key, and deletes go only
to locations a listing returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import BinaryIO

from backup_pipelines.errors import (
    BackupError,
    ConfigurationError,
    SnapshotNotFound,
    StorageFull,
    StoreError,
    UnreadableManifest,
)
from backup_pipelines.snapshot.manifest import Manifest, format_utc, utc_now
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.storage import Backend, Fetched, NotFollowed
from backup_pipelines.storage.layout import (
    artifact_key,
    manifest_key,
    snapshot_prefix,
    source_prefix,
)
from backup_pipelines.storage.names import (
    check_snapshot_id,
    check_source,
    is_snapshot_id,
    shown,
    snapshot_started,
)
from backup_pipelines.storage.streams import ProgressMeter

logger = logging.getLogger(__name__)

PRIMARY = "primary"
"""The store `BACKUP_S3_*` (or `BACKUP_ARTIFACTS_DIR`) configure; copy stores have names of
their own (`stores.py`)."""

LATEST = "latest"
CLOCK_SLACK = timedelta(minutes=10)
"""How far a snapshot's id may lie after the clocks we have before it counts as ahead of them
(the store's clock and ours may differ a little)."""
MAX_MANIFEST_BYTES = 16 << 20
"""Far above any real manifest; a larger file is not read into memory at all."""


def finished_by(manifest: Manifest) -> datetime:
    """When a snapshot had finished at the latest: a manifest keeps whole seconds (the
    contract's format), cut down, so one that says 10:00:00 may have finished at 10:00:00.9."""
    return manifest.finished_at + timedelta(seconds=1)


@dataclass(frozen=True)
class StoredSnapshot:
    """A complete snapshot: its manifest and where it is. Never its bytes."""

    manifest: Manifest
    location: str
    manifest_sha256: str
    locked_until: datetime | None = None
    """Until when S3 Object Lock protects its manifest (written last, so locked longest)."""
    written_at: datetime | None = field(default=None, compare=False)
    """When the store says its manifest was written (the store's clock, not ours); known once
    listed, not compared (the same snapshot, just committed, does not know it yet)."""
    rewritten: str | None = field(default=None, compare=False)
    """Why its manifest was written over since it was committed (the first version is this
    one); None when it never was. `verify` fails on it."""

    @property
    def source(self) -> str:
        return self.manifest.source

    def ahead_of_clocks(self, now: datetime) -> str | None:
        """Why the snapshot's id lies in the future of the clocks we have (this host's, and
        the store's write time), which only a clock far ahead or a planted snapshot gives;
        None when it does not. Such a snapshot is reported, never `latest`, never counted by
        retention or monitoring."""
        try:
            began = snapshot_started(self.snapshot_id)
        except ValueError:
            return "its id does not name a moment"
        if began > now + CLOCK_SLACK:
            return f"its id says it began at {format_utc(began)}, after this host's clock"
        if self.written_at is not None and began > self.written_at + CLOCK_SLACK:
            return (
                f"its id says it began at {format_utc(began)}, after the store wrote it "
                f"({format_utc(self.written_at)})"
            )
        return None

    @property
    def snapshot_id(self) -> str:
        return self.manifest.snapshot_id


@dataclass(frozen=True)
class Unreadable:
    """A location holding a manifest that is not a valid snapshot's: reported, never restored."""

    source: str
    snapshot_id: str
    location: str
    reason: str
    modified: datetime


@dataclass(frozen=True)
class Attempt:
    """A location without a manifest: a snapshot that was begun and never committed."""

    snapshot_id: str
    modified: datetime
    """When anything in it was last written: younger than a day, it may still be."""


@dataclass
class Survey:
    """What a source's locations hold, each manifest read once: valid snapshots (newest
    first), unreadable manifests, and interrupted attempts."""

    snapshots: list[StoredSnapshot] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    ahead: list[tuple[StoredSnapshot, str]] = field(default_factory=list)
    """Complete snapshots whose id lies ahead of the clocks, and why: reported, never used."""


def parse_manifest(
    raw: bytes,
    source: str,
    snapshot_id: str,
    location: str,
    locked_until: datetime | None = None,
    written_at: datetime | None = None,
    rewritten: str | None = None,
) -> StoredSnapshot:
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
    digest = hashlib.sha256(raw).hexdigest()
    return StoredSnapshot(manifest, location, digest, locked_until, written_at, rewritten)


class SnapshotStore:
    """Commits, lists, reads and deletes snapshots over one backend; `name` says which store
    it is (`stores.py`: the primary, or a copy store)."""

    def __init__(self, backend: Backend, name: str = PRIMARY):
        self.backend = backend
        self.name = name

    def describe(self) -> str:
        return self.backend.describe()

    def location(self, source: str, snapshot_id: str) -> str:
        """Where an operator finds the snapshot (a path or an s3:// URL)."""
        return self.backend.location(snapshot_prefix(source, snapshot_id))

    # Writing

    def commit(self, staged: StagedSnapshot) -> StoredSnapshot:
        """Put every staged artifact, then the manifest; anything less leaves an attempt.

        A failure is this upload's failure (what `backup.failed` reports); what
        got through is removed at once, or by `prune` a day later when the
        store is unreachable for that too.
        """
        prefix = snapshot_prefix(staged.source, staged.snapshot_id)
        try:
            taken = self.backend.last_change(prefix) is not None
        except (StoreError, StorageFull) as exc:
            raise self._not_stored(staged, exc) from None
        if taken:
            raise StoreError(f"{staged.source} snapshot {staged.snapshot_id} already exists")
        try:
            for entry in staged.files:
                key = artifact_key(staged.source, staged.snapshot_id, entry.name)
                meter = ProgressMeter(
                    f"storing {entry.name}", staged.progress, entry.size, verb="sent"
                )
                self.backend.put_file(key, staged.path_of(entry), meter.advance)
            raw = staged.manifest(finished_at=utc_now()).to_bytes()
            self.backend.put_bytes(manifest_key(staged.source, staged.snapshot_id), raw)
        except (StoreError, StorageFull, ConfigurationError) as exc:
            self._remove_failed(prefix)
            raise self._not_stored(staged, exc) from None
        location = self.backend.location(prefix)
        return parse_manifest(raw, staged.source, staged.snapshot_id, location)

    @staticmethod
    def _not_stored(staged: StagedSnapshot, exc: BackupError) -> BackupError:
        """The failure as this upload's (a full disk or a wrong setting says so itself)."""
        if isinstance(exc, StorageFull | ConfigurationError):
            return exc
        return StoreError(f"could not store {staged.source} snapshot {staged.snapshot_id}: {exc}")

    def _remove_failed(self, prefix: str) -> None:
        try:
            self.backend.delete_prefix(prefix)
        except (StoreError, StorageFull):
            logger.warning(
                "could not remove the failed upload %s; prune removes it after 24 h", prefix
            )

    # Reading

    def read_manifest(self, source: str, snapshot_id: str) -> StoredSnapshot | None:
        """The snapshot if it is complete, None if there is no manifest.

        Raises `UnreadableManifest` when there is one but it is not a valid
        snapshot's: the caller decides whether to report or skip it.
        """
        fetched = self._fetch_manifest(source, snapshot_id)
        if fetched is None:
            return None
        return self._parsed(source, snapshot_id, fetched)

    def _parsed(self, source: str, snapshot_id: str, fetched: Fetched) -> StoredSnapshot:
        """A fetched manifest through `parse_manifest`, with what the store says of it."""
        return parse_manifest(
            fetched.data,
            source,
            snapshot_id,
            self.location(source, snapshot_id),
            fetched.locked_until,
            fetched.modified,
            fetched.rewritten,
        )

    def _fetch_manifest(self, source: str, snapshot_id: str) -> Fetched | None:
        try:
            return self.backend.get(manifest_key(source, snapshot_id), MAX_MANIFEST_BYTES + 1)
        except NotFollowed as exc:
            raise UnreadableManifest(f"{source}/{snapshot_id}: {exc}") from None

    def location_ids(self, source: str) -> list[str]:
        """Ids of every location under `source`, newest first; other names are not ours
        (a source may keep data of its own beside its snapshots, as restic's repository)."""
        names = self.backend.children(source_prefix(source))
        return sorted((name for name in names if is_snapshot_id(name)), reverse=True)

    def survey(self, source: str) -> Survey:
        """Every location of `source`, each manifest read once."""
        survey = Survey()
        for snapshot_id in self.location_ids(source):
            location = self.location(source, snapshot_id)
            fetched = None
            try:
                fetched = self._fetch_manifest(source, snapshot_id)
                if fetched is None:
                    self._add_attempt(survey, source, snapshot_id)
                    continue
                snapshot = self._parsed(source, snapshot_id, fetched)
                if reason := snapshot.ahead_of_clocks(utc_now()):
                    survey.ahead.append((snapshot, reason))
                else:
                    survey.snapshots.append(snapshot)
            except UnreadableManifest as exc:
                modified = fetched.modified if fetched else utc_now()
                survey.unreadable.append(
                    Unreadable(source, snapshot_id, location, str(exc), modified)
                )
        return survey

    def _add_attempt(self, survey: Survey, source: str, snapshot_id: str) -> None:
        modified = self.backend.last_change(snapshot_prefix(source, snapshot_id))
        if modified is not None:  # removed meanwhile: nothing there
            survey.attempts.append(Attempt(snapshot_id, modified))

    def list_snapshots(self, source: str) -> list[StoredSnapshot]:
        """Complete snapshots of `source`, newest first (ids sort in time order)."""
        return self.survey(source).snapshots

    def find(self, source: str, snapshot_id: str = LATEST) -> StoredSnapshot:
        """One complete snapshot by id, or the newest with `latest`.

        An id that is not shaped like one is a usage error (it is never joined
        into a key); a manifest that fails the checks is reported as such.
        """
        check_source(source)
        if snapshot_id == LATEST:
            for candidate in self.location_ids(source):
                with contextlib.suppress(UnreadableManifest):  # `survey` reports those
                    snapshot = self.read_manifest(source, candidate)
                    if snapshot and not snapshot.ahead_of_clocks(utc_now()):  # reported too
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

    def newest_complete_at(
        self,
        source: str,
        moment: datetime,
        complete: Callable[[StoredSnapshot], datetime] = lambda s: finished_by(s.manifest),
    ) -> StoredSnapshot | None:
        """The newest snapshot of `source` that was complete at `moment` (by `complete`: when
        its manifest says it finished, or a source's own consistency point), or None. Ids
        that began after the moment are passed over unread, so a long history costs one
        listing and a manifest or two; unreadable ones and those ahead of the clocks are
        passed over as by `latest`."""
        for snapshot_id in self.location_ids(source):
            if snapshot_started(snapshot_id) > moment:
                continue
            with contextlib.suppress(UnreadableManifest):
                snapshot = self.read_manifest(source, snapshot_id)
                if (
                    snapshot is not None
                    and complete(snapshot) <= moment
                    and not snapshot.ahead_of_clocks(utc_now())
                ):
                    return snapshot
        return None

    def open_file(
        self, source: str, snapshot_id: str, name: str
    ) -> AbstractContextManager[BinaryIO]:
        """The stored bytes of one artifact, as a readable stream."""
        return self.backend.open(artifact_key(source, snapshot_id, name))

    def usage(self, source: str) -> int:
        """Every byte stored under the source's folder: snapshots, attempts, its own data."""
        return self.backend.usage(source_prefix(source))

    # Deleting

    def locked_until(self, source: str, snapshot_id: str) -> datetime | None:
        """Until when S3 Object Lock keeps any object of the location from being deleted (None:
        it may go now). Asked of every object, not the manifest alone: a snapshot is deleted
        whole or not at all."""
        return self.backend.retained_until(snapshot_prefix(source, snapshot_id))

    def delete(self, source: str, snapshot_id: str) -> None:
        """Remove a location, manifest first so it is never listed half-deleted."""
        self.backend.delete(manifest_key(source, snapshot_id))
        self.backend.delete_prefix(snapshot_prefix(source, snapshot_id))
