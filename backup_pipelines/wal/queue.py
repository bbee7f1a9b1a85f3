"""The bound on WAL waiting for an archive that cannot be reached (`BACKUP_WAL_QUEUE_MAX_BYTES`),
as pgBackRest's `archive-push-queue-max`: past it, the oldest waiting segment is given up.

PostgreSQL keeps every segment its `archive_command` has not answered 0 for,
so a store down for hours fills the server's disk and stops the database the
backups protect. With the bound set, a `wal-push` whose store failed answers
0 anyway when more than the bound waits in `pg_wal` (its own segment and the
`.ready` ones after it): PostgreSQL archives in order, so the segment given
up is always the oldest waiting one, and it may now be recycled.

What was given up is a *gap*: kept in the spool directory (`wal/ahead.py`'s,
the server's OS user's) while the store cannot be reached, grown by each
segment given up, and written into the store by the first push that
succeeds again (`WalArchive.record_gap`). A restore then refuses a moment
the gap makes unreachable, until a new base backup exists.

Once a push failed, those that follow within `PROBE_EVERY_S` give their
segment up without trying the store again (and without importing anything
but the standard library), so giving up keeps pace with the WAL PostgreSQL
writes; after that a push tries the store again, and the first that
succeeds ends the gap. Unset, nothing is ever given up.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from backup_pipelines.wal import ahead

QUEUE_MAX_VARIABLE = "BACKUP_WAL_QUEUE_MAX_BYTES"
PROBE_EVERY_S = 30
"""How long after a failed push the next ones give up their segment without trying the store."""
UNREACHABLE = "unreachable"
"""The spool's file saying when a push last failed to reach the store."""
LAST_STORED = "last-stored"
"""The spool's file naming the newest segment a push stored, and when PostgreSQL finished it."""
PENDING_GAP = "gap.json"
"""The spool's record of the gap growing while the store cannot be reached."""


@dataclass(frozen=True)
class Gap:
    """Segments given up in a row: `first` to `last`, `bytes` in all. WAL after `since` (when
    PostgreSQL finished the last segment stored before the gap; None when unknown) to
    `until` (when it finished `last`) is not in the archive."""

    first: str
    last: str
    segments: int
    bytes: int
    since: str | None
    until: str
    given_up_at: str

    @property
    def key_name(self) -> str:
        return f"{self.first}-{self.last}.json"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def parsed(cls, text: str | bytes) -> Gap | None:
        """The gap a record says (the spool's, or the store's: untrusted), or None when it is
        not one: the segments' names, counts and times are checked."""
        try:
            found = json.loads(text)
            gap = cls(**found) if isinstance(found, dict) else None
        except (ValueError, TypeError):
            return None
        if gap is None or not all(
            isinstance(name, str) and ahead.is_segment_name(name) for name in (gap.first, gap.last)
        ):
            return None
        counts = (gap.segments, gap.bytes)
        if not all(isinstance(count, int) and count >= 0 for count in counts):
            return None
        try:
            times = [gap.until, gap.given_up_at] + ([gap.since] if gap.since is not None else [])
            if any(datetime.fromisoformat(moment).tzinfo is None for moment in times):
                return None  # a time without its zone cannot be compared with a moment
        except (TypeError, ValueError):
            return None
        return gap

    @property
    def starts_after(self) -> datetime | None:
        """The last moment the archive still holds before the gap; None when unknown."""
        return datetime.fromisoformat(self.since) if self.since else None

    def describe(self) -> str:
        after = f"after {_shown(self.since)}" if self.since else "at an unknown time"
        return (
            f"{self.first} to {self.last} ({self.segments} segment(s), WAL written {after} "
            f"up to {_shown(self.until)}), given up by {_shown(self.given_up_at)}"
        )


def queue_max() -> int | None:
    """The bound, as `BACKUP_WAL_QUEUE_MAX_BYTES` says, for the fast path (the full one reads
    the settings, which refuse a value that is not a number); None when unset."""
    try:
        limit = int(os.environ.get(QUEUE_MAX_VARIABLE, "").strip())
    except ValueError:
        return None
    return limit if limit > 0 else None


