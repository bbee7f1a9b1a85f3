"""A committed snapshot copied into another store, with the same write ordering as a commit.

Every artifact goes first, each read back from the copy against the
manifest's size and sha256; the very same manifest bytes go last, read back
against their sha256. Until then the copy is an attempt, invisible to
everything but `prune` (as an interrupted backup is); a copy cut midway
never counts. A location of the copy store that already holds another
manifest is never written over.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable

from backup_pipelines.errors import IntegrityError, StorageFull, StoreError
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot
from backup_pipelines.storage.layout import artifact_key, manifest_key, snapshot_prefix
from backup_pipelines.storage.transfer import Bytes, copy_proven


class SnapshotConflict(IntegrityError):
    """The copy store holds another snapshot under the same id: it is never overwritten."""


def copy_snapshot(
    snapshot: StoredSnapshot,
    source: SnapshotStore,
    target: SnapshotStore,
    progress: Callable[[str], None] | None = None,
) -> StoredSnapshot:
    """`snapshot` of `source` into `target`, or what `target` already holds of it (the same
    manifest). A failure leaves at most an attempt in `target`."""
    held = target.read_manifest(snapshot.source, snapshot.snapshot_id)
    if held is not None:
        if held.manifest_sha256 != snapshot.manifest_sha256:
            raise SnapshotConflict(
                f"{snapshot.source}/{snapshot.snapshot_id}: {target.describe()} holds another "
                "manifest under this id; it is left as it is"
            )
        return held
    _clear_attempt(target, snapshot)
    for entry in snapshot.manifest.files:
        key = artifact_key(snapshot.source, snapshot.snapshot_id, entry.name)
        copy_proven(source.backend, target.backend, key, Bytes(entry.size, entry.sha256), progress)
    raw = manifest_bytes(source, snapshot)
    target.backend.put_bytes(manifest_key(snapshot.source, snapshot.snapshot_id), raw)
    copied = target.read_manifest(snapshot.source, snapshot.snapshot_id)
    if copied is None or copied.manifest_sha256 != snapshot.manifest_sha256:
        raise IntegrityError(
            f"{snapshot.source}/{snapshot.snapshot_id}: the manifest read back from "
            f"{target.describe()} is not the one written"
        )
    return copied


def manifest_bytes(store: SnapshotStore, snapshot: StoredSnapshot) -> bytes:
    """The manifest's bytes as `store` holds them, the ones `snapshot` was read from."""
    fetched = store.backend.get(manifest_key(snapshot.source, snapshot.snapshot_id), 16 << 20)
    if fetched is None or hashlib.sha256(fetched.data).hexdigest() != snapshot.manifest_sha256:
        raise IntegrityError(
            f"{snapshot.source}/{snapshot.snapshot_id}: its manifest changed in "
            f"{store.describe()} since it was listed"
        )
    return fetched.data


def _clear_attempt(target: SnapshotStore, snapshot: StoredSnapshot) -> None:
    """What an interrupted copy left goes first; where S3 Object Lock keeps it, the copy
    writes new versions over it."""
    with contextlib.suppress(StoreError, StorageFull):
        target.backend.delete_prefix(snapshot_prefix(snapshot.source, snapshot.snapshot_id))
