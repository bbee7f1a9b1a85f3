"""The code location `backup_pipelines.verification`: the verification plane.

One asset per source, `<source>_verification` (group `verification`),
downstream of its backup asset in the other code location: a
materialization drills the source's latest snapshot into scratch targets
it makes and removes itself, records what it proved, and publishes
`backup.verified`, or fails and publishes `backup.verification_failed`.
`verification_schedule` runs them all on `BACKUP_VERIFY_CRON`.

It is its own location so it can run where the age identity lives, with
read-only store credentials, while the backup hosts hold only the
recipients. Where the identity is not configured, an encrypted snapshot is
skipped, saying so (the asset then turns overdue), never failed.
"""

from collections.abc import Iterator

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AssetSelection,
    Definitions,
    Failure,
    MaterializeResult,
    ResourceParam,
    asset,
    define_asset_job,
    definitions,
    in_process_executor,
)

from backup_pipelines.audit import Entry
from backup_pipelines.drill import drill
from backup_pipelines.errors import BackupError, SnapshotNotFound
from backup_pipelines.io_managers import as_metadata
from backup_pipelines.naming import (
    VERIFICATION_GROUP,
    VERIFICATION_JOB,
    backup_asset_key,
    verification_asset_key,
)
from backup_pipelines.notifications import event_body, verification_event
from backup_pipelines.runtime import Runtime, load_runtime
from backup_pipelines.schedules import freshness_for, verification_schedule
from backup_pipelines.sensors import notifications_outbox_sensor
from backup_pipelines.snapshot.encryption import IdentityMissing
from backup_pipelines.snapshot.store import LATEST
from backup_pipelines.sources.source import Source

PROBLEMS_SHOWN = 500


def verification_asset(source: Source, verify_cron: str) -> AssetsDefinition:
    name = source.name

    @asset(
        key=verification_asset_key(name),
        group_name=VERIFICATION_GROUP,
        deps=[backup_asset_key(name)],
        kinds={source.dagster_kind},
        description=f"Drills the latest {name} snapshot: restores it into a scratch target "
        "made for the drill (never the system backed up), compares it with its manifest's "
        "figures and removes the scratch.",
        freshness_policy=freshness_for(verify_cron),
        output_required=False,
    )
    def _verification(
        context: AssetExecutionContext, runtime: ResourceParam[Runtime]
    ) -> Iterator[MaterializeResult]:
        with runtime.audit.operation(
            "drill", via="dagster", source=name, run_id=context.run.run_id
        ) as noted:
            yield from _drilled(context, runtime, name, noted)

    return _verification


def _drilled(
    context: AssetExecutionContext, runtime: Runtime, name: str, noted: Entry
) -> Iterator[MaterializeResult]:
    """Drill the latest snapshot, record what it proved, announce it; fail when it does not
    restore equal to its manifest."""
    try:
        drilled = drill(runtime, name, LATEST, context.log.info)
        noted.snapshots.append(f"{name}/{drilled.snapshot.snapshot_id}")
    except (IdentityMissing, SnapshotNotFound) as skip:
        context.log.warning(f"{name} is not verified: {skip}")
        noted.skipped(str(skip))
        return
    except BackupError as exc:
        error = runtime.notifications.short_error(exc)
        runtime.notifications.publish(
            event_body("backup.verification_failed", name, context.run.run_id, error=error)
        )
        message = runtime.sources[name].in_own_terms(str(exc))
        raise Failure(description=message, allow_retries=False) from None
    result, report = drilled.result, as_metadata(drilled.report())
    event = "backup.verified" if result.passed else "backup.verification_failed"
    runtime.notifications.publish(
        verification_event(event, drilled.snapshot, context.run.run_id, result.problems)
    )
    for warning in result.warnings:
        context.log.warning(f"{name}: {warning}")
    if not result.passed:
        problems = "; ".join(result.problems)[:PROBLEMS_SHOWN]
        noted.failed(problems)
        raise Failure(
            description=f"{name}/{drilled.snapshot.snapshot_id} does not restore equal to "
            f"its manifest: {problems}",
            metadata=report,
            allow_retries=False,
        )
    yield MaterializeResult(metadata=report)


def build_verification(runtime: Runtime) -> Definitions:
    """The verification location, wired from the runtime (tests build their own the same way)."""
    job = define_asset_job(
        VERIFICATION_JOB,
        selection=AssetSelection.groups(VERIFICATION_GROUP),
        description="Drills every source's latest snapshot, one after the other.",
    )
    cron = runtime.shared.verify_cron
    return Definitions(
        assets=[verification_asset(source, cron) for source in runtime.backed_up],
        jobs=[job],
        schedules=[verification_schedule(job, cron)],
        sensors=[notifications_outbox_sensor],
        resources={"runtime": runtime},
        executor=in_process_executor,
    )


@definitions
def defs() -> Definitions:
    return build_verification(load_runtime())
