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
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
"""At most this many waiting segments (1 GiB of 16 MiB ones) pushed ahead by one command."""
NAME_SHOWN = 64
"""Of a WAL name as given, what an audit record keeps (a real one has at most 40 characters)."""


def push(services: Services, path: Path, target: str | None, warn: Log) -> None:
    """Store the WAL file at `path`, and push ahead the segments waiting after it
    (`wal/ahead.py`), several at once. Compressed in the system's temporary directory, which
    the server's OS user can write (the staging area may be another user's). Only the failure
    of `path`'s own push is this command's: one pushed ahead is pushed again when asked for.
    When the store cannot be reached and more WAL waits than `BACKUP_WAL_QUEUE_MAX_BYTES`,
    `path` is given up instead (`wal/queue.py`), and `warn` says so."""
    archive = WalArchive(services.store.backend, wal_archive_name(target))
    spool = ahead.spool_dir(target)
    with failure_audited(services, "wal-push", archive.source, path.name):
        try:
            _push_with_those_waiting(services, archive, spool, path)
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


def _push_with_those_waiting(
    services: Services, archive: WalArchive, spool: Path | None, path: Path
) -> None:
    """`path` stored; the segments waiting after it pushed at the same time, and marked in
    `spool` once the archive's listing shows them. Those not yet started when `path`'s push
    fails are not tried."""
    waiting = ahead.waiting_after(path, PUSHED_AHEAD) if spool is not None else []

    def store(segment: Path) -> ArchivedFile:
        return archive.push(segment, services.staging.recipients, Path(tempfile.gettempdir()))

    def store_ahead(segment: Path) -> tuple[Path, str, ArchivedFile]:
        before = ahead.identity(segment)  # taken before the file is read for the push
        return segment, before, store(segment)

    with ThreadPoolExecutor(max_workers=pushers()) as pool:
        own = pool.submit(store, path)
        later = [pool.submit(store_ahead, segment) for segment in waiting]
        try:
            own.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    _mark_pushed_ahead(archive, spool, [f.result() for f in later if f.exception() is None])


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
    can; the events that waited in the spool's outbox sent."""
    gap = queue.pending_gap(spool)
    if gap is None:
        return
    archive.record_gap(gap)
    queue.gap_recorded(spool)
    _spool_events(services, spool).flush()


def _spool_events(services: Services, spool: Path) -> EventPublisher:
    """Events of `wal-push` wait in the spool (the server's OS user's), not the store's."""
    from backup_pipelines.events.outbox import EventPublisher  # pika only where it is used

    return EventPublisher(services.shared.rabbitmq_url.get_secret_value(), spool / OUTBOX)


def pushers() -> int:
    """Segments pushed at once, one per core and at least two: each is read, compressed and
    sent, so one's wait for the store overlaps another's compression."""
    return max(2, len(os.sched_getaffinity(0)))


def _mark_pushed_ahead(
    archive: WalArchive, spool: Path | None, pushed: list[tuple[Path, str, ArchivedFile]]
) -> None:
    """A marker for each segment pushed ahead that the archive's listing shows: checked in
    the store, not assumed from a push that returned."""
    if spool is None or not pushed:
        return
    with contextlib.suppress(BackupError, OSError):  # no marker: pushed when asked for
        listed = set(archive.holding([held for _, _, held in pushed]))
        for segment, before, held in pushed:
            if held in listed:
                ahead.mark_stored(spool, segment, before, held.sha256)


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
