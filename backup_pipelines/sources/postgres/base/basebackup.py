"""Taking a base backup: `pg_basebackup` as one tar stream into the pipeline, checked against the
WAL archive before it counts.

`pg_basebackup -D - -Ft -X none` writes the whole cluster (its backup
manifest included) to stdout, so nothing but the compressed snapshot lands
in staging. The stream says where the backup starts (its first member,
`backup_label`) and where it stops (the `WAL-Ranges` at the end of its last,
`backup_manifest`): both are read as the bytes pass (`StreamEnds`). The
stream carries no WAL: the server waits until the WAL the backup needs is
archived, and the snapshot counts only once the archive proves it holds
it, the `.backup` file PostgreSQL writes at the stop and every segment
from start to stop. A server not archiving into this store fails here,
naming what to set, instead of leaving a base backup that cannot be
restored. Nothing is read back from the archive, so a backup host with
only the age recipients (no identity) takes base backups too.

From a hot standby (`standby_dsn`), pg_basebackup reads the standby, while
the primary still archives the WAL and is the one asked about archiving.
A standby's backup writes no `.backup` file and waits for no archiving, so
here the primary is made to finish the segment holding the stop position
(`pg_switch_wal`, when the role may) and the backup counts once the
archive holds every segment from start to stop, as pgBackRest's
`backup-standby` and Barman do.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from backup_pipelines.errors import BackupError, ConfigurationError, IntegrityError
from backup_pipelines.processes import ToolFailed
from backup_pipelines.snapshot.manifest import utc_now
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.snapshot.store import StoredSnapshot
from backup_pipelines.sources.postgres.cluster import Cluster, row_estimates
from backup_pipelines.sources.source import Log
from backup_pipelines.storage.streams import PROGRESS_EVERY_S, human_bytes
from backup_pipelines.wal.archive import WalArchive
from backup_pipelines.wal.names import SEGMENT, segment_name, segment_number, segment_position

BASE_ARTIFACT = "base.tar"
SETUP_HINT = (
    "set archive_mode = on and archive_command = 'backup-pipelines wal-push %p' (with this "
    "store's BACKUP_* settings in the server's environment), then restart the server; see "
    'the README\'s "Point-in-time recovery"'
)
WATCH_EVERY_S = 5.0
WAIT_POLL_S = 1.0
TAR_BLOCK = 512
HEAD_BYTES = 8 * TAR_BLOCK
TAIL_BYTES = 64 << 10
START_LOCATION = re.compile(
    r"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)$", re.MULTILINE
)
START_TIMELINE = re.compile(r"^START TIMELINE: (\d+)$", re.MULTILINE)
LSN = r"([0-9A-F]+/[0-9A-F]+)"
WAL_RANGE = re.compile(rf'\{{ "Timeline": (\d+), "Start-LSN": "{LSN}", "End-LSN": "{LSN}" \}}')


class StreamEnds:
    """The first and last bytes of a stream, watched as it passes (`add_command(watch=)`)."""

    def __init__(self) -> None:
        self.head = b""
        self.tail = bytearray()

    def __call__(self, chunk: memoryview) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += bytes(chunk[: HEAD_BYTES - len(self.head)])
        self.tail += chunk[-TAIL_BYTES:]
        del self.tail[:-TAIL_BYTES]

    def backup_label(self) -> str:
        """The tar's first member, which pg_basebackup always sends first."""
        name = self.head[:100].split(b"\0", 1)[0]
        size_field = self.head[124:136].split(b"\0", 1)[0].strip() or b"0"
        if name != b"backup_label":
            raise BackupError("pg_basebackup's tar does not start with backup_label")
        size = int(size_field, 8)
        return self.head[TAR_BLOCK : TAR_BLOCK + size].decode("utf-8", "replace")

    def wal_ranges(self) -> list[tuple[int, str, str]]:
        """(timeline, start LSN, end LSN) from the end of the tar's backup_manifest."""
        text = self.tail.decode("utf-8", "replace")
        return [(int(t), start, end) for t, start, end in WAL_RANGE.findall(text)]


