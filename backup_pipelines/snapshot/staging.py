"""Assembling a snapshot: source bytes → zstd → age (optional) → sha256 → staging file.

A source module hands each artifact over as a running command (its stdout,
or the file it writes where it must seek back into its output), a local
file, or an iterator of chunks; this module streams it into the staging area
with bounded memory and decides whether the artifact is good enough to
count: the producer exited 0, it produced bytes, and those bytes start the
way the format says. Anything less raises (`ToolFailed`, `ProducerFailed`),
and `stage()` removes the whole staging directory, so no half-written
snapshot survives.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import pyrage
import zstandard
from pyrage import x25519

from backup_pipelines import locks
from backup_pipelines.errors import ProducerFailed
from backup_pipelines.processes import running, stopped_when_stalled
from backup_pipelines.snapshot.manifest import FileEntry, Manifest, new_snapshot_id, utc_now
from backup_pipelines.storage.files import disk_full, remove_stale
from backup_pipelines.storage.names import check_artifact_name, split_source
from backup_pipelines.storage.streams import (
    CHUNK_SIZE,
    HashingWriter,
    IteratorReader,
    MeteredReader,
    copy_stream,
    human_bytes,
)

logger = logging.getLogger(__name__)

ZSTD_LEVEL = 3
BACKUP_LOCK = ".backup.lock"
WARNING = "warning"
"""The stats entry in which a source says what is worth a look without failing the backup (a
server that holds nothing at all): the backup warns it in the log, and it stays in the
metadata."""
STALL_AFTER_S = 600.0
"""The default of `BACKUP_STALL_TIMEOUT_S`."""


def encode(
    source: BinaryIO,
    out: BinaryIO,
    recipients: Sequence[x25519.Recipient] = (),
    threads: int = -1,
) -> HashingWriter:
    """`source` → zstd → age (to `recipients`, when there are any) → `out`, in bounded
    memory; the writer returned has the stored bytes' size and sha256. A failing read or
    write raises as itself: `source` and the writer keep it in `error`, which pyrage would
    report as a failure of its own. zstd uses every core (`threads` -1), or as many threads
    as `threads` says (0: this one alone, when the caller runs several encodes at once)."""
    sink = HashingWriter(out)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=threads)
    with compressor.stream_reader(source, read_size=CHUNK_SIZE) as compressed:
        try:
            if recipients:
                pyrage.encrypt_io(compressed, sink, list(recipients))
            else:
                copy_stream(compressed, sink)
        except Exception:
            if failed := getattr(source, "error", None) or sink.error:
                raise failed from None
            raise
    return sink


def stored_name(name: str, encrypted: bool) -> str:
    """The name an artifact is stored under: compressed, then (maybe) encrypted."""
    return f"{name}.zst.age" if encrypted else f"{name}.zst"


def logical_name(stored: str) -> str:
    """The inverse of `stored_name`: `crm.dump.zst.age` → `crm.dump`."""
    return stored.removesuffix(".age").removesuffix(".zst")


@dataclass
class StagedSnapshot:
    """A snapshot being assembled; it exists only in the staging area until a store commits it."""

    source: str
    snapshot_id: str
    run_id: str
    started_at: datetime
    directory: Path
    recipients: Sequence[x25519.Recipient] = ()
    progress: Callable[[str], None] | None = None
    stall_after_s: float = STALL_AFTER_S
    """How long a producing command may give nothing before it counts as hung."""
    files: list[FileEntry] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    plain_bytes: dict[str, int] = field(default_factory=dict)
    """Bytes each producer wrote, by stored name, before compression."""
    monotonic_start: float = field(default_factory=time.monotonic)

    @property
    def encryption(self) -> str | None:
        return "age" if self.recipients else None

    def path_of(self, entry: FileEntry) -> Path:
        return self.directory / entry.name

    def add_stream(
        self, name: str, chunks: Iterable[bytes], *, expect_prefix: bytes = b""
    ) -> FileEntry:
        """Store an artifact produced by Python code (an HTTP body, a generator)."""
        metered = MeteredReader(IteratorReader(chunks), name, self.progress)  # type: ignore[arg-type]
        entry = self._write(name, metered)
        self._accept(entry, metered, label=name, expect_prefix=expect_prefix)
        return entry

    def add_file(
        self, name: str, path: Path, *, expect_prefix: bytes = b"", label: str = ""
    ) -> FileEntry:
        """Store a copy of a local file (an AOF segment, for example)."""
        label = label or str(path)
        with path.open("rb") as source:
            size = os.fstat(source.fileno()).st_size
            metered = MeteredReader(source, label, self.progress, expected=size)
            entry = self._write(name, metered)
        self._accept(entry, metered, label=label, expect_prefix=expect_prefix)
        return entry

    def add_command(
        self,
        name: str,
        argv: Sequence[str],
        *,
        label: str,
        env: Mapping[str, str] | None = None,
        expect_prefix: bytes = b"",
        secrets: Sequence[str | None] = (),
        watch: Callable[[memoryview], None] | None = None,
        expected_bytes: int | None = None,
    ) -> FileEntry:
        """Store what a command writes to stdout; `ToolFailed` unless it exits 0.

        `label` is what the operator sees ("pg_dump of crm on db1:5432"): it is
        used instead of argv in every message so no secret on a command line
        could leak, and `secrets` are masked in the command's stderr.

        The output goes straight through zstd (and age) into staging: nothing
        of it rests on disk in the clear. `expected_bytes` (a database's size)
        turns the progress lines' byte counts into a share of the whole.

        `watch` sees every plain chunk as it passes (to read what the stream says
        of itself, as a base backup's label and manifest) without a second read.
        """
        with running(argv, label=label, env=env, secrets=secrets) as process:
            metered = MeteredReader(process.stdout, label, self.progress, watch, expected_bytes)
            progress = lambda: metered.total  # noqa: E731 (the watching thread reads it)
            with stopped_when_stalled(process, label, progress, self.stall_after_s):
                entry = self._write(name, metered)
        self._accept(entry, metered, label=label, expect_prefix=expect_prefix)
        return entry

    def _write(self, name: str, metered: MeteredReader) -> FileEntry:
        target_name = stored_name(name, bool(self.recipients))
        if any(entry.name == target_name for entry in self.files):
            raise ValueError(f"artifact {name!r} is already part of this snapshot")
        path = self.directory / check_artifact_name(target_name)
        try:
            with path.open("xb") as out:
                sink = encode(metered, out, self.recipients)
        except OSError as exc:
            raise disk_full(exc, path) or exc from None
        return FileEntry(name=target_name, size=sink.size, sha256=sink.hexdigest())

    def _accept(
        self, entry: FileEntry, metered: MeteredReader, *, label: str, expect_prefix: bytes
    ) -> None:
        if metered.total == 0:
            raise ProducerFailed(f"{label} produced no data")
        if not metered.head.startswith(expect_prefix):
            raise ProducerFailed(f"{label} did not produce the expected format")
        self.files.append(entry)
        self.plain_bytes[entry.name] = metered.total
        logger.debug("staged %s", entry.name)
        if self.progress:
            self.progress(
                f"{label}: {human_bytes(metered.total)} → {human_bytes(entry.size)} stored"
            )

    def manifest(self, finished_at: datetime) -> Manifest:
        kind, target = split_source(self.source)
        return Manifest(
            source=self.source,
            kind=kind,
            target=target,
            snapshot_id=self.snapshot_id,
            started_at=self.started_at,
            finished_at=finished_at,
            run_id=self.run_id,
            encryption=self.encryption,
            files=list(self.files),
            stats=dict(self.stats),
        )

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def backup_running(folder: Path) -> bool:
    """Whether a dump holds the backup lock of this source's staging folder now."""
    return locks.held(folder / BACKUP_LOCK)


@contextlib.contextmanager
def stage(
    staging_dir: Path,
    source: str,
    run_id: str,
    *,
    recipients: Sequence[x25519.Recipient] = (),
    progress: Callable[[str], None] | None = None,
    stall_after_s: float = STALL_AFTER_S,
) -> Iterator[StagedSnapshot]:
    """A fresh staging directory for one snapshot; removed if the block raises."""
    started_at = utc_now()
    snapshot_id = new_snapshot_id(run_id, started_at)
    staging_root = staging_dir / source
    directory = staging_root / snapshot_id
    try:
        staging_root.mkdir(parents=True, exist_ok=True)
        remove_stale(staging_root, started_at)  # what killed workers of this source left
        directory.mkdir()
    except OSError as exc:
        raise disk_full(exc, directory) or exc from None
    staged = StagedSnapshot(
        source=source,
        snapshot_id=snapshot_id,
        run_id=run_id,
        started_at=started_at,
        directory=directory,
        recipients=recipients,
        progress=progress,
        stall_after_s=stall_after_s,
    )
    try:
        yield staged
    except BaseException:
        staged.discard()
        raise


@dataclass(frozen=True)
class Staging:
    """The staging area (`BACKUP_ARTIFACTS_DIR/.staging`): where snapshots are assembled,
    encrypted to `recipients` (public keys only: a backup never needs an identity), and where
    restores, verifies and drills get their scratch space."""

    directory: Path
    recipients: Sequence[x25519.Recipient] = ()
    stall_after_s: float = STALL_AFTER_S

    def stage(
        self, source: str, run_id: str, progress: Callable[[str], None] | None = None
    ) -> contextlib.AbstractContextManager[StagedSnapshot]:
        return stage(
            self.directory,
            source,
            run_id,
            recipients=self.recipients,
            progress=progress,
            stall_after_s=self.stall_after_s,
        )

    @contextlib.contextmanager
    def one_at_a_time(self, source: str, log: Callable[[str], None]) -> Iterator[None]:
        """Dumps of `source` on this host one after another, whatever launched them (two
        `dagster asset materialize`, a run and the command): Dagster's pools hold only for
        runs its daemon launches. A lock file in the source's staging folder, held while the
        block runs; a second backup waits for the first, saying so."""
        folder = self.directory / source
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / BACKUP_LOCK).open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"another backup of {source} runs on this host: waiting for it to end")
                fcntl.flock(lock, fcntl.LOCK_EX)
            os.utime(lock.name)  # fresh: the staging area's day-old sweep leaves it be
            yield

    def work_dir(self, purpose: str) -> Path:
        """Scratch space for `purpose` (restore, verify, drill), pruned like staging."""
        return self.directory / purpose
