"""Pruning: the retention policy applied to a store, one source after the other.

Only complete snapshots (with a valid manifest) are ever considered, so an
interrupted, empty or tampered attempt can never justify deleting a real
one; interrupted attempts, unreadable manifests and staging work are
removed separately, once nothing in them changed for a day. Nothing S3
Object Lock still protects is deleted, nor any part of it. The operation
around it (its audit record, its events, the audit trail's own pruning) is
`operations/prune.py`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from backup_pipelines.retention.policy import Candidate, RetentionRules, decide
from backup_pipelines.snapshot.manifest import format_utc, utc_now
from backup_pipelines.snapshot.staging import backup_running
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot, Unreadable
from backup_pipelines.sources.source import Source
from backup_pipelines.storage.files import LEFTOVER_AGE, remove_stale
from backup_pipelines.storage.names import snapshot_started


@dataclass
class SourcePrune:
    """What retention decided (and, unless a dry run, did) for one source."""

    source: str
    keep: list[str]
    delete: list[str]
    leftovers: list[str]
    """Day-old interrupted attempts and locations whose manifest is unreadable."""
    unreadable: list[Unreadable] = field(default_factory=list)
    ahead: list[tuple[StoredSnapshot, str]] = field(default_factory=list)
    """Snapshots whose id lies ahead of the clocks, and why: outside the rules, never deleted."""
    freed_bytes: int = 0
    locked: dict[str, datetime] = field(default_factory=dict)
    """What the rules (or the leftover age) would delete but S3 Object Lock still protects,
    with the retain-until time: kept whole, deleted by a prune after it."""


def prune_source(
    store: SnapshotStore, source: Source, rules: RetentionRules, *, dry_run: bool, now: datetime
) -> SourcePrune:
    """Apply the rules to one source: delete what they drop, and day-old leftovers.

    Only locations the store listed are ever deleted, and a snapshot's id is
    the location it was read from (the store checks the manifest agrees).
    A snapshot whose id lies ahead of the clocks (`StoredSnapshot.ahead_of_clocks`) is
    outside the rules: it cannot take the place of the really newest one, and is never
    deleted by them. Each snapshot goes manifest first, so a prune cut short leaves every
    listed snapshot whole; what the source keeps outside the store (restic's
    snapshots) is released only after the manifests are gone, so no listed
    snapshot points at data that was dropped. A location any of whose objects
    S3 Object Lock still protects is left whole, manifest included, and
    reported with its retain-until time.
    """
    survey = store.survey(source.name)
    snapshots = {s.snapshot_id: s for s in survey.snapshots}
    decision = decide([Candidate(i, s.manifest.started_at) for i, s in snapshots.items()], rules)
    # A prune "as of" `now` (a later moment) moves the store's clock along; on a host whose
    # own clock runs ahead, `now` is that clock, and the store's stays as it is.
    store_now = store.backend.clock() + (now - utc_now())
    stale = [
        found.snapshot_id
        for found in [*survey.attempts, *survey.unreadable]
        if _day_old_by_every_clock(found.snapshot_id, found.modified, now, store_now)
    ]
    locked = {
        snapshot_id: until
        for snapshot_id in decision.delete + stale
        if (
            until := _locked_until(store, source.name, snapshots.get(snapshot_id), snapshot_id, now)
        )
    }
    deleted = [i for i in decision.delete if i not in locked]
    stale = [i for i in stale if i not in locked]
    report = SourcePrune(source.name, decision.keep, deleted, stale, survey.unreadable)
    report.locked, report.ahead = locked, survey.ahead
    report.freed_bytes = sum(snapshots[i].manifest.size_bytes for i in deleted)
    still_there = [snapshots[i] for i in decision.keep + [i for i in locked if i in snapshots]]
    still_there += [snapshot for snapshot, _ in survey.ahead]  # what they need stays too
    release = source.forgetting(store, [snapshots[i] for i in deleted], still_there)
    if dry_run:
        return report
    for snapshot_id in deleted + stale:
        store.delete(source.name, snapshot_id)
    if release is not None:
        release()
    return report


def _day_old_by_every_clock(
    snapshot_id: str, modified: datetime, now: datetime, store_now: datetime
) -> bool:
    """A location without a valid manifest counts as left over only once it is a day old by
    this host's clock, by the store's (which dated its objects), and since the moment its id
    names: a clock far ahead on any side never makes a running upload look abandoned."""
    ages = [now - modified, store_now - modified]
    with contextlib.suppress(ValueError):
        ages.append(store_now - snapshot_started(snapshot_id))
    return all(age > LEFTOVER_AGE for age in ages)


def _locked_until(
    store: SnapshotStore,
    source: str,
    snapshot: StoredSnapshot | None,
    snapshot_id: str,
    now: datetime,
) -> datetime | None:
    """Until when a lock keeps the location from being deleted, or None. A manifest still
    locked (its retain-until came with the listing) answers at once: it is written last, so
    its lock ends last; otherwise every object is asked, before anything is deleted."""
    if snapshot is not None and snapshot.locked_until is not None and snapshot.locked_until > now:
        return snapshot.locked_until
    return store.locked_until(source, snapshot_id)


def apply_retention(
    store: SnapshotStore,
    sources: Mapping[str, Source],
    rules: RetentionRules,
    *,
    dry_run: bool,
    now: datetime,
    staging_dir: Path | None = None,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
) -> list[SourcePrune]:
    """Retention over every source in turn (each target by its own rules, when the targets
    file gives it some), then day-old work in the staging area."""
    warn = warn or log
    reports = []
    for source in sources.values():
        report = prune_source(store, source, rules.for_source(source), dry_run=dry_run, now=now)
        for found in report.unreadable:
            warn(f"{found.location}: {found.reason}; not a snapshot, removed once a day old")
        for snapshot, reason in report.ahead:
            warn(f"{snapshot.location}: {reason}; outside the rules, never deleted by them")
        verb = "would delete" if dry_run else "deleted"
        log(
            f"{source.name}: keeping {len(report.keep)}, {verb} {len(report.delete)} snapshots "
            f"({report.freed_bytes} bytes) and {len(report.leftovers)} leftovers"
        )
        if report.locked:
            ends = sorted(report.locked.values())
            log(
                f"{source.name}: {len(ends)} more kept whole while S3 Object Lock protects "
                f"them (the first lock ends {format_utc(ends[0])}, the last "
                f"{format_utc(ends[-1])}); a prune after that deletes them"
            )
        reports.append(report)
    if staging_dir is not None and not dry_run:
        removed = [
            path
            for area in _subdirectories(staging_dir)
            if not backup_running(area)  # its dump writes there now, whatever the clock says
            for path in remove_stale(area, now)
        ]
        if removed:
            log(f"removed {len(removed)} day-old leftovers from the staging area {staging_dir}")
    return reports


def _subdirectories(directory: Path) -> list[Path]:
    """`.staging/<source>` and the restore, verify and drill work areas beside them."""
    try:
        return [entry for entry in directory.iterdir() if entry.is_dir() and not entry.is_symlink()]
    except FileNotFoundError:
        return []
