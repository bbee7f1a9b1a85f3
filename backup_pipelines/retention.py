"""Retention: which snapshots to keep (grandfather-father-son), and pruning the rest.

The policy has restic 0.16's `forget --keep-daily/weekly/monthly/yearly`
semantics: walk a source's complete snapshots newest first; each rule keeps
a snapshot that opens a bucket (a day, an ISO week, a month, a year, UTC)
it has not seen yet, while it has counts left; a rule that still has counts
left when the walk ends also keeps the oldest snapshot. `within_days` keeps
everything younger than that, counted from the newest snapshot. Whatever
the rules, the newest complete snapshot is never deleted.

Only complete snapshots (with a manifest) are ever considered, so an
interrupted or empty attempt can never justify deleting a real one; the
interrupted ones are removed separately, once older than a day.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from backup_pipelines.errors import ConfigurationError
from backup_pipelines.settings import SOURCES, BackupSettings, RetentionCount
from backup_pipelines.snapshot.store import SnapshotStore

UNLIMITED = -1
LEFTOVER_AGE = timedelta(hours=24)

BUCKETS: dict[str, Callable[[datetime], int]] = {
    "daily": lambda t: t.year * 10_000 + t.month * 100 + t.day,
    "weekly": lambda t: t.isocalendar().year * 100 + t.isocalendar().week,
    "monthly": lambda t: t.year * 100 + t.month,
    "yearly": lambda t: t.year,
}


@dataclass(frozen=True)
class RetentionRules:
    daily: int = 7
    weekly: int = 4
    monthly: int = 12
    yearly: int = UNLIMITED
    within_days: int | None = None

    @classmethod
    def from_settings(cls, settings: BackupSettings) -> RetentionRules:
        def count(value: RetentionCount) -> int:
            return UNLIMITED if value == "unlimited" else int(value)

        return cls(
            daily=count(settings.retention_daily),
            weekly=count(settings.retention_weekly),
            monthly=count(settings.retention_monthly),
            yearly=count(settings.retention_yearly),
            within_days=settings.retention_days,
        )

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
    last: dict[str, int | None] = dict.fromkeys(BUCKETS)
    newest = ordered[0].started_at
    for position, snapshot in enumerate(ordered):
        reasons = []
        for rule, bucket_of in BUCKETS.items():
            if left[rule] == 0:
                continue
            bucket = bucket_of(snapshot.started_at)
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
    freed_bytes: int = 0


def prune_source(
    store: SnapshotStore,
    source: str,
    rules: RetentionRules,
    *,
    dry_run: bool,
    now: datetime,
    forget_documents: Callable[[list[str]], None] | None = None,
) -> SourcePrune:
    """Apply the rules to one source: delete what they drop, and day-old interrupted attempts.

    Each snapshot goes manifest first, so a prune cut short leaves every
    listed snapshot whole; documents snapshots are forgotten in restic only
    after their manifests are gone, so no listed snapshot points at data
    restic has dropped.
    """
    snapshots = {s.snapshot_id: s for s in store.list_snapshots(source)}
    decision = decide([Candidate(i, s.manifest.started_at) for i, s in snapshots.items()], rules)
    leftovers = [i for i, written in store.incomplete(source) if now - written > LEFTOVER_AGE]
    report = SourcePrune(source, decision.keep, decision.delete, leftovers)
    report.freed_bytes = sum(snapshots[i].manifest.size_bytes for i in decision.delete)
    restic_ids = [
        str(snapshots[i].manifest.stats.get("restic_snapshot_id")) for i in decision.delete
    ]
    if source == "documents" and restic_ids and forget_documents is None:
        raise ConfigurationError(
            "BACKUP_RESTIC_PASSWORD is needed to prune documents snapshots "
            "(restic holds their data)"
        )
    if dry_run:
        return report
    for snapshot_id in decision.delete + leftovers:
        store.delete(source, snapshot_id)
    if source == "documents" and restic_ids and forget_documents is not None:
        forget_documents(restic_ids)
    return report


def prune(
    store: SnapshotStore,
    rules: RetentionRules,
    *,
    dry_run: bool,
    now: datetime,
    forget_documents: Callable[[list[str]], None] | None = None,
    log: Callable[[str], None] = print,
) -> list[SourcePrune]:
    """Retention over every source, in turn."""
    reports = []
    for source in SOURCES:
        report = prune_source(
            store, source, rules, dry_run=dry_run, now=now, forget_documents=forget_documents
        )
        verb = "would delete" if dry_run else "deleted"
        log(
            f"{source}: keeping {len(report.keep)}, {verb} {len(report.delete)} snapshots "
            f"({report.freed_bytes} bytes) and {len(report.leftovers)} interrupted attempts"
        )
        reports.append(report)
    return reports


def as_listing(reports: Sequence[SourcePrune]) -> dict[str, list[str]]:
    """The contract's `{"keep": [...], "delete": [...]}` of `<source>/<snapshot_id>`."""
    return {
        "keep": [f"{r.source}/{i}" for r in reports for i in r.keep],
        "delete": [f"{r.source}/{i}" for r in reports for i in r.delete + r.leftovers],
    }
