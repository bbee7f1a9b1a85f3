"""The verification plane's code location (`backup_pipelines.verification`), built from the
runtime.

One asset per source, `<source>_verification` (group `verification`),
downstream of its backup asset in the other code location: a
materialization drills the source's latest snapshot (`operations/drill.py`:
scratch targets it makes and removes itself, `backup.verified` or
`backup.verification_failed`), and records what it proved, or fails.
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
    in_process_executor,
)

from backup_pipelines.dagster_defs.caller import in_run
from backup_pipelines.dagster_defs.definition_names import (
    VERIFICATION_GROUP,
    VERIFICATION_JOB,
    backup_asset_key,
    verification_asset_key,
)
from backup_pipelines.dagster_defs.io_manager import as_metadata
from backup_pipelines.dagster_defs.schedules import freshness_for, verification_schedule
from backup_pipelines.dagster_defs.sensors import notifications_outbox_sensor
from backup_pipelines.errors import BackupError
from backup_pipelines.operations.drill import SKIPPED, drill
from backup_pipelines.runtime import Runtime
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
        """Drill the latest snapshot and record what it proved; fail when it does not
        restore equal to its manifest."""
        try:
            drilled = drill(runtime, in_run(context.run.run_id, context.log), name, LATEST)
        except SKIPPED as skip:
            context.log.warning(f"{name} is not verified: {skip}")
            return
        except BackupError as exc:
            message = runtime.sources[name].in_own_terms(str(exc))
            raise Failure(description=message, allow_retries=False) from None
        report = as_metadata(drilled.report())
        if not drilled.result.passed:
            problems = "; ".join(drilled.result.problems)[:PROBLEMS_SHOWN]
            raise Failure(
                description=f"{drilled.where} does not restore equal to its manifest: {problems}",
                metadata=report,
                allow_retries=False,
            )
        yield MaterializeResult(metadata=report)

    return _verification


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
