"""Sensors: backups on change (sources that watch their data), and what runs and assets say
when they fail: failed runs, overdue backups, events waiting for the broker. Backups on
request (the broker's `backup.requests`) are `requests_sensor.py`'s.

All run by default, like the schedules.
"""

import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dagster import (
    DagsterEventType,
    DefaultSensorStatus,
    ResourceParam,
    RunFailureSensorContext,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from backup_pipelines.dagster_defs.caller import in_run
from backup_pipelines.dagster_defs.definition_names import (
    backup_asset_key,
    backup_step_key,
    change_sensor_name,
    source_of_asset,
)
from backup_pipelines.dagster_defs.last_backup import report_failure
from backup_pipelines.dagster_defs.schedules import overdue_after, sensor_status
from backup_pipelines.errors import ConfigurationError
from backup_pipelines.events.messages import short_error
from backup_pipelines.operations import alerts, backup
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.manifest import format_utc
from backup_pipelines.sources.source import Source

if TYPE_CHECKING:
    from backup_pipelines.dagster_defs.dagster_internals import UnresolvedAssetJobDefinition

QUIET_PERIOD_S = 600
MAX_WAIT_S = 3600


def change_sensor(
    source: str,
    job: "UnresolvedAssetJobDefinition",
    quiet_period_s: float = QUIET_PERIOD_S,
    max_wait_s: float = MAX_WAIT_S,
    running: bool = True,
) -> SensorDefinition:
    """A backup once the source's data changed and then stayed quiet (or changed for too long)."""

    @sensor(
        name=change_sensor_name(source),
        job=job,
        minimum_interval_seconds=60,
        default_status=sensor_status(running),
        description=f"Backs up {source} after its data changed and was quiet for "
        f"{quiet_period_s:.0f} s (or after {max_wait_s:.0f} s of constant change).",
    )
    def _sensor(
        context: SensorEvaluationContext, runtime: ResourceParam[Runtime]
    ) -> RunRequest | SkipReason:
        try:
            fingerprint = runtime.sources[source].fingerprint()
        except ConfigurationError as exc:
            return SkipReason(str(exc))
        now = time.time()
        cursor: dict[str, Any] = json.loads(context.cursor) if context.cursor else {}
        if not cursor:
            context.update_cursor(json.dumps({"backed_up": fingerprint}))
            return SkipReason("first look at the data: its state is the baseline")
        if fingerprint == cursor["backed_up"]:
            return SkipReason("no change since the last backup request")
        if fingerprint != cursor.get("seen"):
            changing_since = cursor.get("changing_since", now)
            cursor.update(seen=fingerprint, seen_at=now, changing_since=changing_since)
        settled = now - cursor["seen_at"] >= quiet_period_s
        overdue = now - cursor["changing_since"] >= max_wait_s
        if not (settled or overdue):
            context.update_cursor(json.dumps(cursor))
            return SkipReason("the data changed; waiting for it to settle")
        context.update_cursor(json.dumps({"backed_up": fingerprint}))
        return RunRequest(
            run_key=f"{source}-{'-'.join(map(str, fingerprint))}",
            tags={"backup/trigger": change_sensor_name(source)},
        )

    return _sensor


def backup_run_failure_sensor(sources_of_job: Mapping[str, Sequence[str]]) -> SensorDefinition:
    """`backup.failed` for backup runs that failed where no step hook could (resource set-up
    errors, a killed worker); `sources_of_job` names the sources each backup job covers."""

    @run_failure_sensor(
        name="backup_run_failure_sensor",
        default_status=DefaultSensorStatus.RUNNING,
        description="Publishes backup.failed for backup runs that failed where no step hook "
        "could (resource set-up errors, a killed worker), never twice for the same failure.",
    )
    def _sensor(context: RunFailureSensorContext, runtime: ResourceParam[Runtime]) -> None:
        run = context.dagster_run
        if run.asset_selection:
            sources = [s for key in run.asset_selection if (s := source_of_asset(key))]
        else:
            sources = list(sources_of_job.get(run.job_name, ()))
        hooked = {
            record.dagster_event.step_key
            for record in context.instance.all_logs(
                run.run_id, of_type=DagsterEventType.HOOK_COMPLETED
            )
            if record.dagster_event
        }
        failure = Exception(context.failure_event.message or "the run failed")
        error = short_error(failure, runtime.secrets)
        caller = in_run(run.run_id, context.log)
        for source in sources:
            if backup_step_key(source) not in hooked:
                backup.record_failure(runtime, caller, source, error)
                report_failure(context.instance, runtime, source, error)

    return _sensor


def backup_overdue_sensor(
    sources: Sequence[Source], clock: Callable[[], float] = time.time
) -> SensorDefinition:
    """`backup.overdue` once per failure of a backup asset's freshness: in Dagster OSS a
    failing freshness policy notifies nobody. The window is the policy's own (twice the
    schedule's interval, plus a grace); the failure ends with the next snapshot."""
    windows = {source.name: overdue_after(source.cron) for source in sources}

    @sensor(
        name="backup_overdue_sensor",
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description="Publishes backup.overdue, once per failure, when a backup asset's freshness "
        "fails (no snapshot within twice its schedule's interval, plus 30 min).",
    )
    def _sensor(context: SensorEvaluationContext, runtime: ResourceParam[Runtime]) -> SkipReason:
        announced: dict[str, float] = json.loads(context.cursor) if context.cursor else {}
        now, overdue = clock(), []
        for name, window in windows.items():
            last = context.instance.get_latest_materialization_event(backup_asset_key(name))
            if last is None or now - last.timestamp <= window.total_seconds():
                continue
            overdue.append(name)
            if announced.get(name) != last.timestamp:
                since = format_utc(datetime.fromtimestamp(last.timestamp, UTC))
                why = f"no snapshot since {since}: its freshness failed after {window}"
                alerts.backup_overdue(runtime, name, last.run_id, why)
                announced[name] = last.timestamp
        context.update_cursor(json.dumps(announced))
        return SkipReason(f"overdue: {', '.join(overdue)}" if overdue else "no backup is overdue")

    return _sensor


@sensor(
    name="notifications_outbox_sensor",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Delivers backup events that waited in the outbox while the broker was down, "
    "and notifications that waited for their services (BACKUP_NOTIFY_URLS).",
)
def notifications_outbox_sensor(
    context: SensorEvaluationContext, runtime: ResourceParam[Runtime]
) -> SkipReason:
    events = runtime.events
    waiting = events.outbox.pending()
    messages = events.notifier.outbox.pending() if events.notifier else 0
    if not waiting and not messages:
        return SkipReason("the outbox is empty")
    delivered = events.flush()
    return SkipReason(
        f"delivered {delivered} of {waiting} waiting events; {messages} notification(s) tried"
    )