def lsn_value(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def archiving_settings(cluster: Cluster) -> dict[str, Any]:
    """What the server says of its archiving, and its WAL segment size."""
    with cluster.connect() as connection:
        row = connection.execute(
            "SELECT current_setting('archive_mode'), current_setting('archive_command'),"
            " current_setting('wal_level'), (SELECT setting::bigint FROM pg_settings"
            " WHERE name = 'wal_segment_size'), last_failed_wal, last_failed_time,"
            " last_archived_time, now() FROM pg_stat_archiver"
        ).fetchone()
    mode, command, level, segment, failed_wal, failed_at, archived_at, now = row
    return {
        "archive_mode": mode,
        "archive_command": command,
        "wal_level": level,
        "wal_segment_size": int(segment),
        "failing": failed_at is not None and (archived_at is None or failed_at > archived_at),
        "last_failed_wal": failed_wal,
        "last_failed_time": failed_at,
        "now": now,
    }


@contextlib.contextmanager
def watching_the_archiver(cluster: Cluster, label: str, session_on: Cluster) -> Iterator[list[str]]:
    """While the block runs, ask the server (`cluster`, which archives) every few seconds
    whether archiving fails; if it does, end our base backup's session on `session_on`
    (pg_basebackup would wait for the archive forever) and say why in the list yielded."""
    stalled: list[str] = []
    done = threading.Event()
    since = archiving_settings(cluster)["now"]

    def watch() -> None:
        while not done.wait(WATCH_EVERY_S):
            with contextlib.suppress(BackupError, psycopg.Error):
                found = archiving_settings(cluster)
                if found["failing"] and found["last_failed_time"] > since:
                    stalled.append(
                        f"PostgreSQL at {cluster.where} fails to archive its WAL (last failure: "
                        f"{found['last_failed_wal']}), so the base backup cannot complete: its "
                        "log says why wal-push fails"
                    )
                    _end_session(session_on, label)
                    return

    watcher = threading.Thread(target=watch, name="archiver-watch", daemon=True)
    watcher.start()
    try:
        yield stalled
    finally:
        done.set()
        watcher.join()


def _end_session(cluster: Cluster, label: str) -> None:
    with cluster.connect() as connection:
        connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE backend_type = 'walsender' AND strpos(query, %s) > 0",
            [label],
        )


def check_archiving(cluster: Cluster) -> int:
    """Refuse a base backup the archive could not complete; the WAL segment size."""
    found = archiving_settings(cluster)
    where = f"PostgreSQL at {cluster.where}"
    if found["archive_mode"] == "off" or found["archive_command"] in ("", "(disabled)"):
        raise ConfigurationError(f"{where} does not archive its WAL: {SETUP_HINT}")
    if found["wal_level"] == "minimal":
        raise ConfigurationError(f"{where} has wal_level = minimal: set it to replica")
    if found["failing"]:
        raise ConfigurationError(
            f"{where} fails to archive its WAL (last failure: {found['last_failed_wal']}): its "
            "log says why; a base backup would wait for it forever"
        )
    return found["wal_segment_size"]


