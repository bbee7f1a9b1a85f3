"""Retention policy: which of a source's snapshots to keep (grandfather-father-son), as a pure
function of their times and the rules.

It has the semantics of restic 0.16's `forget --keep-last/hourly/daily/
weekly/monthly/yearly`: walk a source's complete snapshots newest first;
each rule keeps a snapshot that opens a bucket (the snapshot itself for
`last`, an hour, a day, an ISO week, a month, a year, UTC) it has not seen
yet, while it has counts left; a rule that still has counts left when the
walk ends also keeps the oldest snapshot. `within_days` keeps everything
younger than that, counted from the newest snapshot. Whatever the rules,
the newest complete snapshot is never deleted. What applies it to a store
is `pruning.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backup_pipelines.settings import BackupSettings, RetentionCount, RetentionOverrides
    from backup_pipelines.sources.source import Source
    from backup_pipelines.stores import StoreSpec

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

    def for_store(self, store: StoreSpec) -> RetentionRules:
        """These rules with the ones a store of the stores file keeps by (the off-site copy
        may keep longer)."""
        return self.overridden(store.retention)

    def for_source(self, source: Source) -> RetentionRules:
        """These rules with the ones a target of the targets file sets for itself: a target
        knows its data best, so its rules win over a store's too."""
        if source.target is None:
            return self
        return self.overridden(source.target.retention)

    def overridden(self, overrides: RetentionOverrides) -> RetentionRules:
        """These rules with each rule `overrides` sets in its place."""
        given = overrides.model_dump(exclude_none=True)
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
