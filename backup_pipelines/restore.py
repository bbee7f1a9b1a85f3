"""Restoring a snapshot: find it, open it with its keys, and hand it to its source.

The `backup-pipelines restore` command and `restore_job` both come here, so
`latest` is resolved once and a missing or wrong age identity fails before
any source touches its target.
"""

from __future__ import annotations

from dataclasses import dataclass

from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.store import StoredSnapshot
from backup_pipelines.sources.source import Log, RestoreOptions


@dataclass(frozen=True)
class Restored:
    snapshot: StoredSnapshot
    summary: str
    """What the source restored where, in one line."""


def restore(
    runtime: Runtime, source_name: str, snapshot_id: str, options: RestoreOptions, log: Log
) -> Restored:
    source = runtime.sources[source_name]
    snapshot = source.snapshot_to_restore(runtime.store, snapshot_id, options)
    reader = runtime.reader(snapshot, "restore")
    summary = source.restore(reader, options, log)
    return Restored(snapshot, summary)
