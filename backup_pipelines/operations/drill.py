"""A drill: prove a snapshot restores equal to its manifest, in scratch targets the drill makes
and removes itself, never in the system that was backed up.

`backup-pipelines drill` and the verification plane (`verification.py`) both
come here. The stored bytes are re-read against the manifest first; then the
source's drill restores and compares. An encrypted snapshot needs the age
identity, which lives where verification runs, not where backups do:
without it the drill is skipped (`IdentityMissing`), before anything is
restored, as it is when there is no snapshot yet. Every drill's outcome is
recorded in the store (`records/verdicts.py`), so monitoring knows it
without Dagster; `backup.verified` or `backup.verification_failed` says it
on the broker, and one audit record in the trail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from backup_pipelines.errors import BackupError, SnapshotNotFound
from backup_pipelines.events.messages import (
    ERROR_LIMIT,
    VERIFICATION_FAILED,
    event_body,
    short_error,
    verification_event,
)
from backup_pipelines.operations.caller import Caller
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.encryption import IdentityMissing
from backup_pipelines.snapshot.manifest import utc_now
from backup_pipelines.snapshot.reader import verify_snapshot
from backup_pipelines.snapshot.store import StoredSnapshot
from backup_pipelines.sources.source import DrillResult

SKIPPED = (IdentityMissing, SnapshotNotFound)
"""Why a drill may not run here at all: not a snapshot that failed to restore."""


@dataclass(frozen=True)
class Drilled:
    snapshot: StoredSnapshot
    result: DrillResult
    duration_s: float

    @property
    def where(self) -> str:
        return f"{self.snapshot.source}/{self.snapshot.snapshot_id}"

    def report(self) -> dict[str, Any]:
        """What the drill proved, as `drill --json` prints it and the UI records it."""
        return {
            "source": self.snapshot.source,
            "snapshot_id": self.snapshot.snapshot_id,
            "passed": self.result.passed,
            "duration_s": self.duration_s,
            "problems": list(self.result.problems),
            "warnings": list(self.result.warnings),
            **self.result.figures,
        }


def drill(runtime: Runtime, caller: Caller, source: str, snapshot_id: str) -> Drilled:
    """Drill `snapshot_id` (or `latest`) of `source`. Raises what kept it from running: one
    of `SKIPPED`, or a `BackupError` (announced as a failed verification)."""
    audited = runtime.audit.operation("drill", via=caller.via, source=source, run_id=caller.run_id)
    with audited as noted:
        snapshot = None
        try:
            snapshot = runtime.store.find(source, snapshot_id)
            noted.snapshots.append(f"{source}/{snapshot.snapshot_id}")
            drilled = _drilled(runtime, caller, snapshot)
        except SKIPPED as exc:
            noted.skipped(str(exc))
            raise
        except BackupError as exc:
            error = short_error(exc, runtime.secrets)
            runtime.events.publish(
                event_body(
                    VERIFICATION_FAILED, source, caller.run_id, snapshot=snapshot, error=error
                )
            )
            raise
        for warning in drilled.result.warnings:
            caller.warn(f"{drilled.where}: warning: {warning}")
        if not drilled.result.passed:
            noted.failed("; ".join(drilled.result.problems)[:ERROR_LIMIT])
    runtime.events.publish(
        verification_event(drilled.snapshot, caller.run_id, drilled.result.problems)
    )
    return drilled


def _drilled(runtime: Runtime, caller: Caller, snapshot: StoredSnapshot) -> Drilled:
    """The drill itself: the stored bytes, then the source's restore into its scratch."""
    reader = runtime.reader(snapshot, "drill")
    started = time.monotonic()
    problems = verify_snapshot(runtime.store, snapshot)
    source = runtime.sources[snapshot.source]
    result = DrillResult(problems) if problems else source.drill(reader, caller.log)
    runtime.verdicts.record(snapshot.source, snapshot.snapshot_id, result.passed, utc_now())
    return Drilled(snapshot, result, round(time.monotonic() - started, 3))
