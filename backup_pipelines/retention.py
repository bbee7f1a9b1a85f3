"""Retention: which snapshots to keep (grandfather-father-son), and pruning the rest.

The policy has restic 0.16's `forget --keep-daily/weekly/monthly/yearly`
semantics: walk a source's complete snapshots newest first; each rule keeps
a snapshot that opens a bucket (a day, an ISO week, a month, a year, UTC)
it has not seen yet, while it has counts left; a rule that still has counts
left when the walk ends also keeps the oldest snapshot. `within_days` keeps
everything younger than that, counted from the newest snapshot. Whatever
the rules, the newest complete snapshot is never deleted.

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

from backup_pipelines.settings import BackupSettings, RetentionCount
from backup_pipelines.snapshot.files import LEFTOVER_AGE, remove_stale
from backup_pipelines.snapshot.store import SnapshotStore, Unreadable
from backup_pipelines.sources.source import Source

UNLIMITED = -1


def _count(value: RetentionCount) -> int:
    return UNLIMITED if value == "unlimited" else int(value)


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
        return cls(
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
    """Day-old interrupted attempts and locations whose manifest is unreadable."""
    unreadable: list[Unreadable] = field(default_factory=list)
    freed_bytes: int = 0


def prune_source(
    store: SnapshotStore, source: Source, rules: RetentionRules, *, dry_run: bool, now: datetime
) -> SourcePrune:
    """Apply the rules to one source: delete what they drop, and day-old leftovers.

    Only locations the store listed are ever deleted, and a snapshot's id is
    the location it was read from (the store checks the manifest agrees).
    Each snapshot goes manifest first, so a prune cut short leaves every
    listed snapshot whole; what the source keeps outside the store (restic's
    snapshots) is released only after the manifests are gone, so no listed
    snapshot points at data that was dropped.
    """
    survey = store.survey(source.name)
    snapshots = {s.snapshot_id: s for s in survey.snapshots}
    decision = decide([Candidate(i, s.manifest.started_at) for i, s in snapshots.items()], rules)
    stale = [a.snapshot_id for a in survey.attempts if now - a.modified > LEFTOVER_AGE]
    stale += [u.snapshot_id for u in survey.unreadable if now - u.modified > LEFTOVER_AGE]
    report = SourcePrune(source.name, decision.keep, decision.delete, stale, survey.unreadable)
    report.freed_bytes = sum(snapshots[i].manifest.size_bytes for i in decision.delete)
    release = source.forgetting(
        [snapshots[i] for i in decision.delete], [snapshots[i] for i in decision.keep]
    )
    if dry_run:
        return report
    for snapshot_id in decision.delete + stale:
        store.delete(source.name, snapshot_id)
    if release is not None:
        release()
    return report


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
        reports.append(report)
    if staging_dir is not None and not dry_run:
        removed = [
            path for area in _subdirectories(staging_dir) for path in remove_stale(area, now)
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


def as_listing(reports: Sequence[SourcePrune]) -> dict[str, list[str]]:
    """The contract's `{"keep": [...], "delete": [...]}` of `<source>/<snapshot_id>`."""
    return {
        "keep": [f"{r.source}/{i}" for r in reports for i in r.keep],
        "delete": [f"{r.source}/{i}" for r in reports for i in r.delete + r.leftovers],
    }