def waiting_bytes(path: Path) -> int:
    """The bytes of `path` and of every segment ready after it: what PostgreSQL keeps until
    they are archived."""
    total = 0
    for segment in [path, *ahead.waiting_after(path, sys.maxsize)]:
        try:
            total += os.stat(segment).st_size
        except OSError:
            continue
    return total


def note_unreachable(spool: Path) -> None:
    ahead.write_whole(spool / UNREACHABLE, f"{time.time()}\n")


def note_stored(spool: Path, path: Path) -> None:
    """The store was reached and holds `path`: no longer unreachable, and the newest segment
    stored (which dates the start of a later gap) is `path`."""
    (spool / UNREACHABLE).unlink(missing_ok=True)
    try:
        finished = os.stat(path).st_mtime
    except OSError:
        return
    ahead.write_whole(spool / LAST_STORED, f"{path.name} {finished}\n")


def recently_unreachable(spool: Path) -> bool:
    try:
        failed_at = float((spool / UNREACHABLE).read_text())
    except (OSError, ValueError):
        return False
    return 0 <= time.time() - failed_at < PROBE_EVERY_S


def over_bound(path: Path, limit: int | None) -> int | None:
    """The bytes waiting, when more than `limit` waits (None otherwise, or without a limit)."""
    if limit is None:
        return None
    waiting = waiting_bytes(path)
    return waiting if waiting > limit else None


def give_up(spool: Path, path: Path) -> Gap:
    """Add `path` (the oldest segment waiting) to the growing gap, which is started when there
    is none; the gap as it now stands."""
    found = os.stat(path)
    now = _utc(time.time())
    gap = pending_gap(spool) or Gap(
        path.name, path.name, 0, 0, _stored_before(spool, path.name), now, now
    )
    gap = replace(
        gap,
        last=path.name,
        segments=gap.segments + 1,
        bytes=gap.bytes + found.st_size,
        until=_utc(found.st_mtime),
        given_up_at=now,
    )
    ahead.write_whole(spool / PENDING_GAP, gap.to_json())
    return gap


def pending_gap(spool: Path) -> Gap | None:
    """The gap growing in the spool; None when there is none (or it is damaged: a new one
    starts, and the archive's listing still shows the hole to a recovery)."""
    try:
        return Gap.parsed((spool / PENDING_GAP).read_text())
    except OSError:
        return None


def gap_recorded(spool: Path) -> None:
    (spool / PENDING_GAP).unlink(missing_ok=True)


def given_up_at_once(arguments: list[str]) -> bool:
    """The fast path: `wal-push ARGUMENTS` answers 0 without trying the store when a push
    failed to reach it moments ago and more than the bound waits (the segment given up)."""
    given, target = ahead.push_arguments(arguments)
    limit = queue_max()
    if given is None or not ahead.is_segment_name(os.path.basename(given)) or limit is None:
        return False
    found = ahead.spool_dir(target)
    if found is None or not recently_unreachable(spool := Path(found)):
        return False
    path = Path(given)
    waiting = over_bound(path, limit)
    if waiting is None:
        return False
    try:
        give_up(spool, path)
    except OSError:
        return False
    print(f"backup-pipelines wal-push: {given_up_line(path.name, waiting)}", file=sys.stderr)
    return True


def given_up_line(name: str, waiting: int) -> str:
    return (
        f"warning: the WAL archive cannot be reached and "
        f"{waiting} bytes of WAL wait (over {QUEUE_MAX_VARIABLE}): {name} is given up, not "
        "archived; point-in-time recovery cannot pass it until a new base backup"
    )


def _stored_before(spool: Path, first: str) -> str | None:
    """When PostgreSQL finished the newest segment stored before `first`, if known."""
    try:
        name, finished = (spool / LAST_STORED).read_text().split()
        return _utc(float(finished)) if name < first else None
    except (OSError, ValueError):
        return None


def _shown(moment: str) -> str:
    """A recorded time as the contract writes times (UTC, to the second, a `Z`)."""
    return datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")
