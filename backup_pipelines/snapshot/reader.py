"""Reading snapshots back: checking stored bytes, and turning them into plain streams.

Every read re-hashes the bytes as stored and compares them with the
manifest, so a restore never silently uses a damaged artifact. The plain
bytes go from the store through memory into their consumer (a tool's
stdin, a socket, a pipe): none of this writes them to disk, so with age
recipients set the backup host holds nothing it could read without the
identity. A consumer trusts what it read only once the read has returned.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyrage
import zstandard
from pyrage import x25519

from backup_pipelines.errors import IntegrityError, StoreError
from backup_pipelines.snapshot.staging import stored_name
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot
from backup_pipelines.storage.streams import (
    CHUNK_SIZE,
    CountingWriter,
    EnoughRead,
    HashingReader,
    HashingWriter,
    MeteredReader,
    PipeFeed,
)


def verify_snapshot(store: SnapshotStore, snapshot: StoredSnapshot) -> list[str]:
    """Re-read every stored artifact; return what does not match the manifest (empty = sound),
    and a manifest written over since its commit."""
    problems = [snapshot.rewritten] if snapshot.rewritten else []
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
    progress: Callable[[str], None] | None = None,
) -> int:
    """Write the plain bytes of artifact `name` (its logical name) into `destination`.

    Decrypts and decompresses as it reads, checking size and sha256 of the
    stored bytes at the end. Returns the number of plain bytes written.
    Raises `IntegrityError` if anything does not match. `progress` hears how
    much of the stored artifact has been read, every few seconds.
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
        metered = MeteredReader(stored, f"reading {where}", progress, expected=entry.size)
        decoded = decode(metered, destination, identities if encrypted else None)
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
    itself (but `EnoughRead` ends the decoding only); a stream that does not decode is kept in
    `Decoded.error` for the caller, who first compares the stored bytes with what it expected."""
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
        failed = reader.error or plain.error
        if failed is not None and not isinstance(failed, EnoughRead):
            raise failed from None
        error = None if failed is not None else exc
    reader.drain()
    return Decoded(reader, plain, identities is not None, error)


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

    def restore_artifact(
        self, name: str, destination: BinaryIO, progress: Callable[[str], None] | None = None
    ) -> int:
        return restore_artifact(
            self.store, self.snapshot, name, destination, self.identities, progress
        )

    def feed(
        self,
        name: str,
        stdin: BinaryIO,
        *,
        process: subprocess.Popen | None = None,
        checks_all: bool = True,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """Write the plain artifact into a tool's stdin (`process`'s, when given), then
        close it: the plain bytes go from the store to the tool through memory only. A tool
        that stops reading early ends the feed; with `checks_all` the rest is still read and
        checked (`IntegrityError` when it does not match the manifest), unless the tool
        failed."""
        destination = PipeFeed(stdin, checks_all=checks_all, process=process)
        try:
            self.restore_artifact(name, destination, progress)
        except BrokenPipeError:
            pass  # the tool has what it wanted, or failed: its exit status says which
        finally:
            with suppress(BrokenPipeError):
                stdin.close()

    @contextmanager
    def open_plain(self, name: str) -> Iterator[BinaryIO]:
        """The plain artifact as a stream to read, decoded in a thread into a pipe: through
        memory only. When the block ends (read to the end or not) every stored byte has been
        checked against the manifest, or `IntegrityError` is raised."""
        read_end, write_end = os.pipe()
        failures: list[BaseException] = []

        def produce() -> None:
            try:
                with open(write_end, "wb") as pipe:
                    self.feed(name, pipe)
            except BaseException as exc:  # handed to the reading thread, which raises it
                failures.append(exc)

        producer = threading.Thread(target=produce, name=f"decode-{name}", daemon=True)
        producer.start()
        try:
            with open(read_end, "rb") as stream:
                yield stream
        finally:
            producer.join()
            if failures:  # the cause of what the reader saw (a stream that ended early)
                raise failures[0]
