"""The `integrity` asset check of every backup: the bytes just stored, re-read against the
manifest.

It needs no age identity (it checks the bytes as stored), so it runs in the
backup run, on the backup host, which holds only the public recipients.
Drills, which need the identity and a scratch target of their own, run in
the verification plane (`verification.py`). A failed check publishes
`backup.verification_failed`.
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

from backup_pipelines.audit import Entry
from backup_pipelines.naming import backup_asset_key
from backup_pipelines.notifications import verification_event
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.reader import verify_snapshot
from backup_pipelines.snapshot.store import LATEST, StoredSnapshot
from backup_pipelines.sources.source import Source


def snapshot_under_check(
    context: AssetCheckExecutionContext, runtime: Runtime, source: str
) -> StoredSnapshot:
    """The snapshot of the asset's latest materialization (the store's newest if unrecorded)."""
    event = context.instance.get_latest_materialization_event(backup_asset_key(source))
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    snapshot_id = metadata["snapshot_id"].value if "snapshot_id" in metadata else LATEST
    return runtime.store.find(source, str(snapshot_id))


def integrity_check(source: Source) -> AssetChecksDefinition:
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
        problems = verify_snapshot(runtime.store, snapshot)
        checked = Entry(snapshots=[f"{name}/{snapshot.snapshot_id}"], detail="integrity")
        if problems:
            checked.failed("; ".join(problems))
        runtime.audit.append(
            "verify", checked, via="dagster", source=name, run_id=context.run.run_id
        )
        if problems:
            runtime.notifications.publish(
                verification_event(
                    "backup.verification_failed", snapshot, context.run.run_id, problems
                )
            )
        return AssetCheckResult(
            passed=not problems,
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "snapshot_id": snapshot.snapshot_id,
                "files": len(snapshot.manifest.files),
                "bytes": snapshot.manifest.size_bytes,
                "problems": MetadataValue.json(problems),
            },
        )

    return _integrity
