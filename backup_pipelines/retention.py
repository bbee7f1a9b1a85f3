"""Retention: which snapshots to keep (grandfather-father-son), and pruning the rest.

The policy has the semantics of restic 0.16's `forget --keep-last/hourly/
daily/weekly/monthly/yearly`: walk a source's complete snapshots newest
first; each rule keeps a snapshot that opens a bucket (the snapshot itself
for `last`, an hour, a day, an ISO week, a month, a year, UTC) it has not
seen yet, while it has counts left; a rule that still has counts left when
the walk ends also keeps the oldest snapshot. `within_days` keeps everything
younger than that, counted from the newest snapshot. Whatever the rules, the
newest complete snapshot is never deleted, nor anything S3 Object Lock still
protects.

Only complete snapshots (with a valid manifest) are ever considered, so an
interrupted, empty or tampered attempt can never justify deleting a real
one; interrupted attempts, unreadable manifests and staging work are
removed separately, once nothing in them changed for a day.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from backup_pipelines.audit import AuditLog
from backup_pipelines.settings import BackupSettings, RetentionCount
from backup_pipelines.snapshot.files import LEFTOVER_AGE, remove_stale
from backup_pipelines.snapshot.manifest import format_utc
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot, Unreadable
from backup_pipelines.sources.source import Source

UNLIMITED = -1


def _count(value: RetentionCount) -> int:
    return UNLIMITED if value == "unlimited" else int(value)


BUCKETS: dict[str, Callable[[Candidate], object]] = {
    "last": lambda c: c.snapshot_id,
    "hourly": lambda c: c.started_at.strftime("%Y%m%d%H"),
    "daily": lambda c: c.started_at.strftime("%Y%m%d"),
    "weekly": lambda c: c.started_at.isocalendar()[:2],
    "monthly": lambda c: c.started_at.strftime("%Y%m"),
    "yearly": lambda c: c.started_at.year,
}
"""What makes two snapshots fall in the same bucket of a rule, in restic's order of rules."""


@dataclass(frozen=True)
class RetentionRules:
    last: int = 0
    hourly: int = 0
    daily: int = 7
    weekly: int = 4
    monthly: int = 12
    yearly: int = UNLIMITED
    within_days: int | None = None

    @classmethod
    def from_settings(cls, settings: BackupSettings) -> RetentionRules:
        return cls(
            last=_count(settings.retention_last),
            hourly=_count(settings.retention_hourly),
            daily=_count(settings.retention_daily),
            weekly=_count(settings.retention_weekly),
            monthly=_count(settings.retention_monthly),
            yearly=_count(settings.retention_yearly),
            within_days=settings.retention_days,
        )

    def for_source(self, source: Source) -> RetentionRules:
        """These rules with the ones a target of the targets file sets for itself."""
        if source.target is None:
            return self
        given = source.target.retention.model_dump(exclude_none=True)
        within = {"within_days": given.pop("days")} if "days" in given else {}
        return replace(self, **{rule: _count(value) for rule, value in given.items()}, **within)

    def count(self, rule: str) -> int:
        return getattr(self, rule)


@dataclass(frozen=True)
class Candidate:
    """A complete snapshot as the policy sees it."""

    snapshot_id: str
    started_at: datetime


@dataclass
class Decision:
    keep: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)


def decide(snapshots: Sequence[Candidate], rules: RetentionRules) -> Decision:
    """Which of one source's complete snapshots to keep and which to delete (newest first)."""
    ordered = sorted(snapshots, key=lambda s: (s.started_at, s.snapshot_id), reverse=True)
    decision = Decision()
    if not ordered:
        return decision
    left = {rule: rules.count(rule) for rule in BUCKETS}
    last: dict[str, object] = dict.fromkeys(BUCKETS)
    newest = ordered[0].started_at
    for position, snapshot in enumerate(ordered):
        reasons = []
        for rule, bucket_of in BUCKETS.items():
            if left[rule] == 0:
                continue
            bucket = bucket_of(snapshot)
            if bucket != last[rule] or position == len(ordered) - 1:
                reasons.append(rule)
                last[rule] = bucket
                if left[rule] > 0:
                    left[rule] -= 1
        if rules.within_days is not None and (
            snapshot.started_at > newest - timedelta(days=rules.within_days)
        ):
            reasons.append("within")
        if position == 0:
            reasons.append("newest")
        decision.reasons[snapshot.snapshot_id] = reasons
        (decision.keep if reasons else decision.delete).append(snapshot.snapshot_id)
    return decision