def base_backup(
    staged: StagedSnapshot,
    primary: Cluster,
    archive: WalArchive,
    log: Log,
    standby: Cluster | None = None,
    archive_wait_s: float = 900,
) -> None:
    """Stage `base.tar` of `primary` (read from `standby` when given) and record what recovery
    from it needs in the stats. From a standby, the backup waits at most `archive_wait_s` for
    its WAL to reach the archive."""
    segment_bytes = check_archiving(primary)
    read = standby or primary
    tables = catalog_tables(read)
    ends, label = StreamEnds(), f"backup-pipelines {staged.snapshot_id}"
    of = f"the standby {read.where} of {primary.where}" if standby else primary.where
    log(f"base backup of {of} (pg_basebackup, tar to the pipeline)")
    with watching_the_archiver(primary, label, read) as stalled:
        try:
            entry = staged.add_command(
                BASE_ARTIFACT,
                [
                    "pg_basebackup",
                    "--dbname",
                    read.conninfo(),
                    "--pgdata=-",
                    "--format=tar",
                    "--wal-method=none",
                    "--checkpoint=fast",
                    f"--label={label}",
                ],
                label=f"pg_basebackup of {read.where}",
                expected_bytes=sum(db.size_bytes for db in read.list_databases()),
                env=read.child_env(),
                expect_prefix=b"backup_label",
                secrets=read.secrets(),
                watch=ends,
            )
        except ToolFailed:
            if stalled:
                raise ConfigurationError(stalled[0]) from None
            raise
    stopped_by = utc_now()
    positions = backup_positions(ends, segment_bytes)
    if standby is None:
        check_archived(archive, positions, segment_bytes)
    else:
        wait_until_archived(primary, archive, positions, segment_bytes, archive_wait_s, log)
    staged.stats |= positions | {
        "stop_time": stopped_by.isoformat(),
        "wal_segment_size": segment_bytes,
        "archive": archive.source,
        "server": read.where,
        "server_version": read.server_version(),
        "cluster_bytes": staged.plain_bytes[entry.name],
        "databases": tables,
    }
    if standby is not None:
        staged.stats["standby_of"] = primary.where
    log(
        f"base backup from {positions['start_lsn']} to {positions['stop_lsn']} on timeline "
        f"{positions['timeline']}: {human_bytes(staged.plain_bytes[entry.name])}, its WAL "
        "archived"
    )


def wait_until_archived(
    primary: Cluster,
    archive: WalArchive,
    positions: dict[str, Any],
    segment_bytes: int,
    limit_s: float,
    log: Log,
) -> None:
    """A standby's backup: the primary finishes the segment holding the stop position, then
    every segment from start to stop must reach the archive within `limit_s`; a primary
    whose archiving fails meanwhile ends the wait at once."""
    start, stop = positions["start_wal"], positions["stop_wal"]
    since = archiving_settings(primary)["now"]
    _finish_segment(primary, stop, log)
    began = time.monotonic()
    next_report = began + PROGRESS_EVERY_S
    while missing := archive.missing(start, stop, segment_bytes):
        waited = time.monotonic() - began
        found = archiving_settings(primary)
        if found["failing"] and found["last_failed_time"] > since:
            raise ConfigurationError(
                f"PostgreSQL at {primary.where} fails to archive its WAL (last failure: "
                f"{found['last_failed_wal']}), so the base backup from the standby cannot "
                "count: its log says why wal-push fails"
            )
        if waited > limit_s:
            raise BackupError(
                f"the WAL this base backup needs did not reach {archive.describe()} within "
                f"{limit_s:.0f} s (missing {', '.join(missing[:3])}): is the primary "
                f"{primary.where} archiving with this store's wal-push? {SETUP_HINT}"
            )
        if time.monotonic() >= next_report:
            log(f"waiting {waited:.0f} s for the primary to archive {', '.join(missing[:3])}")
            next_report += PROGRESS_EVERY_S
        time.sleep(WAIT_POLL_S)


def _finish_segment(primary: Cluster, stop: str, log: Log) -> None:
    """`pg_switch_wal` on the primary while it still writes the segment `stop` (or an
    earlier one); a role that may not call it waits for the primary's archive_timeout."""
    try:
        with primary.connect() as connection:
            [current] = connection.execute(
                "SELECT pg_walfile_name(pg_current_wal_lsn())"
            ).fetchone()
            if segment_position(current) <= segment_position(stop):
                connection.execute("SELECT pg_switch_wal()")
    except psycopg.errors.InsufficientPrivilege:
        log(
            f"the role may not switch {primary.where}'s WAL segment: the backup waits for the "
            "primary to finish it (archive_timeout)"
        )


