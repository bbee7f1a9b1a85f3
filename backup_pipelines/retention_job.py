"""`retention_job`: the retention rules applied to every source, from Dagster (daily schedule)."""

from dagster import Nothing, OpExecutionContext, Out, Output, ResourceParam, job, op

from backup_pipelines.notifications import event_body
from backup_pipelines.retention import RetentionRules, as_listing, prune
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.manifest import utc_now


@op(out=Out(Nothing))
def apply_retention(context: OpExecutionContext, runtime: ResourceParam[Runtime]):
    """Delete what the rules drop and day-old interrupted attempts; say so as `backup.pruned`."""
    with runtime.audit.operation("prune", via="dagster", run_id=context.run_id) as noted:
        reports = prune(
            runtime.store,
            runtime.sources,
            RetentionRules.from_settings(runtime.shared),
            dry_run=False,
            now=utc_now(),
            staging_dir=runtime.staging.directory,
            log=context.log.info,
            warn=context.log.warning,
        )
        noted.snapshots = as_listing(reports)["delete"]
    for report in reports:
        if report.delete or report.leftovers:
            body = event_body("backup.pruned", report.source, context.run_id)
            body.update(size_bytes=report.freed_bytes, deleted=report.delete + report.leftovers)
            runtime.notifications.publish(body)
    yield Output(
        None,
        metadata={
            "kept": sum(len(r.keep) for r in reports),
            "deleted": sum(len(r.delete) for r in reports),
            "locked": sum(len(r.locked) for r in reports),
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
