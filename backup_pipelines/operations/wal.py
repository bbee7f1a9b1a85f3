"""wal-push and wal-fetch: one WAL file into the archive (`wal/archive.py`), or back out.

PostgreSQL runs them once per WAL file (every minute or faster), so they
need the shared settings' services alone (`services.py`), never the sources
or Dagster. A file is pushed to the primary store alone (the copy stores get
it from `copy`, so one that is down never holds a segment back); a fetch
asks the copy stores, in their order, when the primary cannot be reached.
Only failures leave an audit record: a record per WAL file would drown the
trail.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from backup_pipelines.errors import BackupError, StorageFull, StoreError
from backup_pipelines.events.messages import FAILED, event_body
from backup_pipelines.operations.caller import Log
from backup_pipelines.records.audit import Entry, Operation
from backup_pipelines.services import Services
from backup_pipelines.snapshot.encryption import load_identities
from backup_pipelines.storage.layout import OUTBOX, wal_archive_name
from backup_pipelines.wal import ahead, queue
from backup_pipelines.wal.archive import ArchivedFile, WalArchive

if TYPE_CHECKING:
    from backup_pipelines.events.outbox import EventPublisher

PUSHED_AHEAD = 64
"""At most this many waiting segments (1 GiB of 16 MiB ones) in one batch of the helper."""
NAME_SHOWN = 64
"""Of a WAL name as given, what an audit record keeps (a real one has at most 40 characters)."""


def push(services: Services, path: Path, target: str | None, warn: Log) -> None:
    """Store the WAL file at `path`, having started the helper that pushes the segments
    waiting after it (`wal/ahead.py`) when some wait. Compressed in the system's temporary
    directory, which the server's OS user can write (the staging area may be another user's).
    When the store cannot be reached and more WAL waits than `BACKUP_WAL_QUEUE_MAX_BYTES`,
    `path` is given up instead (`wal/queue.py`), and `warn` says so."""
    archive = WalArchive(services.store.backend, wal_archive_name(target))
    spool = _spool(target)
    if spool is not None and _helper_wanted(spool, path):
        start_helper(spool, path, target)
    with failure_audited(services, "wal-push", archive.source, path.name):
        try:
            _store(services, archive, path)
        except (StoreError, StorageFull):
            if spool is None:
                raise
            queue.note_unreachable(spool)
            waiting = queue.over_bound(path, services.shared.wal_queue_max_bytes)
            if waiting is None:
                raise
            _give_up(services, archive, spool, path, waiting, warn)
            return
    if spool is not None:
        queue.note_stored(spool, path)
        _record_pending_gap(services, archive, spool)


def _spool(target: str | None) -> Path | None:
    found = ahead.spool_dir(target)
    return Path(found) if found is not None else None


def _helper_wanted(spool: Path, path: Path) -> bool:
    """Segments wait after `path`, and the store did not just fail."""
    return bool(ahead.waiting_after(path, 1)) and not queue.recently_unreachable(spool)


def _store(
    services: Services,
    archive: WalArchive,
    segment: Path,
    threads: int = -1,
    listed: set[ArchivedFile] | None = None,
) -> ArchivedFile:
    scratch = Path(ahead.temp_dir())
    return archive.push(segment, services.staging.recipients, scratch, threads, listed)


def start_helper(spool: Path, path: Path, target: str | None) -> None:
    """`wal-push --ahead FD PATH` in a session of its own, outliving this command: it pushes
    what waits after `path` while this command stores `path` and returns. It is handed the
    spool's lock already taken (none is started while another helper holds it). Its output
    goes nowhere: a segment it could not push is pushed again when PostgreSQL asks for it."""
    lock = ahead.claim_helper_lock(spool)
    if lock is None:
        return
    try:
        subprocess.Popen(
            [sys.executable, "-m", "backup_pipelines.cli", "wal-push", "--ahead", str(lock)]
            + (["--target", target] if target else [])
            + [str(path)],
            start_new_session=True,
            pass_fds=(lock,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(lock)  # the helper's copy keeps the lock


def push_ahead(services: Services, path: Path, target: str | None, lock: int) -> None:
    """The helper, holding the spool's lock (`lock`): the segments ready after `path`,
    oldest first, several at once, each marked once the archive's listing shows it; again
    for those that became ready meanwhile, until none is left. The first failure ends it
    (what was not marked is pushed when asked for)."""
    spool = _spool(target)
    if spool is None:
        return
    ahead.hold_helper_lock(lock)
    archive = WalArchive(services.store.backend, wal_archive_name(target))
    tried: set[str] = set()
    with ThreadPoolExecutor(pushers()) as pool:
        while batch := _unmarked(spool, path, tried):
            tried.update(segment.name for segment in batch)
            listed = archive.listing([segment.name for segment in batch])
            pushing = [pool.submit(_store_ahead, services, archive, s, listed) for s in batch]
            try:
                for done in as_completed(pushing):
                    segment, before, held = done.result()
                    if archive.holding([held]):
                        ahead.mark_stored(spool, segment, before, held.sha256)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def _unmarked(spool: Path, path: Path, tried: set[str]) -> list[Path]:
    """The segments ready after `path` that have no marker and were not tried yet."""
    waiting = map(Path, ahead.waiting_after(path, PUSHED_AHEAD + len(tried)))
    fresh = [s for s in waiting if s.name not in tried and not (spool / s.name).exists()]
    return fresh[:PUSHED_AHEAD]


def _store_ahead(
    services: Services, archive: WalArchive, segment: Path, listed: set[ArchivedFile]
) -> tuple[Path, str, ArchivedFile]:
    """One segment of the helper's batch: compressed on this thread alone (the pool has one
    per core), checked against the batch's listing."""
    before = ahead.identity(segment)  # taken before the file is read for the push
    return segment, before, _store(services, archive, segment, 0, listed)


