"""A prune: the retention rules applied to every source of every store (`retention/`), day-old
work left in staging removed, and each store's audit trail kept only as long as the oldest
snapshot it could name.

The command's `prune` and `retention_job` both come here. Each store goes by
its own rules (`BACKUP_RETENTION_*`, then its own from the stores file, then
a target's) and with its own prune keys; a copy store that cannot be
reached is said and left for the next prune, the primary's failure fails
the prune. One audit record per store (the snapshots deleted), kept in that
store; `backup.pruned` for each source that lost something, with what, how
many bytes and in which store. A dry run changes nothing and announces
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from backup_pipelines.errors import StorageFull, StoreError
from backup_pipelines.events.messages import PRUNED, event_body, short_error
from backup_pipelines.operations.caller import Caller, Log
from backup_pipelines.records.audit import AuditLog
from backup_pipelines.retention.policy import RetentionRules
from backup_pipelines.retention.pruning import SourcePrune, apply_retention
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.manifest import format_utc, utc_now
from backup_pipelines.stores import PRIMARY


@dataclass(frozen=True)
class Pruned:
    """What a prune decided (and, unless a dry run, did) in one store."""

    store: str
    reports: Sequence[SourcePrune] = ()
    error: str | None = None
    """Why the store could not be pruned (a copy store: the next prune tries again)."""

    def listing(self) -> dict[str, Any]:
        """The contract's `{"keep": [...], "delete": [...]}` of `<source>/<snapshot_id>`, and
        `"locked"`: what the rules drop but S3 Object Lock protects, with its retain-until."""
        listed: dict[str, Any] = {
            "keep": [f"{r.source}/{i}" for r in self.reports for i in r.keep],
            "delete": [f"{r.source}/{i}" for r in self.reports for i in r.delete + r.leftovers],
            "locked": [
                {"snapshot": f"{r.source}/{i}", "retain_until": format_utc(until)}
                for r in self.reports
                for i, until in r.locked.items()
            ],
        }
        return listed | ({"error": self.error} if self.error else {})


def prune(
    runtime: Runtime, caller: Caller, *, dry_run: bool, store: str | None = None
) -> list[Pruned]:
    """Every store (or only `store`), the store `runtime` is bound to first."""
    pruned = []
    for spec in runtime.stores:
        if store not in (None, spec.name):
            continue
        bound = runtime if spec.name == runtime.spec.name else runtime.on_store(spec.name)
        if spec.name == PRIMARY:
            pruned.append(prune_store(bound, caller, dry_run=dry_run))
            continue
        said = replace(caller, log=_in(spec.name, caller.log), warn=_in(spec.name, caller.warn))
        try:
            done = prune_store(bound, said, dry_run=dry_run)
            if not dry_run:
                remember_dropped(runtime, bound, done)
        except (StoreError, StorageFull) as exc:
            error = short_error(exc, runtime.secrets)
            said.warn(f"not pruned: {error}; the next prune tries again")
            done = Pruned(spec.name, error=error)
        pruned.append(done)
    return pruned


def remember_dropped(runtime: Runtime, copy: Runtime, pruned: Pruned) -> None:
    """What the copy store's own rules deleted, so that no copy sends it back while the
    primary still holds it (`records/dropped.py`)."""
    primary = runtime if runtime.spec.name == PRIMARY else runtime.on_store(PRIMARY)
    for report in pruned.reports:
        if report.delete:
            held = [s.snapshot_id for s in primary.store.list_snapshots(report.source)]
            copy.dropped.add(report.source, report.delete, min(held, default=None))


def prune_store(runtime: Runtime, caller: Caller, *, dry_run: bool) -> Pruned:
    """The store `runtime` is bound to, by its rules; staging is the primary's to clean."""
    audited = runtime.audit.operation("prune", via=caller.via, run_id=caller.run_id)
    with audited as noted:
        noted.detail = "dry run" if dry_run else None
        if runtime.spec.name != PRIMARY:
            noted.target = runtime.spec.name
        rules = RetentionRules.from_settings(runtime.shared).for_store(runtime.spec)
        pruned = Pruned(
            runtime.spec.name,
            apply_retention(
                runtime.store,
                runtime.sources,
                rules,
                dry_run=dry_run,
                now=utc_now(),
                staging_dir=runtime.staging.directory if runtime.spec.name == PRIMARY else None,
                log=caller.log,
                warn=caller.warn,
            ),
        )
        noted.snapshots = pruned.listing()["delete"]
        if not dry_run:
            prune_audit(runtime.audit, pruned.reports, caller)
    if not dry_run:
        announce(runtime, caller, pruned)
    return pruned


def _in(store: str, log: Log) -> Log:
    return lambda line: log(f"{store}: {line}")


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


def announce(runtime: Runtime, caller: Caller, pruned: Pruned) -> None:
    """`backup.pruned` for each source that lost snapshots or leftovers in the store."""
    for report in pruned.reports:
        if report.delete or report.leftovers:
            body = event_body(PRUNED, report.source, caller.run_id)
            body.update(
                size_bytes=report.freed_bytes,
                deleted=report.delete + report.leftovers,
                store=pruned.store,
            )
            runtime.events.publish(body)
