"""Drilling a snapshot: prove it restores equal to its manifest, in scratch targets the drill
makes and removes itself, never in the system that was backed up.

`backup-pipelines drill` and the verification plane (`verification.py`) both
come here. The stored bytes are re-read against the manifest first; then the
source's drill restores and compares. An encrypted snapshot needs the age
identity, which lives where verification runs, not where backups do:
without it this raises `IdentityMissing`, before anything is restored.
Every drill's outcome is recorded in the store (`snapshot/verdicts.py`), so
monitoring knows it without Dagster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.manifest import utc_now
from backup_pipelines.snapshot.reader import verify_snapshot
from backup_pipelines.snapshot.store import StoredSnapshot
from backup_pipelines.snapshot.verdicts import record_verdict
from backup_pipelines.sources.source import DrillResult, Log


@dataclass(frozen=True)
class Drilled:
    snapshot: StoredSnapshot
    result: DrillResult
    duration_s: float

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


def drill(runtime: Runtime, source: str, snapshot_id: str, log: Log) -> Drilled:
    snapshot = runtime.store.find(source, snapshot_id)
    reader = runtime.reader(snapshot, "drill")
    started = time.monotonic()
    problems = verify_snapshot(runtime.store, snapshot)
    result = DrillResult(problems) if problems else runtime.sources[source].drill(reader, log)
    record_verdict(runtime.store, source, snapshot.snapshot_id, result.passed, utc_now())
    return Drilled(snapshot, result, round(time.monotonic() - started, 3))
