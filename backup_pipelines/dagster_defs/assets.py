"""One backup asset per source (a kind's one, or a target); each materialization is one
complete snapshot.

An asset stages its snapshot and returns it; the IO manager commits it to
the store and records the metadata (the operation, with its events and
audit record, is `operations/backup.py`). Errors
an operator must fix (a wrong password, a database that does not exist)
fail at once; errors that may pass (a server restarting) are retried with
backoff; a step that fails for good publishes `backup.failed`.
"""

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    Backoff,
    Failure,
    HookContext,
    HookDefinition,
    Jitter,
    ResourceParam,
    RetryPolicy,
    asset,
    failure_hook,
)

from backup_pipelines.dagster_defs.caller import in_run
from backup_pipelines.dagster_defs.dagster_internals import (
    BACKFILL_ID_TAG,
    SCHEDULE_NAME_TAG,
    SENSOR_NAME_TAG,
)
from backup_pipelines.dagster_defs.definition_names import (
    BACKUPS_GROUP,
    CRM_GROUP,
    backup_asset_key,
    crm_asset_key,
    failure_hook_name,
    pool_name,
)
from backup_pipelines.dagster_defs.last_backup import report_failure
from backup_pipelines.dagster_defs.schedules import describe_freshness, freshness_for
from backup_pipelines.errors import PERMANENT_ERRORS, SourceUnavailable
from backup_pipelines.events.messages import short_error
from backup_pipelines.operations import backup
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.sources.source import Source

TRANSIENT_RETRIES = 3


def transient_retries(delay_s: float) -> RetryPolicy:
    """Three retries after `delay_s`, then twice and four times that (30, 60, 120 s by default)."""
    return RetryPolicy(
        max_retries=TRANSIENT_RETRIES,
        delay=delay_s,
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    )


def started_by_hand(context: AssetExecutionContext) -> bool:
    """A run an operator launched (Materialize, the command line): one who waits for the
    answer, which a system that is down will not give sooner for retrying. Schedules,
    sensors and backfills keep their backoff: a server restarting at night comes back."""
    automatic = (SCHEDULE_NAME_TAG, SENSOR_NAME_TAG, BACKFILL_ID_TAG)
    return not any(tag in context.run.tags for tag in automatic)


def crm_system(source: Source) -> AssetSpec:
    """The live system, upstream of its backup in the asset graph.

    Dagster does not materialize these (the CRM writes them); they are here so
    the lineage shows operators which system each backup copies.
    """
    return AssetSpec(
        key=crm_asset_key(source.name),
        group_name=CRM_GROUP,
        kinds={source.dagster_kind},
        description=source.system,
    )


def announce_failure(source: str) -> HookDefinition:
    """`backup.failed` for a backup step that failed for good (after its retries)."""

    @failure_hook(name=failure_hook_name(source), required_resource_keys={"runtime"})
    def _announce(context: HookContext) -> None:
        runtime: Runtime = context.resources.runtime
        error = short_error(context.op_exception, runtime.secrets)
        backup.record_failure(runtime, in_run(context.run_id, context.log), source, error)
        report_failure(context.instance, runtime, source, error)

    return _announce


def backup_asset(source: Source, retry_policy: RetryPolicy) -> AssetsDefinition:
    """The source's backup: announce, stage, dump, and say plainly what to fix."""
    name = source.name

    @asset(
        key=backup_asset_key(name),
        group_name=BACKUPS_GROUP,
        deps=[crm_asset_key(name)],
        kinds={source.dagster_kind},
        pool=pool_name(name),
        description=f"{source.description} To restore a snapshot, launch restore_job (Jobs → "
        f"restore_job → Launchpad) with `source: {name}` and a target, or run the `restore` "
        f"command a materialization records. {describe_freshness(source.cron)}",
        retry_policy=retry_policy,
        hooks={announce_failure(name)},
        freshness_policy=freshness_for(source.cron),
    )
    def _backup(context: AssetExecutionContext, runtime: ResourceParam[Runtime]) -> StagedSnapshot:
        caller = in_run(context.run.run_id, context.log)
        if context.retry_number == 0:
            backup.announce_start(runtime, caller, name)
        try:
            staged = backup.stage(runtime, caller, name)
        except PERMANENT_ERRORS as exc:
            message = runtime.sources[name].in_own_terms(str(exc))
            raise Failure(description=message, allow_retries=False) from None
        except SourceUnavailable as exc:
            line = runtime.sources[name].unreachable(exc)
            if started_by_hand(context):
                said = f"{line} (not retried: a run launched by hand answers at once; "
                said += "the schedule's and sensors' runs retry it three times)"
                raise Failure(description=said, allow_retries=False) from None
            if context.retry_number >= TRANSIENT_RETRIES:
                raise Failure(description=line, allow_retries=False) from None
            raise SourceUnavailable(line) from None  # the retry policy waits, then tries again
        return staged

    return _backup
