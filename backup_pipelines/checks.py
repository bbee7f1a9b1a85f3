"""Asset checks that prove snapshots sound: the stored bytes, their structure, a real restore.

A backup nobody has restored is a hope, not a backup. Every source gets an
integrity check (the stored bytes re-read against the manifest); each adds
what proves its artifacts usable: a drill that restores them somewhere
harmless and compares, or a structural check of what was stored.
"""

from collections.abc import Callable

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    AssetsDefinition,
    MetadataValue,
    ResourceParam,
    asset_check,
)
from pyrage import x25519

from backup_pipelines.errors import IntegrityError
from backup_pipelines.io_managers import SnapshotIOManager, source_of
from backup_pipelines.notifications import NotificationPublisher, event_body
from backup_pipelines.resources import DocumentsResource, PostgresResource, SnapshotPipeline
from backup_pipelines.snapshot.encryption import identities_for
from backup_pipelines.snapshot.reader import verify_snapshot
from backup_pipelines.snapshot.store import LATEST, SnapshotStore, StoredSnapshot
from backup_pipelines.sources import DeepVerify
from backup_pipelines.sources.documents.restore import check_repository
from backup_pipelines.sources.postgres.restore import restore_drill as postgres_drill
from backup_pipelines.sources.redis.restore import restore_drill as redis_drill


def snapshot_under_check(
    context: AssetCheckExecutionContext, store: SnapshotStore, asset_key: AssetKey
) -> StoredSnapshot:
    """The snapshot of the asset's latest materialization (the store's newest if unrecorded)."""
    event = context.instance.get_latest_materialization_event(asset_key)
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    snapshot_id = metadata["snapshot_id"].value if "snapshot_id" in metadata else LATEST
    return store.find(source_of(asset_key), str(snapshot_id))


def drill_inputs(
    context: AssetCheckExecutionContext,
    io_manager: SnapshotIOManager,
    snapshot_pipeline: SnapshotPipeline,
    asset: AssetsDefinition,
) -> tuple[SnapshotStore, StoredSnapshot, list[x25519.Identity]]:
    """The store, the snapshot under check and the keys to read it: what every drill starts from."""
    store = io_manager.build_store()
    snapshot = snapshot_under_check(context, store, asset.key)
    identities = identities_for(snapshot.manifest.encryption, snapshot_pipeline.identity_file)
    return store, snapshot, identities


def announced(
    result: AssetCheckResult,
    context: AssetCheckExecutionContext,
    notifications: NotificationPublisher,
    snapshot: StoredSnapshot,
) -> AssetCheckResult:
    """Publish `backup.verification_failed` for a failed check, then hand the result on."""
    if not result.passed:
        body = event_body(
            "backup.verification_failed", snapshot.source, context.run.run_id, snapshot=snapshot
        )
        details = result.metadata.get("problems") or result.metadata.get("databases")
        body["error"] = f"a check failed: {details.value if details else 'see Dagster'}"[:500]
        notifications.publish(body)
    return result


def problems_result(snapshot: StoredSnapshot, problems: list[str]) -> AssetCheckResult:
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


def problems_check(
    asset: AssetsDefinition, name: str, description: str, find_problems: DeepVerify
) -> AssetChecksDefinition:
    """A check that passes when `find_problems` finds none in the latest snapshot."""

    @asset_check(asset=asset, name=name, description=description)
    def _check(
        context: AssetCheckExecutionContext,
        io_manager: ResourceParam[SnapshotIOManager],
        snapshot_pipeline: SnapshotPipeline,
        notifications: NotificationPublisher,
    ) -> AssetCheckResult:
        store, snapshot, identities = drill_inputs(context, io_manager, snapshot_pipeline, asset)
        problems = find_problems(store, snapshot, identities, snapshot_pipeline.work_dir("check"))
        return announced(problems_result(snapshot, problems), context, notifications, snapshot)

    return _check


def integrity_check(asset: AssetsDefinition) -> AssetChecksDefinition:
    """Re-read every stored byte of the latest snapshot and compare with its manifest.

    It needs no age identity: it checks the bytes as stored, so it runs on the
    backup host, which holds only the public recipients.
    """

    @asset_check(
        asset=asset,
        name="integrity",
        description="Re-reads the stored bytes of the latest snapshot: sizes and sha256 "
        "must match its manifest.",
    )
    def _integrity(
        context: AssetCheckExecutionContext,
        io_manager: ResourceParam[SnapshotIOManager],
        notifications: NotificationPublisher,
    ) -> AssetCheckResult:
        store = io_manager.build_store()
        snapshot = snapshot_under_check(context, store, asset.key)
        result = problems_result(snapshot, verify_snapshot(store, snapshot))
        return announced(result, context, notifications, snapshot)

    return _integrity


