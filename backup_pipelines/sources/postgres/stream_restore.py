"""Restoring one database's dump in parallel, fed from the stored stream, nothing plain on disk.

`pg_restore -j` needs a seekable file, and a streamed dump has no data
offsets; writing the plain dump to disk first is what issue 17 did, and
it left the plain dump on the backup host. Here the work is split along
pg_restore's own sections (its documented equivalent of one restore):

1. pre-data (tables, types, functions), from the table of contents alone;
2. one share per core, each a `pg_restore --use-list` fed its own decoded
   stream of the artifact: it loads its share of the tables (the largest
   first, balanced by the table sizes measured at backup), skipping past
   the others' as the stream passes, then builds the indexes and keys that
   concern its tables alone, while the other shares still load, as
   `pg_restore -j` overlaps them;
3. the rest of post-data (foreign keys across shares, triggers, ...) with
   `pg_restore -j`, from the table of contents alone: it needs no data.

The table of contents (schema, never rows) and the use lists live in
memory files (`memfd_create`), which pg_restore and its workers open by
their /proc path. Every stored byte is still checked against the manifest
by one of the streams, read to the end even after its pg_restore has what
it wants; the target is a database of our own until the caller swaps it in.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from backup_pipelines.errors import BackupError, IntegrityError
from backup_pipelines.processes import ToolFailed, run_tool, running
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.sources.postgres.cluster import Cluster
from backup_pipelines.sources.postgres.toc import (
    IncompleteToc,
    Toc,
    TocEntry,
    UnreadableArchive,
    read_toc,
)
from backup_pipelines.sources.postgres.unprivileged import RESTORE_OPTIONS, UnprivilegedRestore
from backup_pipelines.sources.source import Log

TOC_LIMIT = 256 << 20
"""A table of contents is kilobytes to a few megabytes; a dump whose first 256 MiB hold no
whole one is damaged, and is not kept in memory any longer."""


def parallel_jobs() -> int:
    """The cores this process may use: as many shares, and `pg_restore --jobs`."""
    return max(1, len(os.sched_getaffinity(0)))


class _TocComplete(Exception):
    """Raised into the decoder once the table of contents is read: nothing more is needed."""


class TocCollector(io.RawIOBase):
    """A destination that keeps the first plain bytes until they hold a whole table of
    contents, then stops the stream (`_TocComplete`)."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.toc: Toc | None = None
        self._next_attempt = 1 << 16

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.head += data
        if len(self.head) > TOC_LIMIT:
            raise UnreadableArchive(
                f"no whole table of contents in its first {TOC_LIMIT >> 20} MiB"
            )
        if len(self.head) >= self._next_attempt:
            self._next_attempt = 2 * len(self.head)  # parse again only once it has doubled
            if self.attempt():
                raise _TocComplete
        return len(data)

    def attempt(self) -> bool:
        try:
            self.toc = read_toc(self.head)
        except IncompleteToc:
            return False
        return True


def read_dump_toc(reader: SnapshotReader, artifact: str) -> Toc:
    """The table of contents of a stored dump, from the first bytes of its stream."""
    collector = TocCollector()
    try:
        reader.restore_artifact(artifact, collector)
    except _TocComplete:
        pass
    except UnreadableArchive as exc:
        raise IntegrityError(f"{reader.where}/{artifact}: not a pg_dump archive ({exc})") from None
    if collector.toc is None and not collector.attempt():
        raise IntegrityError(f"{reader.where}/{artifact}: the dump ends inside its contents list")
    assert collector.toc is not None
    return collector.toc


@contextmanager
def memory_file(data: bytes, name: str) -> Iterator[str]:
    """`data` in a file that lives in memory only, by a path other processes can open."""
    descriptor = os.memfd_create(name, 0)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        yield f"/proc/{os.getpid()}/fd/{descriptor}"
    finally:
        os.close(descriptor)


