"""Reading snapshots back: checking stored bytes, and turning them into plain artifacts.

Every read re-hashes the bytes as stored and compares them with the
manifest, so a restore never silently uses a damaged artifact: the caller
writes into a temporary file and only trusts it once `restore_artifact`
has returned.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyrage
import zstandard
from pyrage import x25519

from backup_pipelines.errors import IntegrityError, StoreError
from backup_pipelines.snapshot.staging import stored_name
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot
from backup_pipelines.storage.files import disk_full
from backup_pipelines.storage.names import check_artifact_name
from backup_pipelines.storage.streams import (
    CHUNK_SIZE,
    CountingWriter,
    HashingReader,
    HashingWriter,
)


def verify_snapshot(store: SnapshotStore, snapshot: StoredSnapshot) -> list[str]:
    """Re-read every stored artifact; return what does not match the manifest (empty = sound)."""
    problems = []
    for entry in snapshot.manifest.files:
        try:
            with store.open_file(snapshot.source, snapshot.snapshot_id, entry.name) as stored:
                reader = HashingReader(stored)
                reader.drain()
        except StoreError as exc:
            problems.append(f"{entry.name}: {exc}")
            continue
        if reader.size != entry.size:
            problems.append(
                f"{entry.name}: {reader.size} bytes stored, the manifest says {entry.size}"
            )
        elif reader.hexdigest() != entry.sha256:
            problems.append(f"{entry.name}: sha256 does not match the manifest")
    return problems


def restore_artifact(
    store: SnapshotStore,
    snapshot: StoredSnapshot,
    name: str,
    destination: BinaryIO,
    identities: Sequence[x25519.Identity] = (),
) -> int:
    """Write the plain bytes of artifact `name` (its logical name) into `destination`.

    Decrypts and decompresses as it reads, checking size and sha256 of the
    stored bytes at the end. Returns the number of plain bytes written.
    Raises `IntegrityError` if anything does not match.
    """
    manifest = snapshot.manifest
    encrypted = manifest.encryption is not None
    if encrypted and not identities:
        raise IntegrityError(f"{snapshot.source}/{snapshot.snapshot_id} is encrypted; no identity")
    try:
        entry = manifest.file(stored_name(name, encrypted))
    except KeyError:
        raise IntegrityError(
            f"{snapshot.source}/{snapshot.snapshot_id} has no {name} artifact"
        ) from None
    where = f"{snapshot.source}/{snapshot.snapshot_id}/{entry.name}"
    with store.open_file(snapshot.source, snapshot.snapshot_id, entry.name) as stored:
        decoded = decode(stored, destination, identities if encrypted else None)
    if decoded.stored.size != entry.size or decoded.stored.hexdigest() != entry.sha256:
        raise IntegrityError(f"{where}: stored bytes do not match the manifest (size or sha256)")
    decoded.check(where)
    return decoded.plain.size


@dataclass
class Decoded:
    """What `decode` read and wrote: the stored bytes' and the plain bytes' counts (and
    hashes), and why the stream did not decode, if it did not."""

    stored: HashingReader
    plain: CountingWriter | HashingWriter
    encrypted: bool
    error: Exception | None

    def check(self, where: str) -> None:
        """`IntegrityError` naming `where` unless the stream decoded."""
        if isinstance(self.error, pyrage.DecryptError):
            raise IntegrityError(
                f"{where}: cannot decrypt with the identity in BACKUP_AGE_IDENTITY_FILE "
                "(is it the key it was encrypted to?)"
            )
        if self.error is not None:
            kind = "age and zstd" if self.encrypted else "zstd"
            raise IntegrityError(f"{where}: not a valid {kind} stream ({self.error})")


def decode(
    stored: BinaryIO,
    destination: BinaryIO,
    identities: Sequence[x25519.Identity] | None,
    *,
    hash_plain: bool = False,
) -> Decoded:
    """Stored bytes → age (with `identities`; None: in the clear) → zstd → `destination`,
    hashing the stored bytes (and the plain ones with `hash_plain`: a pass restores of
    large artifacts do without) and reading `stored` to its end. A failing read or write raises as
    itself; a stream that does not decode is kept in `Decoded.error` for the caller, who
    first compares the stored bytes with what it expected."""
    reader = HashingReader(stored)
    plain = HashingWriter(destination) if hash_plain else CountingWriter(destination)
    decompressor = zstandard.ZstdDecompressor().stream_writer(plain, closefd=False)
    try:
        if identities is not None:
            pyrage.decrypt_io(reader, decompressor, list(identities))
        else:
            shutil.copyfileobj(reader, decompressor, CHUNK_SIZE)
        decompressor.flush()
        error = None
    except Exception as exc:
        # pyrage reports a failing read or write as its own error: raise the real one
        if failed := reader.error or plain.error:
            raise failed from None
        error = exc
    reader.drain()
    return Decoded(reader, plain, identities is not None, error)


@contextmanager
def artifact_file(
    store: SnapshotStore,
    snapshot: StoredSnapshot,
    name: str,
    identities: Sequence[x25519.Identity],
    work_dir: Path,
) -> Iterator[Path]:
    """The plain artifact `name` as a local file (checked, decrypted, decompressed), for
    tools that need a real file; it is removed when the block ends."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=f"{snapshot.source}-") as scratch:
        path = Path(scratch) / check_artifact_name(name)
        try:
            with path.open("wb") as out:
                restore_artifact(store, snapshot, name, out, identities)
        except OSError as exc:
            raise disk_full(exc, path) or exc from None
        yield path


@dataclass(frozen=True)
class SnapshotReader:
    """One stored snapshot and what reading it takes: its store, the age identities (none
    for a snapshot in the clear) and scratch space; what restores, deep checks and drills
    are handed, so none of them looks these up again."""

    store: SnapshotStore
    snapshot: StoredSnapshot
    work_dir: Path
    identities: Sequence[x25519.Identity] = ()

    @property
    def where(self) -> str:
        """`<source>/<snapshot_id>`, for messages."""
        return f"{self.snapshot.source}/{self.snapshot.snapshot_id}"

    def restore_artifact(self, name: str, destination: BinaryIO) -> int:
        return restore_artifact(self.store, self.snapshot, name, destination, self.identities)

    def artifact_file(self, name: str) -> AbstractContextManager[Path]:
        return artifact_file(self.store, self.snapshot, name, self.identities, self.work_dir)