def backup_positions(ends: StreamEnds, segment_bytes: int) -> dict[str, Any]:
    """Where the backup starts and stops, by LSN and by WAL file, and its timeline."""
    label = ends.backup_label()
    start, timeline = START_LOCATION.search(label), START_TIMELINE.search(label)
    ranges = ends.wal_ranges()
    if start is None or timeline is None or not ranges:
        raise BackupError("pg_basebackup's tar lacks its start or stop position")
    stop_timeline, _, stop_lsn = ranges[-1]
    return {
        "start_lsn": start.group(1),
        "start_wal": start.group(2),
        "stop_lsn": stop_lsn,
        "stop_wal": segment_name(
            stop_timeline, (lsn_value(stop_lsn) - 1) // segment_bytes, segment_bytes
        ),
        "timeline": int(timeline.group(1)),
    }


@dataclass(frozen=True)
class WalRange:
    """What a base backup needs of the archive: its first and last segment, of which size."""

    start: str
    stop: str
    segment_bytes: int

    @classmethod
    def of(cls, snapshot: StoredSnapshot) -> WalRange:
        """From the manifest's stats, which are read back from the store: checked."""
        stats = snapshot.manifest.stats
        start, stop, size = (
            stats.get("start_wal"),
            stats.get("stop_wal"),
            stats.get("wal_segment_size"),
        )
        if not (
            isinstance(start, str)
            and isinstance(stop, str)
            and SEGMENT.fullmatch(start)
            and SEGMENT.fullmatch(stop)
            and isinstance(size, int)
            and size > 0
            and size & (size - 1) == 0
        ):
            raise IntegrityError(
                f"{snapshot.source}/{snapshot.snapshot_id}: its manifest lacks the WAL range a "
                "base backup records (start_wal, stop_wal, wal_segment_size)"
            )
        return cls(start, stop, size)

    def missing_from(self, archive: WalArchive) -> list[str]:
        return archive.missing(self.start, self.stop, self.segment_bytes)


def check_archived(archive: WalArchive, positions: dict[str, Any], segment_bytes: int) -> None:
    """The archive holds the backup's `.backup` file and every segment from start to stop."""
    start_offset = lsn_value(positions["start_lsn"]) % segment_bytes
    history = f"{positions['start_wal']}.{start_offset:08X}.backup"
    missing = [] if archive.find(history) else [history]
    missing += archive.missing(positions["start_wal"], positions["stop_wal"], segment_bytes)
    if missing:
        raise BackupError(
            f"the WAL this base backup needs is not in {archive.describe()} (missing "
            f"{', '.join(missing[:3])}): is archive_command this store's wal-push? {SETUP_HINT}"
        )


def segments_behind(cluster: Cluster, newest: str | None) -> int | None:
    """Finished segments the server has and the archive (newest: `newest`) lacks; None when
    unknown (no answer, or another timeline). The segment being written is not finished:
    the server names it (`pg_walfile_name`, the previous one right after a switch) at most
    one past the newest archived."""
    try:
        with cluster.connect() as connection:
            current, size = connection.execute(
                "SELECT pg_walfile_name(pg_current_wal_lsn()), setting::bigint FROM pg_settings"
                " WHERE name = 'wal_segment_size'"
            ).fetchone()
    except (BackupError, psycopg.Error):
        return None
    if newest is None or current[:8] != newest[:8]:
        return None
    return max(0, segment_number(current, size) - segment_number(newest, size) - 1)


def catalog_tables(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Every database's tables with the planner's row estimates, as the backup starts: what a
    drill finds missing or not. From the catalog alone: counting rows would read the whole
    cluster once more on top of the backup."""
    return {
        database.name: {"row_estimates": _estimates(cluster, database.name)}
        for database in cluster.list_databases()
    }


def _estimates(cluster: Cluster, database: str) -> dict[str, int]:
    with cluster.connect(database) as connection:
        return row_estimates(connection)
