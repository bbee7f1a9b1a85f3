"""A prune: the retention rules applied to every source (`retention/`), day-old work left in
staging removed, and the audit trail kept only as long as the oldest snapshot it could name.

The command's `prune` and `retention_job` both come here. One audit record
(the snapshots deleted); `backup.pruned` for each source that lost
something, with what and how many bytes. A dry run changes nothing and
announces nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from backup_pipelines.events.messages import PRUNED, event_body
from backup_pipelines.operations.caller import Caller
from backup_pipelines.records.audit import AuditLog
from backup_pipelines.retention.policy import RetentionRules
from backup_pipelines.retention.pruning import SourcePrune, apply_retention
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.manifest import format_utc, utc_now


@dataclass(frozen=True)
class Pruned:
    reports: Sequence[SourcePrune]

    def listing(self) -> dict[str, list[Any]]:
        """The contract's `{"keep": [...], "delete": [...]}` of `<source>/<snapshot_id>`, and
        `"locked"`: what the rules drop but S3 Object Lock protects, with its retain-until."""
        return {
            "keep": [f"{r.source}/{i}" for r in self.reports for i in r.keep],
            "delete": [f"{r.source}/{i}" for r in self.reports for i in r.delete + r.leftovers],
            "locked": [
                {"snapshot": f"{r.source}/{i}", "retain_until": format_utc(until)}
                for r in self.reports
                for i, until in r.locked.items()
            ],
        }


def prune(runtime: Runtime, caller: Caller, *, dry_run: bool) -> Pruned:
    audited = runtime.audit.operation("prune", via=caller.via, run_id=caller.run_id)
    with audited as noted:
        noted.detail = "dry run" if dry_run else None
        pruned = Pruned(
            apply_retention(
                runtime.store,
                runtime.sources,
                RetentionRules.from_settings(runtime.shared),
                dry_run=dry_run,
                now=utc_now(),
                staging_dir=runtime.staging.directory,
                log=caller.log,
                warn=caller.warn,
            )
        )
        noted.snapshots = pruned.listing()["delete"]
        if not dry_run:
            prune_audit(runtime.audit, pruned.reports, caller)
    if not dry_run:
        announce(runtime, caller, pruned.reports)
    return pruned


def prune_audit(audit: AuditLog, reports: Sequence[SourcePrune], caller: Caller) -> None:
    """Audit records older than the oldest snapshot left go: every record outlives the
    snapshots it names. With no snapshot left at all, every record stays."""
    left = [i for r in reports for i in (*r.keep, *r.locked)]
    if not left:
        return
    oldest = min(left)[:8]  # ids start with the snapshot's UTC day
    removed = audit.prune(before=datetime.strptime(oldest, "%Y%m%d").date())
    if removed:
        caller.log(
            f"removed audit records of {len(removed)} days before the oldest snapshot ({oldest})"
        )


def announce(runtime: Runtime, caller: Caller, reports: Sequence[SourcePrune]) -> None:
    """`backup.pruned` for each source that lost snapshots or leftovers."""
    for report in reports:
        if report.delete or report.leftovers:
            body = event_body(PRUNED, report.source, caller.run_id)
            body.update(size_bytes=report.freed_bytes, deleted=report.delete + report.leftovers)
            runtime.events.publish(body)
