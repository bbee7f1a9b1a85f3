"""What monitoring announces, found by Dagster's sensors: a backup overdue (its asset's
freshness failed), a continuous archive stalled. Each is announced once per failure, by the
sensor's own bookkeeping; this module says it on the broker.
"""

from __future__ import annotations

from backup_pipelines.events.messages import FAILED, OVERDUE, event_body
from backup_pipelines.services import Services


def backup_overdue(services: Services, source: str, last_run_id: str, why: str) -> None:
    """`backup.overdue` of `source`, naming the run of its last snapshot."""
    services.events.publish(event_body(OVERDUE, source, last_run_id, error=why))


def archiving_stalled(services: Services, source: str, why: str) -> None:
    """A stalled archive fails what `source` promises (recovery to any moment):
    `backup.failed`, outside any run."""
    services.events.publish(event_body(FAILED, source, None, error=why))
