"""The audit trail in the Dagster UI: the asset `audit_trail` (group `audit`).

Materializing it reads the trail from the store (the command's records with
Dagster's own) and shows the newest records as a table in its metadata, and
the failures among them; `backup-pipelines audit` prints the same.
"""

from datetime import timedelta

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, ResourceParam, asset

from backup_pipelines.records.audit import AuditRecord
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.manifest import utc_now

SHOWN = 50
WINDOW = timedelta(days=7)


def _table(records: list[AuditRecord]) -> str:
    rows = [
        "| at (UTC) | operation | outcome | source | snapshots | target | who | via | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        cells = [
            record.model_dump(mode="json")["at"],
            record.operation,
            record.outcome,
            record.source or "",
            ", ".join(record.snapshots[:3]) + (" …" if len(record.snapshots) > 3 else ""),
            record.target or "",
            f"{record.user}@{record.host}",
            record.via + (f" {record.run_id[:8]}" if record.run_id else ""),
            (record.error or "")[:120],
        ]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


@asset(
    name="audit_trail",
    group_name="audit",
    description="Every backup, restore, verify, drill and prune of the last 7 days, from Dagster "
    "or the backup-pipelines command, newest first (Materialize to read it again). The "
    "records live in the store: `backup-pipelines audit` prints them with Dagster down.",
)
def audit_trail(
    context: AssetExecutionContext, runtime: ResourceParam[Runtime]
) -> MaterializeResult:
    records = runtime.audit.records(since=utc_now() - WINDOW)
    failed = [record for record in records if record.outcome == "failed"]
    context.log.info(f"{len(records)} audit records in 7 days, {len(failed)} failed")
    return MaterializeResult(
        metadata={
            "records": len(records),
            "failed": len(failed),
            "newest": MetadataValue.md(_table(records[:SHOWN])),
            "failures": MetadataValue.md(_table(failed[:SHOWN])),
        }
    )