class FromBlock(io.RawIOBase):
    """Passes the table of contents, then drops the stream up to `marker` (see
    `Toc.block_marker`) and passes the rest from the data block it starts: a share's
    pg_restore then does not read through every table before its own, nor this process
    pipe them to it. Closing it closes `inner`."""

    def __init__(self, inner: BinaryIO, toc: Toc, marker: bytes):
        self._inner = inner
        self._toc_left = len(toc.prefix)
        self._marker = marker
        self._end_of_block = len(toc.end_of_block)  # the marker's part before the block
        self._seen = b""  # the end of what was dropped, where the marker may begin
        self._found = False

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        count, data = len(data), bytes(data)
        if self._toc_left:
            self._inner.write(data[: self._toc_left])
            data, self._toc_left = data[self._toc_left :], max(0, self._toc_left - len(data))
        if not self._found and data:
            window = self._seen + data
            at = window.find(self._marker)
            if at < 0:
                self._seen = window[-(len(self._marker) - 1) :]
                return count
            self._found = True
            data = window[at + self._end_of_block :]
        if data:
            self._inner.write(data)
        return count

    def close(self) -> None:
        super().close()
        self._inner.close()


OVERLAPPED = ("INDEX", "CONSTRAINT", "FK CONSTRAINT")
"""What a share builds itself once its rows are in; everything else of the post-data
section (triggers, rules, attached partition indexes, ...) waits for every share."""


@dataclass
class Share:
    """What one pg_restore loads from its own stream (`data`, in the stream's order), and the
    indexes and constraints on those tables alone it then builds (`indexes`) while the other
    shares are still loading, as `pg_restore -j` overlaps them."""

    data: list[TocEntry] = field(default_factory=list)
    indexes: list[TocEntry] = field(default_factory=list)


def plan_shares(toc: Toc, workers: int, table_bytes: Mapping[str, int]) -> list[Share]:
    """The data section split into `workers` shares: table data goes largest first to the
    least loaded share; everything else of the section (large objects, sequence values) to
    the first share. An index or constraint that depends on nothing but one share's tables
    (and what that share builds) follows that share's data: no two shares ever lock the
    same table."""

    def size(entry: TocEntry) -> int:
        """Its table's bytes at backup (a manifest's figure: untrusted, 0 unless a count)."""
        found = table_bytes.get(f"{entry.namespace}.{entry.tag}")
        return found if isinstance(found, int) and found > 0 else 0

    data = toc.in_section("data")
    tables = [entry for entry in data if entry.desc == "TABLE DATA"]
    loads, owner = [0] * workers, {}  # TABLE dump id → share number
    for entry in sorted(tables, key=size, reverse=True):
        lightest = loads.index(min(loads))
        for dump_id in (entry.dump_id, *entry.dependencies):  # the data and its table
            owner[dump_id] = lightest
        loads[lightest] += size(entry) or 1
    shares = [Share() for _ in range(workers)]
    for entry in data:
        shares[owner.get(entry.dump_id, 0)].data.append(entry)
    for entry in toc.in_section("post-data"):  # in order: a foreign key after its keys
        owners = {owner.get(dependency) for dependency in entry.dependencies}
        if entry.desc in OVERLAPPED and len(owners) == 1 and None not in owners:
            owner[entry.dump_id] = number = owners.pop()
            shares[number].indexes.append(entry)
    return [share for share in shares if share.data]


