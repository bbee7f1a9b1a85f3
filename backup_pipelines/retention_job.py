"""`retention_job`: the retention rules applied to every source, from Dagster (daily schedule)."""

from pathlib import Path

from dagster import (
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    ResourceParam,
    job,
    op,
)

from backup_pipelines.io_managers import SnapshotIOManager
from backup_pipelines.notifications import NotificationPublisher, event_body
from backup_pipelines.resources import DocumentsResource, SnapshotPipeline
from backup_pipelines.retention import RetentionRules, prune
from backup_pipelines.settings import load_settings
from backup_pipelines.snapshot.manifest import utc_now


@op(out=Out(Nothing))
def apply_retention(
    context: OpExecutionContext,
    io_manager: ResourceParam[SnapshotIOManager],
    notifications: NotificationPublisher,
    documents: DocumentsResource,
    snapshot_pipeline: SnapshotPipeline,
):
    """Delete what the rules drop and day-old interrupted attempts; say so as `backup.pruned`."""
    rules = RetentionRules.from_settings(load_settings())
    forget = documents.restic().forget if documents.restic_password else None
    reports = prune(
        io_manager.build_store(),
        rules,
        dry_run=False,
        now=utc_now(),
        staging_dir=Path(snapshot_pipeline.staging_dir),
        forget_documents=forget,
        log=context.log.info,
        warn=context.log.warning,
    )
    for report in reports:
        if report.delete or report.leftovers:
            body = event_body("backup.pruned", report.source, context.run_id)
            body.update(size_bytes=report.freed_bytes, deleted=report.delete + report.leftovers)
            notifications.publish(body)
    yield Output(
        None,
        metadata={
            "kept": sum(len(r.keep) for r in reports),
            "deleted": sum(len(r.delete) for r in reports),
            "leftovers_removed": sum(len(r.leftovers) for r in reports),
            "unreadable_manifests": sum(len(r.unreadable) for r in reports),
            "bytes_freed": sum(r.freed_bytes for r in reports),
            **{f"{r.source}_kept": len(r.keep) for r in reports},
            **{f"{r.source}_deleted": len(r.delete) for r in reports},
        },
    )


@job(description="Prune every source by the retention rules.")
def retention_job() -> None:
    apply_retention()
