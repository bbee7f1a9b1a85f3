"""`retention_job`: the retention rules applied to every source of every store, from Dagster
(daily schedule); the command's `prune` without `--dry-run` (`operations/prune.py`)."""

from dagster import MetadataValue, Nothing, OpExecutionContext, Out, Output, ResourceParam, job, op

from backup_pipelines.dagster_defs.caller import in_run
from backup_pipelines.operations.prune import prune
from backup_pipelines.runtime import Runtime


@op(out=Out(Nothing))
def apply_retention(context: OpExecutionContext, runtime: ResourceParam[Runtime]):
    """Delete what the rules drop and day-old interrupted attempts; say so as `backup.pruned`."""
    first, *copies = prune(runtime, in_run(context.run_id, context.log), dry_run=False)
    reports = first.reports
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
            **(
                {"copy_stores": MetadataValue.json({p.store: p.listing() for p in copies})}
                if copies
                else {}
            ),
        },
    )


@job(description="Prune every source by the retention rules.")
def retention_job() -> None:
    apply_retention()