def restore_dump(
    reader: SnapshotReader,
    artifact: str,
    cluster: Cluster,
    target_db: str,
    figures: Mapping[str, Any],
    log: Log,
    unprivileged: UnprivilegedRestore | None = None,
) -> None:
    """Restore the dump `artifact` into the existing, empty `target_db`: as the role
    `unprivileged` makes when given (a drill), else as `cluster`'s own."""
    jobs = parallel_jobs()
    toc = read_dump_toc(reader, artifact)
    label = f"pg_restore of {artifact} into {target_db!r} on {cluster.where}"
    left_out, login, options = set[int](), cluster, ()
    if unprivileged:
        left_out = unprivileged.prepare(target_db, toc, log)
        login, options = unprivileged.restorer, RESTORE_OPTIONS
    tool = {"label": label, "env": login.child_env(), "secrets": login.secrets()}
    command = ["pg_restore", "--exit-on-error", *options, "--dbname", login.conninfo(target_db)]
    try:
        with memory_file(toc.prefix, "pg-toc") as toc_path:
            restore = DumpRestore(reader, artifact, toc, toc_path, command, tool, log)
            log(f"{label}: the schema ({len(toc.entries)} objects)")
            schema = [e for e in toc.in_section("pre-data") if e.dump_id not in left_out]
            restore.run(entries=schema)
            shares = plan_shares(toc, jobs, figures.get("table_bytes") or {})
            log(f"{label}: the rows and their indexes, {len(shares)} stream(s) at once")
            restore.load(shares)
            done = left_out | {entry.dump_id for share in shares for entry in share.indexes}
            if rest := [e for e in toc.in_section("post-data") if e.dump_id not in done]:
                log(f"{label}: {len(rest)} more constraints, triggers, ..., {jobs} job(s)")
                restore.run(f"--jobs={jobs}", entries=rest)
    except ToolFailed as exc:
        hint = " (restore the roles first with --globals)" if "role" in exc.stderr else ""
        raise BackupError(f"{exc}{hint}") from None


def use_list(entries: Sequence[TocEntry]) -> bytes:
    """A `pg_restore --use-list` file naming `entries`."""
    return "".join(f"{entry.list_line()}\n" for entry in entries).encode()


@dataclass(frozen=True)
class DumpRestore:
    """One dump's restore under way: the artifact it streams, its table of contents (and
    that in a memory file, `toc_path`), pg_restore's command line and how it runs."""

    reader: SnapshotReader
    artifact: str
    toc: Toc
    toc_path: str
    command: Sequence[str]
    tool: Mapping[str, Any]
    log: Log

    def run(self, *options: str, entries: Sequence[TocEntry]) -> None:
        """pg_restore of `entries`, which need no data block, from the table of contents alone."""
        with memory_file(use_list(entries), "pg-use-list") as listed:
            run_tool([*self.command, *options, f"--use-list={listed}", self.toc_path], **self.tool)

    def load(self, shares: Sequence[Share]) -> None:
        """A thread per share; the first share's stream checks every stored byte and
        reports progress. A damaged artifact is raised before what pg_restore said of it."""
        if not shares:  # no rows at all: the stream is still read to its end and checked
            with open(os.devnull, "wb") as nowhere:
                self.reader.restore_artifact(self.artifact, nowhere)
            return
        failures: list[BaseException] = []
        threads = [
            threading.Thread(
                target=self._load_share,
                args=(share, number == 0, failures),
                name=f"pg-restore-share-{number}",
            )
            for number, share in enumerate(shares)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        failures.sort(key=lambda failure: isinstance(failure, ToolFailed))
        if failures:
            raise failures[0]

    def _load_share(self, share: Share, first: bool, failures: list[BaseException]) -> None:
        """One share's rows from its own stream, then its indexes from the contents list."""
        try:
            with (
                memory_file(use_list(share.data), "pg-use-list") as listed,
                running([*self.command, f"--use-list={listed}"], fed=True, **self.tool) as tool,
            ):
                self.reader.feed(
                    self.artifact,
                    self._from_first_block(tool.stdin, share),
                    process=tool,
                    checks_all=first,
                    progress=self.log if first else None,
                )
            if share.indexes:
                self.run(entries=share.indexes)
        except BaseException as exc:  # handed to the restoring thread, which raises it
            failures.append(exc)

    def _from_first_block(self, stdin: BinaryIO, share: Share) -> BinaryIO:
        """`stdin`, or what feeds it from the share's first data block on (`FromBlock`)."""
        blocks = [entry for entry in share.data if entry.has_data]
        if blocks and (marker := self.toc.block_marker(blocks[0])):
            return FromBlock(stdin, self.toc, marker)
        return stdin


def read_whole_dump(reader: SnapshotReader, artifact: str) -> None:
    """The deep check: every block of the dump read by pg_restore itself (writing no
    output), every stored byte checked; `BackupError` saying what is wrong."""
    label = f"pg_restore of {artifact}"
    with running(["pg_restore", "--file=/dev/null"], label=label, fed=True) as process:
        reader.feed(artifact, process.stdin, process=process)
