"""The WAL archive: PostgreSQL's write-ahead log, one stored object per file, for recovery to
any moment since a base backup (the base backup source's).

`archive_command` hands each finished file to `wal-push`, `restore_command`
asks `wal-fetch` for it back (`cli/wal.py`, `operations/wal.py`). A file is stored as
`<root>/postgres_wal/<folder>/<name>-<sha256>.zst[.age]`: compressed,
encrypted when recipients are set, and named with the sha256 of its plain
bytes, so one listing says whether the archive holds a file and with which
content, and a fetch proves what it wrote. `<folder>` is the segment name's
timeline and high half of its position (as pgBackRest groups them: 4 GiB of
WAL each), or `history` for the timelines' `.history` files; pruning drops
whole folders. `gaps/<first>-<last>.json` records the segments given up while
the store could not be reached (`wal/queue.py`).

Everything read back is untrusted, like a manifest: only names shaped like
PostgreSQL's WAL names are ever joined into a key, and what a fetch writes
must hash to the name's sha256 before it replaces the file asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from pyrage import x25519

from backup_pipelines.errors import BackupError, ConfigurationError, IntegrityError
from backup_pipelines.snapshot.reader import decode
from backup_pipelines.snapshot.staging import encode
from backup_pipelines.storage import Backend, ObjectExists
from backup_pipelines.storage.files import disk_full
from backup_pipelines.storage.layout import wal_archive_prefix, wal_file_key, wal_folder_prefix
from backup_pipelines.storage.streams import CHUNK_SIZE, HashingReader
from backup_pipelines.storage.transfer import copy_proven
from backup_pipelines.wal.names import (
    SEGMENT,
    check_wal_name,
    segment_name,
    segment_position,
)
from backup_pipelines.wal.queue import Gap

HISTORY_FOLDER = "history"
GAPS_FOLDER = "gaps"
GAP_RECORD_MAX_BYTES = 4096
IN_MEMORY_MAX = 64 << 20
"""A WAL file up to this size is compressed in memory, not through a scratch file."""
FOLDER = re.compile(r"[0-9A-F]{16}|history")
STORED = re.compile(
    r"(?P<name>[0-9A-F]{8}(\.history|[0-9A-F]{16}(\.partial|\.[0-9A-F]{8}\.backup)?))"
    r"-(?P<sha256>[0-9a-f]{64})\.zst(?P<age>\.age)?"
)


class WalConflict(BackupError):
    """The archive holds the file with other content: never overwritten (PostgreSQL's rule)."""


class WalHole(IntegrityError):
    """A file is missing though later ones of its timeline are there: recovery must stop."""


def folder_of(name: str) -> str:
    """Where a file is kept: `history`, or its timeline and the high half of its position."""
    return HISTORY_FOLDER if name.endswith(".history") else name[:16]


@dataclass(frozen=True)
class ArchivedFile:
    """One file in the archive, as its stored name says: which, its content's sha256, and
    whether it is encrypted."""

    name: str
    sha256: str
    encrypted: bool

    @property
    def stored_name(self) -> str:
        return f"{self.name}-{self.sha256}.zst" + (".age" if self.encrypted else "")

    @classmethod
    def parse(cls, stored: str) -> ArchivedFile | None:
        """The file a stored name describes; None for a name that is not one of ours."""
        found = STORED.fullmatch(stored)
        if found is None:
            return None
        return cls(found["name"], found["sha256"], found["age"] is not None)


@dataclass(frozen=True)
class WalArchive:
    """The archive `source` (`postgres_wal`, or `postgres_wal.<target>`) in the store
    `backend`."""

    backend: Backend
    source: str

    def describe(self) -> str:
        return f"the WAL archive {self.source} in {self.backend.describe()}"

    def _prefix(self, folder: str) -> str:
        return wal_folder_prefix(self.source, folder)

    def _key(self, held: ArchivedFile) -> str:
        return wal_file_key(self.source, folder_of(held.name), held.stored_name)

    def folders(self) -> list[str]:
        """The segment folders, oldest position first (the history folder left out)."""
        names = self.backend.children(wal_archive_prefix(self.source))
        segments = [name for name in names if FOLDER.fullmatch(name) and name != HISTORY_FOLDER]
        return sorted(segments, key=lambda folder: (folder[8:], folder[:8]))

    def files(self, folder: str) -> list[ArchivedFile]:
        found = (ArchivedFile.parse(name) for name in self.backend.files(self._prefix(folder)))
        return [file for file in found if file is not None]

    def find(self, name: str, listed: Iterable[ArchivedFile] | None = None) -> ArchivedFile | None:
        """The archived copy of `name`, or None; two different ones are refused. `listed`:
        its folder's files as listed moments ago (listed now without it)."""
        if listed is None:
            listed = self.files(folder_of(name))
        held = {file for file in listed if file.name == name}
        if len({file.sha256 for file in held}) > 1:
            raise WalConflict(f"{self.describe()} holds two different copies of {name}")
        return next(iter(held), None)

    def push(
        self,
        path: Path,
        recipients: Sequence[x25519.Recipient],
        scratch: Path,
        threads: int = -1,
        listed: Iterable[ArchivedFile] | None = None,
    ) -> ArchivedFile:
        """Store the WAL file at `path` (unless an identical copy is there already) and say
        what the archive holds of it, compressed with `threads` (`encode`'s); `listed` as
        `find` takes it. `WalConflict` when it holds other content under its name."""
        name = check_wal_name(path.name)
        held = self.find(name, listed)
        if held is not None:  # a retry after a crash: only the content is read
            if held.sha256 == _sha256_of(path):
                return held
            raise WalConflict(
                f"{self.describe()} already holds a different {name}: refusing to overwrite "
                "it (is a second cluster archiving into the same place?)"
            )
        return self._put(path, name, recipients, scratch, threads)

    def holding(self, files: Sequence[ArchivedFile]) -> list[ArchivedFile]:
        """Those of `files` the archive's listing shows."""
        listed = self.listing([file.name for file in files])
        return [file for file in files if file in listed]

    def listing(self, names: Sequence[str]) -> set[ArchivedFile]:
        """The files of the folders `names` fall in (one listing per folder)."""
        return {file for folder in {folder_of(n) for n in names} for file in self.files(folder)}

    def _put(
        self,
        path: Path,
        name: str,
        recipients: Sequence[x25519.Recipient],
        scratch: Path,
        threads: int,
    ) -> ArchivedFile:
        """Compress (and encrypt) in one read, hashing the content for the stored name: in
        memory for a segment of up to `IN_MEMORY_MAX` bytes, in a file under `scratch` for a
        larger one (`wal_segment_size` may be up to 1 GiB)."""
        try:
            with _open_wal(path) as source:
                plain = HashingReader(source)
                if os.fstat(source.fileno()).st_size <= IN_MEMORY_MAX:
                    with io.BytesIO() as out:
                        encode(plain, out, recipients, threads)  # type: ignore[arg-type]
                        archived = ArchivedFile(name, plain.hexdigest(), bool(recipients))
                        # a key names its content's sha256: one found there holds these bytes
                        with contextlib.suppress(ObjectExists):
                            self.backend.put_bytes(self._key(archived), out.getvalue())
                    return archived
                scratch.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=scratch, prefix=f".{name}-") as out:
                    encode(plain, out, recipients, threads)  # type: ignore[arg-type]
                    out.flush()
                    os.fsync(out.fileno())
                    archived = ArchivedFile(name, plain.hexdigest(), bool(recipients))
                    self.backend.put_file(self._key(archived), Path(out.name))
        except OSError as exc:
            raise disk_full(exc, scratch) or BackupError(
                f"cannot archive {path}: {exc.strerror or exc}"
            ) from None
        return archived

    def fetch(
        self,
        name: str,
        destination: Path,
        identities: Callable[[], Sequence[x25519.Identity]] = list,
    ) -> bool:
        """Write the archived `name` to `destination`, proven against its sha256; False when
        the archive does not hold it (the end of recovery). `identities` is asked only for
        an encrypted file (where recovery runs, the identity file). A segment missing where later
        ones of its timeline are held is a hole: `WalHole`, so recovery stops, never skips."""
        check_wal_name(name)
        held = self.find(name)
        if held is None:
            if SEGMENT.fullmatch(name) and (later := self._later_segment(name)):
                raise WalHole(
                    f"{self.describe()} does not hold {name}, but holds {later} of the same "
                    "timeline: WAL is missing from the archive, so recovery stops here rather "
                    "than skip it"
                )
            return False
        self._write(held, destination, identities() if held.encrypted else None)
        return True

    def _write(
        self,
        held: ArchivedFile,
        destination: Path,
        identities: Sequence[x25519.Identity] | None,
    ) -> None:
        where = self._key(held)
        partial = destination.with_name(f".{destination.name}.fetching")
        try:
            with self.backend.open(where) as stored, partial.open("wb") as out:
                decoded = decode(stored, out, identities, hash_plain=True)
            decoded.check(where)
            if decoded.plain.hexdigest() != held.sha256:  # type: ignore[union-attr]
                raise IntegrityError(f"{where}: the content does not match its sha256")
            os.replace(partial, destination)
        except OSError as exc:
            raise disk_full(exc, destination) or BackupError(
                f"cannot write {destination}: {exc.strerror or exc}"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()

    def _later_segment(self, segment: str) -> str | None:
        """A segment of `segment`'s timeline after it, if the archive holds one."""
        timeline, position = segment[:8], segment_position(segment)
        for folder in self.folders():
            if folder[:8] != timeline or int(folder[8:], 16) < position[0]:
                continue
            for file in self.files(folder):
                if SEGMENT.fullmatch(file.name) and segment_position(file.name) > position:
                    return file.name
        return None

    def missing(self, first: str, last: str, segment_bytes: int) -> list[str]:
        """The segments from `first` to `last` of one timeline (segments of `segment_bytes`,
        the cluster's `wal_segment_size`) that the archive does not hold."""
        per_high = (1 << 32) // segment_bytes
        timeline = int(first[:8], 16)
        (high, low), (end_high, end_low) = segment_position(first), segment_position(last)
        held = {
            file.name
            for folder_high in range(high, end_high + 1)
            for file in self.files(f"{timeline:08X}{folder_high:08X}")
        }
        wanted = (
            segment_name(timeline, number, segment_bytes)
            for number in range(high * per_high + low, end_high * per_high + end_low + 1)
        )
        return [name for name in wanted if name not in held]

    def record_gap(self, gap: Gap) -> None:
        """Say in the archive that `gap`'s segments were given up (`wal/queue.py`)."""
        with contextlib.suppress(ObjectExists):  # recorded before, and not forgotten then
            self.backend.put_bytes(self._gap_key(gap), gap.to_json().encode())

    def _gap_key(self, gap: Gap) -> str:
        return wal_file_key(self.source, GAPS_FOLDER, gap.key_name)

    def gaps(self) -> list[Gap]:
        """The gaps recorded, oldest first; a record that is not one is left out (untrusted)."""
        found = []
        for name in self.backend.files(self._prefix(GAPS_FOLDER)):
            fetched = self.backend.get(
                wal_file_key(self.source, GAPS_FOLDER, name), GAP_RECORD_MAX_BYTES
            )
            gap = Gap.parsed(fetched.data) if fetched is not None else None
            if gap is not None and gap.key_name == name:
                found.append(gap)
        return sorted(found, key=lambda gap: segment_position(gap.first))

    def newest_segment(self) -> str | None:
        """The segment furthest on in the archive, on any timeline."""
        for folder in reversed(self.folders()):
            segments = [f.name for f in self.files(folder) if SEGMENT.fullmatch(f.name)]
            if segments:
                return max(segments, key=lambda name: (segment_position(name), name[:8]))
        return None

    def last_archived(self) -> datetime | None:
        """When the newest file was stored (the newest folder's last change): how far the
        archive reaches, as a time."""
        folders = self.folders()
        times = [self.backend.last_change(self._prefix(f)) for f in folders[-2:]]
        found = [time for time in times if time is not None]
        return max(found) if found else None

    def copy_to(self, other: WalArchive) -> list[str]:
        """Every file of this archive that `other` lacks, into `other`, each read back: the
        timelines' history first (a recovery follows it), then the folders oldest first.
        A file `other` holds with other content is left as it is (`WalConflict`), as
        `push` would. Returns the names copied."""
        copied = []
        for gap in set(self.gaps()) - set(other.gaps()):
            other.record_gap(gap)
            copied.append(gap.key_name)
        for folder in [HISTORY_FOLDER, *self.folders()]:
            theirs = {file.name: file for file in other.files(folder)}
            for file in self.files(folder):
                held = theirs.get(file.name)
                if held is not None and held.sha256 != file.sha256:
                    raise WalConflict(
                        f"{other.describe()} holds a different {file.name}: left as it is"
                    )
                if held is None:
                    copy_proven(self.backend, other.backend, self._key(file))
                    copied.append(file.name)
        return copied

    def prune_before(self, segment: str, *, dry_run: bool) -> tuple[list[str], list[str]]:
        """Drop every file before `segment`'s position, on every timeline: positions grow
        across timelines, so recovery from a base backup starting at `segment` never needs
        one; so do the gaps recorded before it. Timelines' history files always stay. Folders
        wholly before go at once; a folder S3 Object Lock still protects stays whole. Returns
        (removed, locked) file names."""
        cut = segment_position(segment)
        removed: list[str] = []
        locked: list[str] = []
        for gap in self.gaps():
            if segment_position(gap.last) < cut:
                if not dry_run:
                    self.backend.delete(self._gap_key(gap))
                removed.append(gap.key_name)
        for folder in self.folders():
            if int(folder[8:], 16) > cut[0]:
                continue
            files = self.files(folder)
            going = [file for file in files if segment_position(file.name[:24]) < cut]
            if not going:
                continue
            prefix = self._prefix(folder)
            if self.backend.retained_until(prefix) is not None:
                locked += [file.name for file in going]
                continue
            if not dry_run and len(going) == len(files):
                self.backend.delete_prefix(prefix)
            elif not dry_run:
                for file in going:
                    self.backend.delete(self._key(file))
            removed += [file.name for file in going]
        return removed, locked


def _open_wal(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise ConfigurationError(f"there is no WAL file {path}") from None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with _open_wal(path) as stream:
            while chunk := stream.read(CHUNK_SIZE):
                digest.update(chunk)
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()
