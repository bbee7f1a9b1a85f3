"""Cron expressions as the schedules read them: validation and the gap between runs.

croniter is the parser Dagster's own schedules use (vendored there), so what
passes here is what the daemon will run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

from croniter import croniter

TICKS_SAMPLED = 8


def check_cron(expression: str) -> str:
    """Raise `ValueError` unless `expression` is a five-field cron a schedule can run."""
    if not croniter.is_valid(expression):
        raise ValueError("is not a valid cron expression (five fields, UTC)")
    fields, *_ = croniter.expand(expression)
    if len(fields) != 5:
        raise ValueError("is not a valid cron expression (five fields, UTC)")
    days, months = fields[2], fields[3]
    if months == [2] and len(days) == 1 and days[0] in (30, 31):
        raise ValueError("names a day February never has")
    return expression


def cron_interval(expression: str, now: datetime | None = None) -> timedelta:
    """The longest gap between the next few runs of `expression` (UTC)."""
    ticks = croniter(expression, now or datetime.now(UTC))
    upcoming = [ticks.get_next(datetime) for _ in range(TICKS_SAMPLED)]
    return max(later - earlier for earlier, later in pairwise(upcoming))