@dataclass
class SourcePrune:
    """What retention decided (and, unless a dry run, did) for one source."""

    source: str
    keep: list[str]
    delete: list[str]
    leftovers: list[str]
    """Day-old interrupted attempts and locations whose manifest is unreadable."""
    unreadable: list[Unreadable] = field(default_factory=list)
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
    Each snapshot goes manifest first, so a prune cut short leaves every
    listed snapshot whole; what the source keeps outside the store (restic's
    snapshots) is released only after the manifests are gone, so no listed
    snapshot points at data that was dropped. A location any of whose objects
    S3 Object Lock still protects is left whole, manifest included, and
    reported with its retain-until time.
    """
    survey = store.survey(source.name)
    snapshots = {s.snapshot_id: s for s in survey.snapshots}
    decision = decide([Candidate(i, s.manifest.started_at) for i, s in snapshots.items()], rules)
    stale = [a.snapshot_id for a in survey.attempts if now - a.modified > LEFTOVER_AGE]
    stale += [u.snapshot_id for u in survey.unreadable if now - u.modified > LEFTOVER_AGE]
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
    report.locked = locked
    report.freed_bytes = sum(snapshots[i].manifest.size_bytes for i in deleted)
    still_there = decision.keep + [i for i in locked if i in snapshots]
    release = source.forgetting(
        store, [snapshots[i] for i in deleted], [snapshots[i] for i in still_there]
    )
    if dry_run:
        return report
    for snapshot_id in deleted + stale:
        store.delete(source.name, snapshot_id)
    if release is not None:
        release()
    return report


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


def prune(
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
    if not dry_run:
        prune_audit(store, reports, log)
    if staging_dir is not None and not dry_run:
        removed = [
            path for area in _subdirectories(staging_dir) for path in remove_stale(area, now)
        ]
        if removed:
            log(f"removed {len(removed)} day-old leftovers from the staging area {staging_dir}")
    return reports


def prune_audit(
    store: SnapshotStore, reports: Sequence[SourcePrune], log: Callable[[str], None]
) -> None:
    """Audit records older than the oldest snapshot left go: every record outlives the
    snapshots it names. With no snapshot left at all, every record stays."""
    left = [i for r in reports for i in (*r.keep, *r.locked)]
    if not left:
        return
    oldest = min(left)[:8]  # ids start with the snapshot's UTC day
    removed = AuditLog(store).prune(before=datetime.strptime(oldest, "%Y%m%d").date())
    if removed:
        log(f"removed audit records of {len(removed)} days before the oldest snapshot ({oldest})")


def _subdirectories(directory: Path) -> list[Path]:
    """`.staging/<source>` and the restore, verify and drill work areas beside them."""
    try:
        return [entry for entry in directory.iterdir() if entry.is_dir() and not entry.is_symlink()]
    except FileNotFoundError:
        return []


def as_listing(reports: Sequence[SourcePrune]) -> dict[str, list[Any]]:
    """The contract's `{"keep": [...], "delete": [...]}` of `<source>/<snapshot_id>`, and
    `"locked"`: what the rules drop but S3 Object Lock protects, with its retain-until."""
    return {
        "keep": [f"{r.source}/{i}" for r in reports for i in r.keep],
        "delete": [f"{r.source}/{i}" for r in reports for i in r.delete + r.leftovers],
        "locked": [
            {"snapshot": f"{r.source}/{i}", "retain_until": format_utc(until)}
            for r in reports
            for i, until in r.locked.items()
        ],
    }
