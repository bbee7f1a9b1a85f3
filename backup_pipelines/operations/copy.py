"""A copy: the primary's snapshots, WAL, audit records and drill verdicts into each copy
store, byte for byte (3-2-1).

For each copy store and source, the primary's complete snapshots the store
lacks go oldest first (but none the store's own retention dropped:
`records/dropped.py`), each as a commit goes (`snapshot/copies.py`:
artifacts read back, the same manifest last); what the source keeps beside
them (restic's repository) goes before them, its continuous archive (the
WAL) every time. Then the audit trail and
the drill verdicts. A store that cannot be reached is said and skipped, and
catches up at the next copy; the primary is never slowed or failed by one.
A copy that finds nothing to do does nothing. One audit record for each
store that received snapshots, or could not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from backup_pipelines.errors import BackupError, IntegrityError, StorageFull, StoreError
from backup_pipelines.events.messages import short_error
from backup_pipelines.operations.caller import Caller
from backup_pipelines.records.audit import Entry
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.copies import copy_snapshot
from backup_pipelines.snapshot.store import SnapshotStore
from backup_pipelines.sources.source import Source

UNREACHABLE = (StoreError, StorageFull)


@dataclass
class SourceCopy:
    """What one copy did for one source in one store."""

    source: str
    copied: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """The snapshots the store should hold and still lacks (a failure, or a conflict)."""
    problems: list[str] = field(default_factory=list)
    files: int = 0
    """Objects copied beside the snapshots: WAL files, restic's packs and indexes."""

    def report(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "copied": self.copied,
            "missing": self.missing,
            "behind": len(self.missing),
            "files": self.files,
            "problems": self.problems,
        }


@dataclass
class StoreCopy:
    """What one copy did for one store."""

    store: str
    location: str
    sources: list[SourceCopy] = field(default_factory=list)
    audit_records: int = 0
    verdicts: int = 0
    error: str | None = None
    """Why the store (or the primary) could not be read or written: it catches up later."""

    @property
    def complete(self) -> bool:
        return self.error is None and not any(s.missing or s.problems for s in self.sources)

    def report(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "location": self.location,
            "up_to_date": self.complete,
            "behind": sum(len(s.missing) for s in self.sources),
            "error": self.error,
            "sources": [s.report() for s in self.sources],
            "audit_records": self.audit_records,
            "verdicts": self.verdicts,
        }


def copy(
    runtime: Runtime, caller: Caller, *, source: str | None = None, store: str | None = None
) -> list[StoreCopy]:
    """Bring every copy store (or `store`) up to date with the primary, for every source (or
    `source`: one, or a kind for all its targets)."""
    sources = [s for s in runtime.sources.values() if source in (None, s.name, s.kind)]
    return [
        copy_store(runtime, caller, spec.name, sources)
        for spec in runtime.stores[1:]
        if store in (None, spec.name)
    ]


def copy_store(runtime: Runtime, caller: Caller, name: str, sources: Sequence[Source]) -> StoreCopy:
    target = runtime.on_store(name)
    done = StoreCopy(name, target.store.describe())
    try:
        for source in sources:
            done.sources.append(copy_source(runtime, target, source, caller))
        done.audit_records = runtime.audit.copy_to(target.store.backend)
        done.verdicts = runtime.verdicts.copy_to(target.store.backend)
    except UNREACHABLE as exc:
        done.error = short_error(exc, runtime.secrets)
        caller.warn(f"copy store {name}: {done.error}; it catches up at the next copy")
    _audit(runtime, caller, done)
    copied = sum(len(s.copied) for s in done.sources)
    caller.log(
        f"copy store {name}: {copied} snapshots copied, "
        f"{sum(len(s.missing) for s in done.sources)} still missing, "
        f"{sum(s.files for s in done.sources)} other files"
    )
    return done


def copy_source(runtime: Runtime, target: Runtime, source: Source, caller: Caller) -> SourceCopy:
    """One source into the store `target` is bound to; a store that cannot be reached
    raises (`StoreError`), anything else is this source's problem, said in the report."""
    primary, copy_store_ = runtime.store, target.store
    done = SourceCopy(source.name)
    have = {s.snapshot_id: s for s in primary.list_snapshots(source.name)}
    held = {s.snapshot_id: s for s in copy_store_.list_snapshots(source.name)}
    for snapshot_id in sorted(set(have) & set(held)):
        if have[snapshot_id].manifest_sha256 != held[snapshot_id].manifest_sha256:
            done.problems.append(f"{source.name}/{snapshot_id}: another manifest in the copy")
    wanted = target.dropped.unsent(source.name, have, held)
    if wanted:
        kept = [*held.values(), *(have[i] for i in wanted)]
        done.files += source.copy_own_data(primary, copy_store_, kept)
    for snapshot_id in wanted:
        try:
            copy_snapshot(have[snapshot_id], primary, copy_store_, caller.log)
        except IntegrityError as exc:  # this snapshot's, not the store's
            done.missing.append(snapshot_id)
            done.problems.append(short_error(exc, runtime.secrets))
            continue
        done.copied.append(snapshot_id)
        caller.log(f"{source.name}/{snapshot_id} copied to {target.store.name}")
    if (archive := source.continuous_archive) is not None:
        try:
            done.files += len(archive.copy(primary, copy_store_))
        except IntegrityError as exc:
            done.problems.append(short_error(exc, runtime.secrets))
    return done


def behind(runtime: Runtime, name: str) -> str | None:
    """Why the copy store `name` needs a copy now, cheaply (the newest of each source, the
    newest WAL file), or None; `StoreError` when a store cannot be read."""
    copy_store_ = runtime.on_store(name).store
    for source in runtime.sources.values():
        newest = _newest(runtime.store, source.name)
        if newest is not None and copy_store_.read_manifest(source.name, newest) is None:
            return f"{source.name}/{newest}"
        if (archive := source.continuous_archive) is not None:
            ours, theirs = archive.reach(runtime.store), archive.reach(copy_store_)
            if ours.newest is not None and ours.newest != theirs.newest:
                return f"{archive.name}/{ours.newest}"
    return None


def _newest(store: SnapshotStore, source: str) -> str | None:
    try:
        return store.find(source).snapshot_id
    except BackupError:
        return None


def _audit(runtime: Runtime, caller: Caller, done: StoreCopy) -> None:
    """A record when snapshots went, or the store could not take them; a copy of WAL files
    alone (every minute) is not worth one."""
    snapshots = [f"{s.source}/{i}" for s in done.sources for i in s.copied]
    if not snapshots and done.complete:
        return
    entry = Entry(snapshots=snapshots, target=done.store, detail=f"into {done.location}")
    if not done.complete:
        problems = [done.error] if done.error else []
        problems += [p for s in done.sources for p in s.problems]
        entry.failed("; ".join(problems) or "snapshots still missing")
    runtime.audit.append("copy", entry, via=caller.via, run_id=caller.run_id)
