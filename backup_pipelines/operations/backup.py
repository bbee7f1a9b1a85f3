"""A backup: announced, dumped into staging, committed to the store, or failed.

In Dagster the steps fall in different places (the asset announces and
dumps, the IO manager commits, a hook or the run-failure sensor reports a
failure), so the operation is here as those steps, each with its side
effects: `backup.started` on the first try; `backup.completed` and an audit
record once the snapshot is committed; `backup.failed` and an audit record
when the backup failed for good.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from backup_pipelines.events.messages import COMPLETED, FAILED, STARTED, event_body
from backup_pipelines.operations.caller import Caller
from backup_pipelines.records.audit import Entry
from backup_pipelines.runtime import Runtime
from backup_pipelines.services import Services
from backup_pipelines.snapshot.staging import WARNING, StagedSnapshot
from backup_pipelines.snapshot.store import StoredSnapshot


@dataclass(frozen=True)
class Committed:
    snapshot: StoredSnapshot
    duration_s: float
    """From the start of the dump to the manifest in place."""
    store_bytes: int
    """Everything the source's folder now holds (snapshots, attempts, its own data)."""


def announce_start(services: Services, caller: Caller, source: str) -> None:
    services.events.publish(event_body(STARTED, source, caller.run_id))


def stage(runtime: Runtime, caller: Caller, source: str) -> StagedSnapshot:
    """The source dumped into a fresh staging directory, which goes if the dump fails: a
    snapshot not yet committed (`ToolFailed`, `ProducerFailed`, `SourceUnavailable`, ...).
    A backup is a Dagster run's: the run's id ends the snapshot's. Never two dumps of one
    source at once on this host."""
    assert caller.run_id, "a backup runs in a Dagster run"
    with (
        runtime.staging.one_at_a_time(source, caller.log),
        runtime.staging.stage(source, caller.run_id, caller.log) as staged,
    ):
        runtime.sources[source].dump(staged, caller.log)
    if warning := staged.stats.get(WARNING):
        caller.warn(f"{source}: {warning}")
    return staged


def commit(services: Services, caller: Caller, staged: StagedSnapshot) -> Committed:
    """Artifacts first, the manifest last; the staging directory goes either way. A store
    that refuses raises, and the backup has failed (`record_failure` says so)."""
    try:
        stored = services.store.commit(staged)
    finally:
        staged.discard()
    duration_s = time.monotonic() - staged.monotonic_start
    done = Entry(snapshots=[f"{staged.source}/{stored.snapshot_id}"])
    services.audit.append(
        "backup", done, via=caller.via, source=staged.source, run_id=caller.run_id
    )
    services.events.publish(
        event_body(COMPLETED, staged.source, caller.run_id, snapshot=stored, duration_s=duration_s)
    )
    caller.log(f"{staged.source} snapshot {stored.snapshot_id} stored at {stored.location}")
    return Committed(stored, duration_s, services.store.usage(staged.source))


def record_failure(services: Services, caller: Caller, source: str, error: str) -> None:
    """A backup that failed for good (after its retries): `error` is one line, masked."""
    services.events.publish(event_body(FAILED, source, caller.run_id, error=error))
    failed = Entry()
    failed.failed(error)
    services.audit.append("backup", failed, via=caller.via, source=source, run_id=caller.run_id)
