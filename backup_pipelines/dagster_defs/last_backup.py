"""The `last_backup` check of every backup asset: the last good snapshot, and the failure since.

After a failed run the asset's page leads with "Failed in <run>", the reason
buried in the run above a stack trace, while a good snapshot may be a minute
older. This check says both where an operator looks first: each committed
snapshot reports it passed (naming the snapshot), and each backup that failed
for good reports it failed, with the reason in one line and the last good
snapshot. The reports are runless evaluations (the failed step runs no check);
the backup jobs leave the check out, and executing it by hand reads the store.
`backup-pipelines status` answers the same from the store alone.
"""

import logging

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetSelection,
    DagsterInstance,
    ResourceParam,
    asset_check,
)

from backup_pipelines.dagster_defs.definition_names import backup_asset_key
from backup_pipelines.errors import BackupError
from backup_pipelines.operations.status import Standing
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.manifest import format_utc, utc_now
from backup_pipelines.snapshot.store import StoredSnapshot

logger = logging.getLogger(__name__)

LAST_BACKUP = "last_backup"


def last_backup_check(source: str) -> AssetChecksDefinition:
    @asset_check(
        asset=backup_asset_key(source),
        name=LAST_BACKUP,
        blocking=False,
        description="The last good snapshot, and the backup failure since if any (with its "
        "reason): reported after every backup, so a failed run shows the snapshot that is "
        "still good.",
    )
    def _last_backup(
        context: AssetCheckExecutionContext, runtime: ResourceParam[Runtime]
    ) -> AssetCheckResult:
        snapshots = runtime.store.list_snapshots(source)
        found = Standing(source, snapshots[0] if snapshots else None)
        return AssetCheckResult(
            passed=found.healthy,
            severity=AssetCheckSeverity.WARN,
            metadata=_metadata(found),
            description=found.summary(utc_now()),
        )

    return _last_backup


def report_last_backup(
    instance: DagsterInstance, source: str, last_good: StoredSnapshot | None, failure: str | None
) -> None:
    """Record the check's outcome now: `failure` (one line, masked) or a success."""
    now = utc_now()
    found = Standing(source, last_good, now if failure is not None else None, failure)
    evaluation = AssetCheckEvaluation(
        asset_key=backup_asset_key(source),
        check_name=LAST_BACKUP,
        passed=found.healthy,
        severity=AssetCheckSeverity.WARN,
        metadata={**_metadata(found), "failure": failure or ""},
        description=found.summary(now),
    )
    try:
        instance.report_runless_asset_event(evaluation)
    except Exception as exc:  # Dagster's storage failing must not fail a committed backup
        logger.warning("the last_backup check of %s was not recorded: %s", source, exc)


def report_failure(instance: DagsterInstance, runtime: Runtime, source: str, error: str) -> None:
    """A backup of `source` failed for good: said beside its last good snapshot (none named
    when the store cannot be read: it may be what failed)."""
    try:
        snapshots = runtime.store.list_snapshots(source)
    except BackupError:
        snapshots = []
    report_last_backup(instance, source, snapshots[0] if snapshots else None, error)


def without_last_backup(selection: AssetSelection, sources: list[str]) -> AssetSelection:
    """A backup job's selection without the `last_backup` checks: they are reported, not run."""
    keys = [AssetCheckKey(backup_asset_key(source), LAST_BACKUP) for source in sources]
    return selection - AssetSelection.checks(*keys) if keys else selection


def _metadata(found: Standing) -> dict[str, str | int]:
    good = found.last_good
    return {
        "last_good_snapshot_id": good.snapshot_id if good else "",
        "last_good_at": format_utc(good.manifest.finished_at) if good else "",
        "last_good_bytes": good.manifest.size_bytes if good else 0,
    }
