"""The audit trail: one record for every operation that reads or changes backups or their
targets (backup, restore, verify, drill, prune), from Dagster or the command, kept in the store.

Nobody can later answer "who restored what into which target, when, and did
it succeed?" from Dagster's run history alone: the disaster-recovery path is
the command, with Dagster maybe down. So each operation appends a record to
`<root>/.audit/<YYYYMMDD>/<time>-<random>.json`: a new object each time,
never rewritten (it survives S3 Object Lock), with the OS user and host, the
Dagster run where there is one, the target as it may be shown (a URL's
password masked) and the error masked and bounded. Writing the record never
hides the operation's own outcome: a store that refuses it costs a warning.
Retention keeps records at least as long as the oldest snapshot in the store.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_serializer

from backup_pipelines.redaction import mask_url, redact
from backup_pipelines.storage import Backend
from backup_pipelines.storage.layout import (
    AUDIT_PREFIX,
    audit_day_prefix,
    audit_record_key,
)
from backup_pipelines.storage.transfer import copy_proven

logger = logging.getLogger(__name__)

MAX_RECORD_BYTES = 64 << 10
ERROR_LIMIT = 500
DAY = "%Y%m%d"

Operation = Literal[
    "backup", "restore", "recover", "verify", "drill", "prune", "copy", "wal-push", "wal-fetch"
]
Via = Literal["command", "dagster"]
Outcome = Literal["succeeded", "failed", "skipped"]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"uid {os.getuid()}"


class AuditRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: datetime
    operation: Operation
    via: Via
    source: str | None = None
    snapshots: list[str] = []
    target: str | None = None
    detail: str | None = None
    outcome: Outcome
    error: str | None = None
    user: str
    host: str
    run_id: str | None = None

    @field_serializer("at")
    def _utc(self, moment: datetime) -> str:
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Entry:
    """What an operation notes while it runs: the snapshots it touched, where, how it ended."""

    snapshots: list[str] = field(default_factory=list)
    target: str | None = None
    detail: str | None = None
    outcome: Outcome = "succeeded"
    error: str | None = None

    def failed(self, why: str) -> None:
        self.outcome, self.error = "failed", why

    def skipped(self, why: str) -> None:
        self.outcome, self.error = "skipped", why


class AuditLog:
    """Append and read the trail in the store `backend`; `secrets` are masked in every record."""

    def __init__(self, backend: Backend, secrets: Sequence[str | None]):
        self.backend = backend
        self.secrets = secrets

    @contextmanager
    def operation(
        self,
        operation: Operation,
        *,
        via: Via,
        source: str | None = None,
        run_id: str | None = None,
    ) -> Iterator[Entry]:
        """One record for the block: as the block noted it in the `Entry`, or, when it
        raises (re-raised as is) without having noted an outcome, failed with the error."""
        entry = Entry()
        try:
            yield entry
        except BaseException as exc:
            if entry.outcome == "succeeded":
                entry.failed(str(exc) or type(exc).__name__)
            raise
        finally:
            self.append(operation, entry, via=via, source=source, run_id=run_id)

    def append(
        self,
        operation: Operation,
        entry: Entry,
        *,
        via: Via,
        source: str | None = None,
        run_id: str | None = None,
    ) -> None:
        """Write one record; never raises (the operation's outcome is what matters)."""
        error = (
            redact(" ".join(entry.error.split()), self.secrets)[:ERROR_LIMIT]
            if entry.error
            else None
        )
        record = AuditRecord(
            at=datetime.now(UTC),
            operation=operation,
            via=via,
            source=source,
            snapshots=entry.snapshots,
            target=redact(mask_url(entry.target), self.secrets) if entry.target else None,
            detail=entry.detail,
            outcome=entry.outcome,
            error=error,
            user=_user(),
            host=socket.gethostname(),
            run_id=run_id,
        )
        stamp = record.at.strftime("%Y%m%dT%H%M%S%fZ")
        key = audit_record_key(record.at.strftime(DAY), f"{stamp}-{uuid.uuid4().hex[:8]}.json")
        try:
            self.backend.put_bytes(key, record.model_dump_json().encode())
        except Exception as exc:  # whatever the store does, the operation's outcome stands
            reason = redact(str(exc), self.secrets)
            logger.warning("the audit record of this %s was not written: %s", operation, reason)

    def _days(self) -> list[str]:
        return sorted(
            (day for day in self.backend.children(AUDIT_PREFIX) if _is_day(day)),
            reverse=True,
        )

    def records(
        self, source: str | None = None, since: datetime | None = None
    ) -> list[AuditRecord]:
        """Newest first; `source` keeps a source's records (a kind keeps all its targets')."""
        found: list[AuditRecord] = []
        for day in self._days():
            if since is not None and day < since.strftime(DAY):
                break
            for name in self.backend.files(audit_day_prefix(day)):
                record = self._read(audit_record_key(day, name))
                if record is None or (since is not None and record.at < since):
                    continue
                if source is None or _names(source, record.source):
                    found.append(record)
        return sorted(found, key=lambda record: record.at, reverse=True)

    def _read(self, key: str) -> AuditRecord | None:
        fetched = self.backend.get(key, MAX_RECORD_BYTES + 1)
        if fetched is None or len(fetched.data) > MAX_RECORD_BYTES:
            return None
        if fetched.rewritten:
            logger.warning("%s", fetched.rewritten)
        try:
            return AuditRecord.model_validate_json(fetched.data)
        except ValidationError:
            logger.warning("ignoring %s: not an audit record", key)
            return None

    def copy_to(self, other: Backend) -> int:
        """The records `other` lacks, into it, each read back; how many. Records never
        change, and new ones land on today: the days `other` has before its newest are
        whole, and are not listed again."""
        theirs = sorted(day for day in other.children(AUDIT_PREFIX) if _is_day(day))
        copied = 0
        for day in sorted(self._days()):
            if theirs and day in theirs and day < theirs[-1]:
                continue
            held = set(other.files(audit_day_prefix(day)))
            for name in self.backend.files(audit_day_prefix(day)):
                if name not in held:
                    copy_proven(self.backend, other, audit_record_key(day, name))
                    copied += 1
        return copied

    def prune(self, before: date) -> list[str]:
        """Delete the days before `before` (the oldest snapshot's): a record outlives every
        snapshot it names. Days S3 Object Lock still protects stay. The days removed."""
        removed = []
        for day in self._days():
            if day >= before.strftime(DAY):
                continue
            prefix = audit_day_prefix(day)
            if self.backend.retained_until(prefix) is None:
                self.backend.delete_prefix(prefix)
                removed.append(day)
        return removed


def _is_day(name: str) -> bool:
    return len(name) == 8 and name.isdigit()


def _names(asked: str, source: str | None) -> bool:
    """Whether `asked` (a source, or a kind for all its targets) names `source`."""
    return source is not None and (source == asked or source.startswith(f"{asked}."))
