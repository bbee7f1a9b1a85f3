"""Who runs an operation, and where it says how it goes.

The same operation runs from the command (its lines on stderr, no run) and
from a Dagster run (its lines in the run's log, the run's id in every event
and audit record); a `Caller` carries that difference, so the operation
itself does not know which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from backup_pipelines.records.audit import Via

Log = Callable[[str], None]


@dataclass(frozen=True)
class Caller:
    via: Via
    """`command` or `dagster`, as the audit trail records it."""
    run_id: str | None
    """The Dagster run; None from the command."""
    log: Log
    """Progress, one line at a time."""
    warn: Log
    """What is worth a look without failing the operation."""
