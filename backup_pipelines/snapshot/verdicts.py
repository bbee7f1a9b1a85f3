"""What the last drill of each source proved, kept in the store beside the snapshots.

Monitoring reads the store alone (Dagster may be down), so a drill's outcome
must live there too: `<root>/.verification/<source>.json`, one small record
per source, replaced at each drill. Committed snapshots are never touched
(Object Lock would refuse it, and their manifests are their whole truth).
The record carries the last success forward across failures, so "verified
when?" survives a failing drill. Read back, it is untrusted like any
manifest: bounded, validated, and ignored (with a reason) when it is not a
valid record.
"""

from __future__ import annotations

import logging
from datetime import datetime

from pydantic import BaseModel, ConfigDict, ValidationError, field_serializer, field_validator

from backup_pipelines.errors import StorageFull, StoreError
from backup_pipelines.snapshot.manifest import format_utc
from backup_pipelines.snapshot.names import check_snapshot_id, check_source
from backup_pipelines.snapshot.store import SnapshotStore

logger = logging.getLogger(__name__)

VERDICTS = ".verification"
"""Not a source name (those start with a letter): never listed as one."""
MAX_VERDICT_BYTES = 64 << 10


class Verdict(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str
    snapshot_id: str
    passed: bool
    drilled_at: datetime
    last_success_at: datetime | None = None

    _source = field_validator("source")(check_source)
    _snapshot_id = field_validator("snapshot_id")(check_snapshot_id)

    @field_serializer("drilled_at", "last_success_at")
    def _utc(self, moment: datetime | None) -> str | None:
        return format_utc(moment) if moment else None


def verdict_key(source: str) -> str:
    return f"{VERDICTS}/{check_source(source)}.json"


def read_verdict(store: SnapshotStore, source: str) -> Verdict | None:
    """The source's last drill, or None when there is none (or it is not a valid record)."""
    fetched = store.backend.get(verdict_key(source), MAX_VERDICT_BYTES + 1)
    if fetched is None:
        return None
    try:
        verdict = Verdict.model_validate_json(fetched.data[:MAX_VERDICT_BYTES])
    except ValidationError:
        logger.warning("ignoring %s: not a verification record", verdict_key(source))
        return None
    return verdict if verdict.source == source else None


def record_verdict(
    store: SnapshotStore, source: str, snapshot_id: str, passed: bool, at: datetime
) -> None:
    """Replace the source's record with this drill's outcome. A store that refuses the write
    (read-only keys, a full disk) costs the record, never the drill's own outcome."""
    try:
        previous = read_verdict(store, source)
    except (StoreError, StorageFull):
        previous = None
    last_success = at if passed else (previous.last_success_at if previous else None)
    verdict = Verdict(
        source=source,
        snapshot_id=snapshot_id,
        passed=passed,
        drilled_at=at,
        last_success_at=last_success,
    )
    try:
        store.backend.put_bytes(verdict_key(source), verdict.model_dump_json().encode())
    except (StoreError, StorageFull) as exc:
        logger.warning("the drill's outcome was not recorded in the store: %s", exc)
