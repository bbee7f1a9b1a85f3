"""The `integrity` asset check of every backup: the bytes just stored, re-read against the
manifest.

It needs no age identity (it checks the bytes as stored), so it runs in the
backup run, on the backup host, which holds only the public recipients.
Drills, which need the identity and a scratch target of their own, run in
the verification plane (`verification.py`). The check is the command's
`verify` (`operations/verify.py`): a failed one publishes
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

from backup_pipelines.dagster_defs.caller import in_run
from backup_pipelines.dagster_defs.definition_names import backup_asset_key
from backup_pipelines.operations.verify import verify
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.store import LATEST
from backup_pipelines.sources.source import Source


def snapshot_under_check(context: AssetCheckExecutionContext, source: str) -> str:
    """The id of the asset's latest materialization (the store's newest if unrecorded)."""
    event = context.instance.get_latest_materialization_event(backup_asset_key(source))
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    return str(metadata["snapshot_id"].value) if "snapshot_id" in metadata else LATEST


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
        caller = in_run(context.run.run_id, context.log)
        verified = verify(runtime, caller, name, snapshot_under_check(context, name))
        snapshot, problems = verified.snapshot, verified.problems
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
