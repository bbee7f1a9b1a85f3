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
from backup_pipelines.storage import Backend
from backup_pipelines.storage.layout import VERDICTS_PREFIX, verdict_key
from backup_pipelines.storage.names import check_snapshot_id, check_source, is_source_name
from backup_pipelines.storage.transfer import copy_proven, read_back

logger = logging.getLogger(__name__)

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


class Verdicts:
    """The last drill of each source, in the store `backend`."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def read(self, source: str) -> Verdict | None:
        """The source's last drill, or None when there is none (or it is not a valid record)."""
        key = verdict_key(source)
        fetched = self.backend.get(key, MAX_VERDICT_BYTES + 1)
        if fetched is None:
            return None
        try:
            verdict = Verdict.model_validate_json(fetched.data[:MAX_VERDICT_BYTES])
        except ValidationError:
            logger.warning("ignoring %s: not a verification record", key)
            return None
        return verdict if verdict.source == source else None

    def record(self, source: str, snapshot_id: str, passed: bool, at: datetime) -> None:
        """Replace the source's record with this drill's outcome. A store that refuses the
        write (read-only keys, a full disk) costs the record, never the drill's own outcome."""
        try:
            previous = self.read(source)
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
            self.backend.put_bytes(
                verdict_key(source), verdict.model_dump_json().encode(), replace=True
            )
        except (StoreError, StorageFull) as exc:
            logger.warning("the drill's outcome was not recorded in the store: %s", exc)

    def copy_to(self, other: Backend) -> int:
        """Each source's record into `other` where its copy differs (a record is replaced
        at each drill), read back; how many. Only names of records are copied."""
        theirs = set(other.files(VERDICTS_PREFIX))
        copied = 0
        for name in self.backend.files(VERDICTS_PREFIX):
            source = name.removesuffix(".json")
            if source == name or not is_source_name(source):
                continue
            key = verdict_key(source)
            if name not in theirs or read_back(other, key) != read_back(self.backend, key):
                copy_proven(self.backend, other, key)
                copied += 1
        return copied
