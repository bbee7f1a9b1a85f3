"""Where each source stands: its last good snapshot, and the backup failure since, if any.

What an operator asks first after a failed night, answered from the store alone (Dagster may
be down): the newest complete snapshot, and the audit trail's newest failed backup when it is
newer than that snapshot, with its reason in one line. `backup-pipelines status` prints it;
the `last_backup` check of each backup asset shows it in the UI, so a failed run no longer
hides that a good snapshot is a minute older.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from backup_pipelines.records.audit import AuditRecord
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.manifest import format_utc, utc_now
from backup_pipelines.snapshot.store import StoredSnapshot
from backup_pipelines.storage.streams import human_bytes, human_span

FAILURES_LOOK_BACK = timedelta(days=8)
"""How far back the audit trail is read for a failure (a week's nights, and a day)."""


@dataclass(frozen=True)
class Standing:
    source: str
    last_good: StoredSnapshot | None
    failed_at: datetime | None = None
    """When the newest backup after the last good snapshot failed; None when none did."""
    failure: str | None = None
    """Why, in one line (masked)."""

    @property
    def healthy(self) -> bool:
        return self.last_good is not None and self.failed_at is None

    def summary(self, now: datetime) -> str:
        """One line: failing since when and why, and the last good snapshot and its age."""
        good = "no snapshot yet"
        if self.last_good is not None:
            manifest = self.last_good.manifest
            age = human_span((now - manifest.finished_at).total_seconds())
            good = (
                f"last good {manifest.snapshot_id} ({age} ago, {human_bytes(manifest.size_bytes)})"
            )
        if self.failed_at is None:
            return good
        return f"FAILED at {format_utc(self.failed_at)}: {self.failure}; {good}"

    def report(self) -> dict[str, Any]:
        """`status --json`'s entry for the source."""
        last_good = self.last_good
        return {
            "source": self.source,
            "healthy": self.healthy,
            "last_good_snapshot_id": last_good.snapshot_id if last_good else None,
            "last_good_at": format_utc(last_good.manifest.finished_at) if last_good else None,
            "failed_at": format_utc(self.failed_at) if self.failed_at else None,
            "failure": self.failure,
        }


def standings(runtime: Runtime, sources: Sequence[str]) -> list[Standing]:
    """Each of `sources`' last good snapshot and the failure after it, from the store alone
    (the audit trail read once for all of them: it is one object per record)."""
    since = utc_now() - FAILURES_LOOK_BACK
    failures = [
        record
        for record in runtime.audit.records(since=since)
        if record.operation == "backup" and record.outcome == "failed"
    ]
    return [_standing(runtime, source, failures) for source in sources]


def _standing(runtime: Runtime, source: str, failures: Sequence[AuditRecord]) -> Standing:
    snapshots = runtime.store.list_snapshots(source)
    last_good = snapshots[0] if snapshots else None
    failed = next((record for record in failures if record.source == source), None)  # newest
    if failed is None or (last_good is not None and failed.at < last_good.manifest.finished_at):
        return Standing(source, last_good)
    return Standing(source, last_good, failed.at, failed.error)
