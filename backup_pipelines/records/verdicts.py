"""What each drill of each source proved, kept in the store beside the snapshots.

Monitoring reads the store alone (Dagster may be down), so a drill's outcome
must live there too: `<root>/.verification/<source>/<drilled at>-<hex>.json`,
one small record per drill, written once (create-only, like manifests). The
newest record whose name does not lie ahead of the clock is the source's
last drill. A record is never replaced, so in a bucket that keeps versions a
written-over one ("drill passed" forged over a failure) is told apart and
its first version read (`S3Backend.get`); a writer policy that denies the
backup host's keys `.verification/` leaves only the verifier able to add one.
Each record carries the last success forward across failures, so "verified
when?" survives a failing drill. Read back, it is untrusted like any
manifest: bounded, validated, and ignored (with a reason) when it is not a
valid record.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, ValidationError, field_serializer, field_validator

from backup_pipelines.errors import StorageFull, StoreError
from backup_pipelines.snapshot.manifest import format_utc, utc_now
from backup_pipelines.snapshot.store import CLOCK_SLACK
from backup_pipelines.storage import Backend
from backup_pipelines.storage.layout import (
    VERDICTS_PREFIX,
    legacy_verdict_key,
    verdict_key,
    verdicts_prefix,
)
from backup_pipelines.storage.names import (
    check_snapshot_id,
    check_source,
    is_snapshot_id,
    is_source_name,
)
from backup_pipelines.storage.transfer import copy_proven

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
    """Every drill's outcome, by source, in the store `backend`."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def read(self, source: str) -> Verdict | None:
        """The source's last drill, or None when there is none (or it is not a valid record)."""
        names = self._record_names(source)
        if not names:
            return self._parsed(source, legacy_verdict_key(source), replaced=True)
        return self._parsed(source, verdict_key(source, names[-1]), replaced=False)

    def _record_names(self, source: str) -> list[str]:
        """The source's record names (ids), oldest first; a name after this host's clock
        (planted, or written by a clock far ahead) is reported and never the last drill."""
        latest = format_id(utc_now() + CLOCK_SLACK)
        names = []
        for file in self.backend.files(verdicts_prefix(source)):
            name = file.removesuffix(".json")
            if not is_snapshot_id(name) or name == file:
                continue
            if name > latest:
                logger.warning("ignoring the drill record %s: it lies ahead of the clock", file)
                continue
            names.append(name)
        return sorted(names)

    def _parsed(self, source: str, key: str, *, replaced: bool) -> Verdict | None:
        fetched = self.backend.get(key, MAX_VERDICT_BYTES + 1, replaced=replaced)
        if fetched is None:
            return None
        if fetched.rewritten:
            logger.warning("%s", fetched.rewritten)
        try:
            verdict = Verdict.model_validate_json(fetched.data[:MAX_VERDICT_BYTES])
        except ValidationError:
            logger.warning("ignoring %s: not a verification record", key)
            return None
        return verdict if verdict.source == source else None

    def record(self, source: str, snapshot_id: str, passed: bool, at: datetime) -> None:
        """Add this drill's outcome as a record of its own. A store that refuses the write
        (read-only keys, a full disk) costs the record, never the drill's own outcome."""
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
        name = f"{format_id(at)}-{secrets.token_hex(4)}"
        try:
            self.backend.put_bytes(verdict_key(source, name), verdict.model_dump_json().encode())
        except (StoreError, StorageFull) as exc:
            logger.warning("the drill's outcome was not recorded in the store: %s", exc)

    def copy_to(self, other: Backend) -> int:
        """Every record `other` lacks, read back; how many. Only names of records are copied."""
        copied = 0
        for source in self.backend.children(VERDICTS_PREFIX):
            if not is_source_name(source):
                continue
            theirs = set(other.files(verdicts_prefix(source)))
            for file in self.backend.files(verdicts_prefix(source)):
                name = file.removesuffix(".json")
                if file not in theirs and is_snapshot_id(name) and name != file:
                    copy_proven(self.backend, other, verdict_key(source, name))
                    copied += 1
        return copied


def format_id(moment: datetime) -> str:
    """A record name's first part, `YYYYMMDDTHHMMSSZ`, which sorts in time order."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
