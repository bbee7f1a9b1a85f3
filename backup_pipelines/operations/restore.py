"""A restore: find the snapshot, open it with its keys, hand it to its source, and say so.

The command's `restore` and `restore_job` both come here with the options
as the operator gave them (flags, or run config), so they are validated
once, `latest` is resolved once, and a missing or wrong age identity fails
before any source touches its target. The snapshot is read from the
primary; when the primary cannot be reached, from the first copy store
that holds it, said in one line (`--store` names one instead). One audit
record, kept in the store read, whatever happens; `backup.restored` once
the target holds the snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backup_pipelines.errors import BackupError, StorageFull, StoreError
from backup_pipelines.events.messages import RESTORED, event_body, short_error
from backup_pipelines.operations.caller import Caller
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.store import StoredSnapshot

SNAPSHOT_SHOWN = 80
"""Of a snapshot argument as typed, what an audit record keeps (an id has 25 characters)."""


@dataclass(frozen=True)
class Restored:
    snapshot: StoredSnapshot
    destination: str
    """Where it went, as it may be shown (a URL's password masked)."""
    summary: str
    """What the source restored where, in one line (or a few, with the next step)."""


def restore(
    runtime: Runtime,
    caller: Caller,
    source_name: str,
    snapshot_id: str,
    given: Mapping[str, Any],
    spelled: Callable[[str], str] = str,
) -> Restored:
    """Restore `snapshot_id` (or `latest`) of `source_name` with the options `given` (named
    in messages as `spelled` writes them), from the store `runtime` is bound to (the caller
    picks it: `holding_store`)."""
    source = runtime.sources[source_name]
    audited = runtime.audit.operation(
        "restore", via=caller.via, source=source_name, run_id=caller.run_id
    )
    with audited as noted:
        noted.snapshots.append(f"{source_name}/{snapshot_id[:SNAPSHOT_SHOWN]}")
        options = source.restore_options.parse(given, spelled, subject=source_name)
        noted.target = destination = options.destination()
        caller.log(f"restoring {source_name} {snapshot_id} into {destination}")
        snapshot = source.snapshot_to_restore(runtime.store, snapshot_id, options)
        noted.snapshots[-1] = f"{source_name}/{snapshot.snapshot_id}"
        started = time.monotonic()
        summary = source.restore(runtime.reader(snapshot, "restore"), options, caller.log)
    body = event_body(
        RESTORED,
        source_name,
        caller.run_id,
        snapshot=snapshot,
        duration_s=time.monotonic() - started,
    )
    body["location"] = destination
    runtime.events.publish(body)
    return Restored(snapshot, destination, summary)


def holding_store(runtime: Runtime, caller: Caller, source: str, snapshot_id: str) -> Runtime:
    """`runtime` when its store can be read; else bound to the first copy store that holds
    the snapshot, said in one line. The store's own error when none does."""
    try:
        runtime.store.location_ids(source)
        return runtime
    except (StoreError, StorageFull) as exc:
        unreachable = exc
    for spec in runtime.stores:
        if spec.name == runtime.spec.name:
            continue
        copy = runtime.on_store(spec.name)
        try:
            copy.store.find(source, snapshot_id)
        except BackupError:
            continue
        caller.warn(
            f"{runtime.store.describe()} cannot be reached "
            f"({short_error(unreachable, runtime.secrets)}): restoring {source} {snapshot_id} "
            f"from the copy store {spec.name}, {copy.store.describe()}"
        )
        return copy
    raise unreachable