def pushers() -> int:
    """Segments the helper pushes at once, one per core and at least two: each is read,
    compressed and sent, so one's wait for the store overlaps another's compression."""
    return max(2, len(os.sched_getaffinity(0)))


def _give_up(
    services: Services,
    archive: WalArchive,
    spool: Path,
    path: Path,
    waiting: int,
    warn: Log,
) -> None:
    """`path` added to the gap in the spool; the gap's first segment announced
    (`backup.failed`, from the spool's own outbox: the store is what cannot be reached)."""
    gap = queue.give_up(spool, path)
    warn(queue.given_up_line(path.name, waiting))
    if gap.segments == 1:
        error = (
            f"{archive.describe()} cannot be reached and {waiting} bytes of WAL wait, over "
            f"{queue.QUEUE_MAX_VARIABLE}: giving up the oldest waiting segments from "
            f"{gap.first} so PostgreSQL's disk does not fill; point-in-time recovery cannot "
            "pass them until a new base backup"
        )
        event = event_body(FAILED, archive.source, None, error=error)
        _spool_events(services, spool).publish(event)


def _record_pending_gap(services: Services, archive: WalArchive, spool: Path) -> None:
    """The gap given up while the store could not be reached, written into it now that it
    can; the events that waited in the spool's outbox sent. Failing, it waits for the next
    push: this one's segment is stored."""
    gap = queue.pending_gap(spool)
    if gap is None:
        return
    with contextlib.suppress(BackupError, OSError):
        archive.record_gap(gap)
        queue.gap_recorded(spool)
    _spool_events(services, spool).flush()


def _spool_events(services: Services, spool: Path) -> EventPublisher:
    """Events of `wal-push` wait in the spool (the server's OS user's), not the store's, and
    so do their notifications (which name no last snapshot: the store is what is gone)."""
    from backup_pipelines.events.outbox import EventPublisher  # pika only where it is used

    configured = services.notifier()
    notifier = configured.waiting_in(spool / OUTBOX) if configured else None
    return EventPublisher(services.shared.rabbitmq_url.get_secret_value(), spool / OUTBOX, notifier)


def fetch(services: Services, name: str, destination: Path, target: str | None, warn: Log) -> bool:
    """Write the archived `name` to `destination`; False when the archive does not hold it.
    The identity file is read only for an encrypted file. When the primary store cannot be
    reached, the copy stores answer in their order (`warn` says which)."""
    identities = partial(load_identities, services.shared.age_identity_file)
    archive_name = wal_archive_name(target)
    with failure_audited(services, "wal-fetch", archive_name, name):
        try:
            return WalArchive(services.store.backend, archive_name).fetch(
                name, destination, identities
            )
        except (StoreError, StorageFull) as exc:
            unreachable = exc
        answered = []
        for spec in services.stores[1:]:
            copy = WalArchive(services.on_store(spec.name).store.backend, archive_name)
            try:
                held = copy.fetch(name, destination, identities)
            except (StoreError, StorageFull):
                continue
            answered.append(spec.name)
            if held:
                warn(
                    f"{services.store.describe()} cannot be reached: {name} came from the copy "
                    f"store {spec.name}"
                )
                return True
        if not answered:
            raise unreachable
        warn(f"{name} is in none of the copy stores that answered ({', '.join(answered)})")
        return False  # the archive's end, as far as the copies reach


@contextmanager
def failure_audited(
    services: Services, operation: Operation, archive: str, asked: str
) -> Iterator[None]:
    """An audit record when the block raises (re-raised as is), none when it succeeds."""
    try:
        yield
    except Exception as exc:
        entry = Entry(snapshots=[asked[:NAME_SHOWN]])  # as given: it may not be a WAL name
        entry.failed(str(exc) or type(exc).__name__)
        services.audit.append(operation, entry, via="command", source=archive)
        raise
