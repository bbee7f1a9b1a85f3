"""What a source archives between its snapshots (PostgreSQL's WAL), in the Dagster UI: an
external asset per archive whose freshness is the age of its newest file, and the one sensor
that keeps them current and says when archiving stalls.

The live system archives without Dagster (PostgreSQL runs `wal-push` from
`archive_command`), so nothing materializes the asset: the sensor looks at
each archive every minute and records a materialization when a newer file
arrived, or when the live system confirms it has nothing more to archive
(an idle server archives nothing, and is not stalled). Archiving counts as
stalled when the newest file is older than the archive's maximum age
(`BACKUP_POSTGRES_WAL_MAX_AGE_S`) while the live system has finished files
the archive lacks (or cannot be asked); that publishes `backup.failed` once
per stall (`operations/alerts.py`), as the Prometheus rule alerts on it.
Which sources archive is declared (`Source.continuous_archive`).
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

from backup_pipelines.dagster_defs.definition_names import (
    BACKUPS_GROUP,
    archive_asset_key,
    crm_asset_key,
)
from backup_pipelines.operations import alerts
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.manifest import format_utc
from backup_pipelines.sources.source import ContinuousArchive, Source

Archiving = tuple[Source, ContinuousArchive]
SENSOR_NAME = "postgres_wal_sensor"
REPORT_EVERY_S = 300
"""How often an unchanged but up-to-date archive is recorded (keeps an idle one fresh)."""


def archive_asset(source: Source, archive: ContinuousArchive) -> AssetSpec:
    max_age = timedelta(seconds=archive.max_age_s)
    return AssetSpec(
        archive_asset_key(archive.name),
        group_name=BACKUPS_GROUP,
        deps=[crm_asset_key(source.name)],
        kinds={source.dagster_kind},
        description=(
            f"{archive.description} {SENSOR_NAME} records it here. Fails freshness when "
            f"nothing newer was archived for {max_age}."
        ),
        freshness_policy=FreshnessPolicy.time_window(fail_window=max_age),
    )


def archive_sensor(
    archiving: Sequence[Archiving], clock: Callable[[], float] = time.time
) -> SensorDefinition:
    @sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description="Records the newest file of each archive kept between snapshots (the "
        "postgres_wal asset: PostgreSQL's WAL) on its asset, and publishes backup.failed once "
        "when archiving stalls.",
    )
    def _sensor(context: SensorEvaluationContext, runtime: ResourceParam[Runtime]) -> SkipReason:
        state: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
        said = [
            _observe(context, runtime, found, state.setdefault(found[1].name, {}), clock())
            for found in archiving
        ]
        context.update_cursor(json.dumps(state))
        return SkipReason("; ".join(said))

    return _sensor


def _observe(
    context: SensorEvaluationContext,
    runtime: Runtime,
    found: Archiving,
    seen: dict,
    now: float,
) -> str:
    """One archive's look: record it, and announce a stall once. What it found, in words."""
    source, archive = found
    reach = archive.reach(runtime.store)
    newest, last = reach.newest, reach.archived_at
    if last is None:
        return f"{archive.name}: nothing archived yet"
    behind = archive.waiting(newest)
    up_to_date = behind is not None and behind <= 0
    age = now - last.timestamp()
    if newest != seen.get("newest") or (up_to_date and now - seen.get("at", 0) >= REPORT_EVERY_S):
        context.instance.report_runless_asset_event(
            AssetMaterialization(
                archive_asset_key(archive.name),
                metadata={
                    "newest_segment": newest or "",
                    "last_archived_at": MetadataValue.timestamp(last),
                    "age_s": round(age, 1),
                    "segments_behind": behind if behind is not None else -1,
                    "given_up_bytes": reach.given_up_bytes,
                },
            )
        )
        seen |= {"newest": newest, "at": now}
    stalled = age > archive.max_age_s and not up_to_date
    if stalled and not seen.get("stalled"):
        alerts.archiving_stalled(runtime, source.name, archive.stalled(last, age, behind))
    seen["stalled"] = stalled
    return f"{archive.name}: newest {newest} at {format_utc(last)}" + (
        " (stalled)" if stalled else ""
    )
