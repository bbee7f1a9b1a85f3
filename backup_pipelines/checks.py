"""Asset checks that prove snapshots sound: the stored bytes, and what each source adds.

A backup nobody has restored is a hope, not a backup. Every source gets the
`integrity` check (the stored bytes re-read against the manifest); each
source's own checks (`Source.checks()`: a drill that restores somewhere
harmless and compares, or a structural check) become asset checks here.
A failed check publishes `backup.verification_failed`.
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    MetadataValue,
    ResourceParam,
    asset_check,
)

from backup_pipelines.io_managers import as_metadata
from backup_pipelines.naming import backup_asset_key
from backup_pipelines.notifications import event_body
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.reader import verify_snapshot
from backup_pipelines.snapshot.store import LATEST, StoredSnapshot
from backup_pipelines.sources.source import Check, CheckOutcome, Source

ERROR_LIMIT = 500


def snapshot_under_check(
    context: AssetCheckExecutionContext, runtime: Runtime, source: str
) -> StoredSnapshot:
    """The snapshot of the asset's latest materialization (the store's newest if unrecorded)."""
    event = context.instance.get_latest_materialization_event(backup_asset_key(source))
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    snapshot_id = metadata["snapshot_id"].value if "snapshot_id" in metadata else LATEST
    return runtime.store.find(source, str(snapshot_id))


def check_result(
    context: AssetCheckExecutionContext,
    runtime: Runtime,
    snapshot: StoredSnapshot,
    outcome: CheckOutcome,
) -> AssetCheckResult:
    """The outcome as Dagster shows it; a failure is also announced as
    `backup.verification_failed`."""
    if not outcome.passed:
        body = event_body(
            "backup.verification_failed", snapshot.source, context.run.run_id, snapshot=snapshot
        )
        body["error"] = f"a check failed: {'; '.join(outcome.problems)}"[:ERROR_LIMIT]
        runtime.notifications.publish(body)
    return AssetCheckResult(
        passed=outcome.passed,
        severity=AssetCheckSeverity.WARN if outcome.warn_only else AssetCheckSeverity.ERROR,
        metadata={
            "snapshot_id": snapshot.snapshot_id,
            "files": len(snapshot.manifest.files),
            "bytes": snapshot.manifest.size_bytes,
            **as_metadata(outcome.metadata),
            "problems": MetadataValue.json(list(outcome.problems)),
        },
    )


def integrity_check(source: Source) -> AssetChecksDefinition:
    """Re-read every stored byte of the latest snapshot and compare with its manifest.

    It needs no age identity: it checks the bytes as stored, so it runs on the
    backup host, which holds only the public recipients.
    """
    name = source.name

    @asset_check(
        asset=backup_asset_key(name),
        name="integrity",
        description="Re-reads the stored bytes of the latest snapshot: sizes and sha256 "
        "must match its manifest.",
    )
    def _integrity(
        context: AssetCheckExecutionContext, runtime: ResourceParam[Runtime]
    ) -> AssetCheckResult:
        snapshot = snapshot_under_check(context, runtime, name)
        outcome = CheckOutcome(verify_snapshot(runtime.store, snapshot))
        return check_result(context, runtime, snapshot, outcome)

    return _integrity


def source_check(source: Source, check: Check) -> AssetChecksDefinition:
    """One of the source's own checks, on the latest snapshot, read with the age identity."""
    name = source.name

    @asset_check(asset=backup_asset_key(name), name=check.name, description=check.description)
    def _check(
        context: AssetCheckExecutionContext, runtime: ResourceParam[Runtime]
    ) -> AssetCheckResult:
        snapshot = snapshot_under_check(context, runtime, name)
        outcome = check.run(runtime.reader(snapshot, "check"), context.log.info)
        return check_result(context, runtime, snapshot, outcome)

    return _check


def checks_for(source: Source) -> list[AssetChecksDefinition]:
    return [integrity_check(source), *(source_check(source, check) for check in source.checks())]
