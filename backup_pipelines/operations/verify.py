"""A verify: re-read a snapshot's stored bytes against its manifest, and with `deep` prove it
restorable without a target (each source's own check of its format).

The command's `verify` and the `integrity` asset check of every backup both
come here. The plain verify needs no age identity (it checks the bytes as
stored), so it runs on the backup host. One audit record;
`backup.verification_failed` when anything is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from backup_pipelines.errors import SnapshotNotFound
from backup_pipelines.events.messages import verification_event
from backup_pipelines.operations.caller import Caller
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.reader import verify_snapshot
from backup_pipelines.snapshot.store import StoredSnapshot


@dataclass(frozen=True)
class Verified:
    snapshot: StoredSnapshot
    problems: list[str]
    """What does not match (empty: sound)."""

    @property
    def where(self) -> str:
        return f"{self.snapshot.source}/{self.snapshot.snapshot_id}"


def verify(
    runtime: Runtime, caller: Caller, source: str, snapshot_id: str, *, deep: bool = False
) -> Verified:
    audited = runtime.audit.operation("verify", via=caller.via, source=source, run_id=caller.run_id)
    with audited as noted:
        noted.detail = "deep" if deep else "integrity"
        try:
            snapshot = runtime.store.find(source, snapshot_id)
        except SnapshotNotFound as exc:
            noted.skipped(str(exc))  # nothing to verify yet: not a snapshot that failed
            raise
        verified = Verified(snapshot, [])
        noted.snapshots.append(verified.where)
        verified.problems.extend(verify_snapshot(runtime.store, snapshot))
        if deep and not verified.problems:
            reader = runtime.reader(snapshot, "verify")
            verified.problems.extend(runtime.sources[source].deep_verify(reader))
        if verified.problems:
            noted.failed(f"{verified.where}: {'; '.join(verified.problems)}")
    if verified.problems:
        runtime.events.publish(verification_event(snapshot, caller.run_id, verified.problems))
    return verified
