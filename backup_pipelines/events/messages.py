"""The events' bodies, as the contract (section 6) spells them: one place for every field.

Each event names its source and the Dagster run it came from (`""` when the
command or a sensor outside any run sent it), and carries an error only in
the words an operator reads: one line, secrets masked, bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from backup_pipelines.redaction import redact
from backup_pipelines.snapshot.manifest import format_utc
from backup_pipelines.snapshot.store import StoredSnapshot

STARTED = "backup.started"
COMPLETED = "backup.completed"
FAILED = "backup.failed"
RESTORED = "backup.restored"
PRUNED = "backup.pruned"
VERIFIED = "backup.verified"
VERIFICATION_FAILED = "backup.verification_failed"
OVERDUE = "backup.overdue"
ERROR_LIMIT = 500


def event_body(
    event: str,
    source: str,
    run_id: str | None,
    *,
    snapshot: StoredSnapshot | None = None,
    duration_s: float | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The contract's event body (section 6)."""
    return {
        "event": event,
        "source": source,
        "snapshot_id": snapshot.snapshot_id if snapshot else None,
        "run_id": run_id or "",
        "timestamp": format_utc(datetime.now(UTC)),
        "duration_s": round(duration_s, 3) if duration_s is not None else None,
        "size_bytes": snapshot.manifest.size_bytes if snapshot else None,
        "location": snapshot.location if snapshot else None,
        "error": error,
    }


def verification_event(
    snapshot: StoredSnapshot, run_id: str | None, problems: Sequence[str] = ()
) -> dict[str, Any]:
    """`backup.verified` of a sound snapshot, or `backup.verification_failed` with what is
    wrong."""
    if not problems:
        return event_body(VERIFIED, snapshot.source, run_id, snapshot=snapshot)
    error = f"verification found: {'; '.join(problems)}"[:ERROR_LIMIT]
    return event_body(VERIFICATION_FAILED, snapshot.source, run_id, snapshot=snapshot, error=error)


def short_error(exc: BaseException | None, secrets: Sequence[str | None]) -> str:
    """One line naming what failed, secrets masked, bounded in length."""
    if exc is None:
        return "unknown error"
    text = getattr(exc, "description", None) or str(exc) or type(exc).__name__
    return redact(" ".join(str(text).split()), secrets)[:ERROR_LIMIT]
