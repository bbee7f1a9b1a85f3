"""The WAL archive in the Dagster UI: an external asset `postgres_wal` whose freshness is the
age of the newest archived WAL file, and the sensor that keeps it current and says when
archiving stalls.

PostgreSQL archives without Dagster (`wal-push` runs from `archive_command`),
so nothing materializes the asset: the sensor looks at the archive every
minute and records a materialization when a newer file arrived, or when the
server confirms it has nothing more to archive (an idle server archives
nothing, and is not stalled). Archiving counts as stalled when the newest
file is older than `BACKUP_POSTGRES_WAL_MAX_AGE_S` while the server has
finished segments the archive lacks (or cannot be asked); that publishes
`backup.failed` once per stall, as the Prometheus rule alerts on it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from dagster import (
    AssetMaterialization,
    AssetSpec,
    DefaultSensorStatus,
    FreshnessPolicy,
    MetadataValue,
    ResourceParam,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from backup_pipelines.naming import BACKUPS_GROUP, crm_asset_key, wal_asset_key
from backup_pipelines.notifications import event_body
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.manifest import format_utc
from backup_pipelines.wal_archive import ArchivingSource

SENSOR_NAME = "postgres_wal_sensor"
REPORT_EVERY_S = 300
"""How often an unchanged but up-to-date archive is recorded (keeps an idle one fresh)."""


def wal_archive_asset(source: ArchivingSource) -> AssetSpec:
    archive = source.archive_name
    max_age = timedelta(seconds=source.max_archive_age_s)
    return AssetSpec(
        wal_asset_key(archive),
        group_name=BACKUPS_GROUP,
        deps=[crm_asset_key(source.name)],
        kinds={source.dagster_kind},
        description=(
            f"The WAL archive {archive} that {source.name} recovers from: PostgreSQL pushes "
            f"every WAL file with `backup-pipelines wal-push`; {SENSOR_NAME} records it here. "
            f"Fails freshness when nothing newer was archived for {max_age}."
        ),
        freshness_policy=FreshnessPolicy.time_window(fail_window=max_age),
    )


def wal_archive_sensor(
    sources: Sequence[ArchivingSource], clock: Callable[[], float] = time.time
) -> SensorDefinition:
    @sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description="Records the newest archived WAL file on the postgres_wal asset, and "
        "publishes backup.failed once when WAL archiving stalls.",
    )
    def _sensor(context: SensorEvaluationContext, runtime: ResourceParam[Runtime]) -> SkipReason:
        state: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
        said = [
            _observe(context, runtime, source, state.setdefault(source.archive_name, {}), clock())
            for source in sources
        ]
        context.update_cursor(json.dumps(state))
        return SkipReason("; ".join(said))

    return _sensor


def _observe(
    context: SensorEvaluationContext,
    runtime: Runtime,
    source: ArchivingSource,
    seen: dict,
    now: float,
) -> str:
    """One archive's look: record it, and announce a stall once. What it found, in words."""
    archive = source.archive(runtime.store)
    newest, last = archive.newest_segment(), archive.last_archived()
    if last is None:
        return f"{archive.source}: nothing archived yet"
    behind = source.segments_behind(newest)
    up_to_date = behind is not None and behind <= 0
    age = now - last.timestamp()
    if newest != seen.get("newest") or (up_to_date and now - seen.get("at", 0) >= REPORT_EVERY_S):
        context.instance.report_runless_asset_event(
            AssetMaterialization(
                wal_asset_key(archive.source),
                metadata={
                    "newest_segment": newest or "",
                    "last_archived_at": MetadataValue.timestamp(last),
                    "age_s": round(age, 1),
                    "segments_behind": behind if behind is not None else -1,
                },
            )
        )
        seen |= {"newest": newest, "at": now}
    stalled = age > source.max_archive_age_s and not up_to_date
    if stalled and not seen.get("stalled"):
        error = (
            f"WAL archiving stalled: nothing archived into {archive.source} since "
            f"{format_utc(last)} ({age:.0f} s)"
            + (f", {behind} finished segment(s) waiting" if behind else "")
            + "; the server's log says why wal-push fails"
        )
        runtime.notifications.publish(event_body("backup.failed", source.name, "", error=error))
    seen["stalled"] = stalled
    return f"{archive.source}: newest {newest} at {format_utc(last)}" + (
        " (stalled)" if stalled else ""
    )
