"""The copy stores in the Dagster UI: one asset per copy store (group `copies`), downstream of
every backup, and the sensor that keeps them up to date.

A materialization of `copies/<store>` brings the store up to date with the
primary (`operations/copy.py`) and records what went and what is still
missing per source; its check `up_to_date` fails while anything is. Copies
run on their own (never inside a backup's run, so a store that is down
never fails or slows a backup): `copy_sensor` starts one when a store lacks
the primary's newest snapshot or WAL file, and at least once an hour, never
while one for that store is queued or running (a pool per store).
"""

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    asset,
    sensor,
)

from backup_pipelines.dagster_defs.caller import in_run
from backup_pipelines.dagster_defs.definition_names import COPIES_GROUP, copy_asset_key
from backup_pipelines.errors import StorageFull, StoreError
from backup_pipelines.events.messages import short_error
from backup_pipelines.operations.copy import behind, copy
from backup_pipelines.runtime import Runtime
from backup_pipelines.stores import StoreSpec

if TYPE_CHECKING:
    from backup_pipelines.dagster_defs.dagster_internals import UnresolvedAssetJobDefinition

SENSOR_NAME = "copy_sensor"
FULL_COPY_EVERY_S = 3600
"""A store that seems up to date still gets a whole copy this often (an older gap, the audit
trail, the drill verdicts)."""
UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def copy_store_asset(store: StoreSpec, backups: Sequence[AssetKey]) -> AssetsDefinition:
    key = copy_asset_key(store.name)

    @asset(
        key=key,
        group_name=COPIES_GROUP,
        deps=list(backups),
        pool=f"copy.{store.name}",
        check_specs=[AssetCheckSpec("up_to_date", asset=key)],
        description=f"The copy store {store.name} ({store.location.describe()}): every "
        "snapshot, WAL file, audit record and drill verdict of the primary, byte for byte, "
        "as its own retention keeps them. A materialization copies what it lacks; "
        f"{SENSOR_NAME} starts one when it lacks the newest.",
    )
    def _copy(
        context: AssetExecutionContext, runtime: ResourceParam[Runtime]
    ) -> Iterator[MaterializeResult]:
        [done] = copy(runtime, in_run(context.run.run_id, context.log), store=store.name)
        report = done.report()
        behind_by_source = {s.source: len(s.missing) for s in done.sources}
        yield MaterializeResult(
            metadata={
                "location": done.location,
                "reachable": done.error is None,
                "copied": sum(len(s.copied) for s in done.sources),
                "behind": report["behind"],
                "behind_by_source": MetadataValue.json(behind_by_source),
                "other_files": sum(s.files for s in done.sources),
                "audit_records": done.audit_records,
                "report": MetadataValue.json(report),
            },
            check_results=[
                AssetCheckResult(
                    check_name="up_to_date",
                    passed=done.complete,
                    severity=AssetCheckSeverity.WARN,
                    metadata={"behind": report["behind"], "error": done.error or ""},
                )
            ],
        )

    return _copy


def unfinished_run(instance: DagsterInstance, job_name: str) -> bool:
    records = instance.get_run_records(RunsFilter(job_name=job_name, statuses=UNFINISHED), limit=1)
    return bool(records)


def copy_sensor(
    stores: Sequence[StoreSpec],
    jobs: Sequence["UnresolvedAssetJobDefinition"],
    clock: Callable[[], float] = time.time,
) -> SensorDefinition:
    """`jobs`: each store's copy job, in the order of `stores`."""
    job_of = {store.name: job for store, job in zip(stores, jobs, strict=True)}

    @sensor(
        name=SENSOR_NAME,
        jobs=list(jobs),
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description="Starts a copy into a copy store when it lacks the primary's newest snapshot "
        f"or WAL file, and every {FULL_COPY_EVERY_S // 60} min at least; one at a time.",
    )
    def _sensor(
        context: SensorEvaluationContext, runtime: ResourceParam[Runtime]
    ) -> list[RunRequest] | SkipReason:
        last: dict[str, float] = json.loads(context.cursor) if context.cursor else {}
        now, requests, said = clock(), [], []
        for name, job in job_of.items():
            if unfinished_run(context.instance, job.name):
                said.append(f"{name}: a copy is under way")
                continue
            try:
                why = behind(runtime, name)
            except (StoreError, StorageFull) as exc:
                why, error = None, short_error(exc, runtime.secrets)
                said.append(f"{name}: cannot be read now ({error})")
            if why is None and now - last.get(name, 0) < FULL_COPY_EVERY_S:
                said.append(f"{name}: up to date")
                continue
            requests.append(
                RunRequest(job_name=job.name, tags={"backup/copy": why or "the hourly copy"})
            )
            last[name] = now
        context.update_cursor(json.dumps(last))
        return requests or SkipReason("; ".join(said))

    return _sensor
