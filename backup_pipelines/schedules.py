"""Nightly (or hourly) runs from `BACKUP_<SOURCE>_CRON`, and freshness derived from the same cron.

Schedules run by default: a backup system whose schedules an operator must
remember to switch on is one that silently does not back up.
"""

import time
from datetime import timedelta
from itertools import pairwise
from typing import TYPE_CHECKING

from dagster import (
    DefaultScheduleStatus,
    FreshnessPolicy,
    JobDefinition,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)
from dagster._utils.schedules import cron_string_iterator

if TYPE_CHECKING:  # the type define_asset_job returns; not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

FRESHNESS_GRACE = timedelta(minutes=30)
RETENTION_CRON = "30 4 * * *"


def cron_interval(cron: str) -> timedelta:
    """The longest gap between the next few ticks of `cron` (UTC)."""
    ticks = cron_string_iterator(time.time(), cron, "UTC")
    upcoming = [next(ticks) for _ in range(8)]
    return max(later - earlier for earlier, later in pairwise(upcoming))


def freshness_for(cron: str) -> FreshnessPolicy:
    """Warn when one scheduled snapshot is missing, fail when two are."""
    interval = cron_interval(cron)
    return FreshnessPolicy.time_window(
        warn_window=interval + FRESHNESS_GRACE, fail_window=2 * interval + FRESHNESS_GRACE
    )


def backup_schedule(
    source: str, job: "UnresolvedAssetJobDefinition", cron: str, not_configured: str | None
) -> ScheduleDefinition:
    """The source's schedule; it skips, saying why, while the source is not configured."""

    @schedule(
        name=f"{source}_backup_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"A {source} snapshot on BACKUP_{source.upper()}_CRON ({cron}, UTC).",
    )
    def _schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        if not_configured:
            return SkipReason(not_configured)
        return RunRequest(tags={"backup/trigger": "schedule"})

    return _schedule


def retention_schedule(job: JobDefinition) -> ScheduleDefinition:
    """Retention once a day, after the nightly backups."""
    return ScheduleDefinition(
        name="retention_schedule",
        job=job,
        cron_schedule=RETENTION_CRON,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description="Prunes every source by BACKUP_RETENTION_* once a day.",
    )