def postgres_restore_drill(asset: AssetsDefinition) -> AssetChecksDefinition:
    """Restore each database of the latest snapshot into a scratch database and compare rows."""

    @asset_check(
        asset=asset,
        name="restore_drill",
        description="Restores each database of the latest snapshot into a scratch database "
        "on the same server, compares per-table row counts with those taken at backup time, "
        "and drops it. Switch off with BACKUP_POSTGRES_RESTORE_DRILL=false.",
    )
    def _drill(
        context: AssetCheckExecutionContext,
        io_manager: ResourceParam[SnapshotIOManager],
        snapshot_pipeline: SnapshotPipeline,
        notifications: NotificationPublisher,
        postgres: PostgresResource,
    ) -> AssetCheckResult:
        store, snapshot, identities = drill_inputs(context, io_manager, snapshot_pipeline, asset)
        results = postgres_drill(
            store,
            snapshot,
            postgres.cluster(),
            identities,
            snapshot_pipeline.work_dir("drill"),
            context.log.info,
        )
        outcome = AssetCheckResult(
            passed=all(not result["differences"] for result in results.values()),
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "snapshot_id": snapshot.snapshot_id,
                "databases": MetadataValue.json(results),
                "rows_restored": sum(result["rows"] for result in results.values()),
            },
        )
        return announced(outcome, context, notifications, snapshot)

    return _drill


def redis_restore_drill(asset: AssetsDefinition) -> AssetChecksDefinition:
    """redis-check-rdb, then load the RDB into a throw-away server and count keys per database."""

    @asset_check(
        asset=asset,
        name="restore_drill",
        description="Runs redis-check-rdb on the latest snapshot, loads it into a throw-away "
        "redis-server and compares keys per database with the counts taken at backup time.",
    )
    def _drill(
        context: AssetCheckExecutionContext,
        io_manager: ResourceParam[SnapshotIOManager],
        snapshot_pipeline: SnapshotPipeline,
        notifications: NotificationPublisher,
    ) -> AssetCheckResult:
        store, snapshot, identities = drill_inputs(context, io_manager, snapshot_pipeline, asset)
        try:
            result = redis_drill(store, snapshot, identities, snapshot_pipeline.work_dir("drill"))
        except IntegrityError as exc:
            failed = problems_result(snapshot, [str(exc)])
            return announced(failed, context, notifications, snapshot)
        # Keys with a TTL may expire between the count and the sync on a live server:
        # a different count is worth a look (WARN), an RDB that does not load is not a backup.
        return AssetCheckResult(
            passed=result["equal"],
            severity=AssetCheckSeverity.WARN,
            metadata={
                "snapshot_id": snapshot.snapshot_id,
                "expected_keys": MetadataValue.json(result["expected_keys"]),
                "loaded_keys": MetadataValue.json(result["loaded_keys"]),
                "function_libraries": result["function_libraries"],
            },
        )

    return _drill


def restic_checks(asset: AssetsDefinition, read_data_subset: str) -> list[AssetChecksDefinition]:
    """The snapshot's restic id exists; `restic check` reads a random subset of the data."""

    def checking(read_data: str | None) -> Callable[..., AssetCheckResult]:
        def _check(
            context: AssetCheckExecutionContext,
            io_manager: ResourceParam[SnapshotIOManager],
            notifications: NotificationPublisher,
            documents: DocumentsResource,
        ) -> AssetCheckResult:
            store = io_manager.build_store()
            snapshot = snapshot_under_check(context, store, asset.key)
            problems = check_repository(snapshot, documents.restic(), read_data)
            return announced(problems_result(snapshot, problems), context, notifications, snapshot)

        return _check

    exists = asset_check(
        asset=asset,
        name="restic_snapshot_exists",
        description="The restic snapshot the latest snapshot points at is in the repository.",
    )(checking(None))
    check = asset_check(
        asset=asset,
        name="restic_check",
        description=f"restic check of the repository, reading a random {read_data_subset} of its "
        "data each run, so every pack is read within about a month of nightly runs.",
    )(checking(read_data_subset))
    return [exists, check]
