"""Each source's runs on its cron (`BACKUP_<SOURCE>_CRON`), freshness derived from the same
cron, and the daily retention run.

Schedules run by default: a backup system whose schedules an operator must
remember to switch on is one that silently does not back up.
"""

from datetime import timedelta
from typing import TYPE_CHECKING

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    FreshnessPolicy,
    JobDefinition,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from backup_pipelines.cron import cron_interval
from backup_pipelines.dagster_defs.definition_names import schedule_name
from backup_pipelines.sources.source import Source

if TYPE_CHECKING:
    from backup_pipelines.dagster_defs.dagster_internals import UnresolvedAssetJobDefinition

FRESHNESS_GRACE = timedelta(minutes=30)
RETENTION_CRON = "30 4 * * *"


def _freshness_windows(cron: str) -> tuple[timedelta, timedelta]:
    """Warn when one scheduled snapshot is missing, fail when two are (each plus a grace)."""
    interval = cron_interval(cron)
    return interval + FRESHNESS_GRACE, 2 * interval + FRESHNESS_GRACE


def overdue_after(cron: str) -> timedelta:
    """How long after its last snapshot a source's freshness fails (and it is overdue)."""
    return _freshness_windows(cron)[1]


def freshness_for(cron: str) -> FreshnessPolicy:
    warn, fail = _freshness_windows(cron)
    return FreshnessPolicy.time_window(warn_window=warn, fail_window=fail)


def describe_freshness(cron: str) -> str:
    """The windows exactly, for descriptions: the UI rounds them (2 h 30 min shows as 3 hours)."""
    warn, fail = _freshness_windows(cron)
    return (
        f"Freshness: warns {_duration(warn)} and fails {_duration(fail)} after the last "
        "snapshot (the UI rounds these)."
    )


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds()) // 60
    parts = [(minutes // 1440, "d"), (minutes // 60 % 24, "h"), (minutes % 60, "min")]
    return " ".join(f"{count} {unit}" for count, unit in parts if count)


def schedule_status(running: bool) -> DefaultScheduleStatus:
    """How a schedule starts: running, or stopped until turned on in the UI
    (`BACKUP_START_STOPPED`: a first `make dev` touches no shared system by itself)."""
    return DefaultScheduleStatus.RUNNING if running else DefaultScheduleStatus.STOPPED


def sensor_status(running: bool) -> DefaultSensorStatus:
    """How a sensor that launches backups starts (as `schedule_status`)."""
    return DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED


def backup_schedule(
    source: Source, job: "UnresolvedAssetJobDefinition", running: bool = True
) -> ScheduleDefinition:
    """The source's schedule; it skips, saying why, while the source is not configured. That
    is asked at each tick, never while the location loads: a system that does not answer
    would hold the load for its connect timeout, once per target (minutes at a hundred)."""

    @schedule(
        name=schedule_name(source.name),
        job=job,
        cron_schedule=source.cron,
        execution_timezone="UTC",
        default_status=schedule_status(running),
        description=f"A {source.name} snapshot on {source.setting('cron')} ({source.cron}, UTC).",
    )
    def _schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        if not_configured := source.not_configured():
            return SkipReason(not_configured)
        return RunRequest(tags={"backup/trigger": "schedule"})

    return _schedule


def verification_schedule(job: "UnresolvedAssetJobDefinition", cron: str) -> ScheduleDefinition:
    """Every source's latest snapshot drilled, once a day by default, after the backups."""
    return ScheduleDefinition(
        name="verification_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"Drills every source's latest snapshot on BACKUP_VERIFY_CRON ({cron}, UTC).",
    )


def retention_schedule(
    job: JobDefinition, prunes_elsewhere: str | None, running: bool = True
) -> ScheduleDefinition:
    """Retention once a day, after the nightly backups; it skips, saying why, on a backup
    host that writes locked snapshots and holds no keys that may delete."""

    @schedule(
        name="retention_schedule",
        job=job,
        cron_schedule=RETENTION_CRON,
        execution_timezone="UTC",
        default_status=schedule_status(running),
        description="Prunes every source by BACKUP_RETENTION_* once a day.",
    )
    def _schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        return SkipReason(prunes_elsewhere) if prunes_elsewhere else RunRequest()

    return _schedule
