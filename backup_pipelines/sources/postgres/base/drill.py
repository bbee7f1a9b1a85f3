"""Proving a base backup and its archive restorable: a deep check, and a drill that recovers a
throwaway cluster through the whole archive.

The deep check unpacks the tar into scratch space and runs
`pg_verifybackup` against the backup manifest inside it (every file's
checksum), and checks that the archive holds the WAL from start to stop.

The drill starts the unpacked cluster as the `postgres` OS user (when we are
root) on a socket in its own directory (no TCP, trust only there), with
`restore_command` = `wal-fetch`, archiving off, and no preloaded libraries
of the backed-up server: it replays the archive to its end and promotes.
A `wal-fetch` that must stop recovery (a damaged or missing file) makes the
server exit, and the server's last words become the drill's problem. The
tables of every database are then compared with those the catalog listed
as the backup began: a missing table is a problem. Their rows are counted
here, on the throwaway cluster, and reported (the backup itself only
recorded the planner's estimates: counting would read the whole production
cluster once more).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from backup_pipelines.errors import BackupError, IntegrityError
from backup_pipelines.processes import ToolFailed, free_loopback_port, run_tool
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.sources.postgres.base.basebackup import WalRange, lsn_value
from backup_pipelines.sources.postgres.base.recovery import (
    conf_value,
    configure_recovery,
    hand_to_server_user,
    recovery_settings,
    unpack_base,
)
from backup_pipelines.sources.postgres.cluster import Cluster, row_counts
from backup_pipelines.sources.postgres.scratch import (
    SERVER_USER,
    major_version,
    server_bin_dir,
)
from backup_pipelines.sources.source import DrillResult, Log
from backup_pipelines.storage.streams import PROGRESS_EVERY_S
from backup_pipelines.wal.archive import WalArchive
from backup_pipelines.wal.names import segment_start

RECOVERY_TIMEOUT_S = 6 * 3600
POLL_S = 1.0
LOG_TAIL_BYTES = 1500


def verify_base(reader: SnapshotReader, archive: WalArchive) -> list[str]:
    """pg_verifybackup over the unpacked tar, and the WAL from start to stop in the archive."""
    stats = reader.snapshot.manifest.stats
    try:
        missing = WalRange.of(reader.snapshot).missing_from(archive)
    except IntegrityError as exc:
        return [str(exc)]
    if missing:
        return [f"{archive.describe()} lacks WAL the base backup needs: {', '.join(missing[:3])}"]
    bin_dir = server_bin_dir(major_version(stats.get("server_version")))
    with _scratch(reader.work_dir) as home:
        data = home / "data"
        data.mkdir()
        try:
            unpack_base(reader, data)
            run_tool(
                [str(bin_dir / "pg_verifybackup"), "--no-parse-wal", "--quiet", str(data)],
                label=f"pg_verifybackup of {reader.where}",
            )
        except BackupError as exc:
            return [str(exc)]
    return []


@contextlib.contextmanager
def _scratch(parent: Path | None = None) -> Iterator[Path]:
    """A private directory (production data), the server's OS user's when we are root."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="backup-drill-postgres-base-", dir=parent))
    try:
        if os.geteuid() == 0:
            shutil.chown(home, SERVER_USER)
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def drill_base(reader: SnapshotReader, archive: WalArchive, log: Log) -> DrillResult:
    stats = reader.snapshot.manifest.stats
    segment_bytes = WalRange.of(reader.snapshot).segment_bytes
    bin_dir = server_bin_dir(major_version(stats.get("server_version")))
    with _scratch() as home:
        data, port = home / "data", free_loopback_port()
        data.mkdir()
        log(f"unpacking {reader.where} into a scratch cluster")
        unpack_base(reader, data)
        (home / "pg_hba.conf").write_text("local all all trust\n")
        settings = recovery_settings(archive.source, None, keep_archiving=False) | {
            "port": str(port),
            "listen_addresses": "''",
            "unix_socket_directories": conf_value(str(home)),
            "hba_file": conf_value(str(home / "pg_hba.conf")),
            "hot_standby": "off",
            "shared_preload_libraries": "''",
            "fsync": "off",
        }
        configure_recovery(data, settings, f"backup-pipelines drill of {reader.where}")
        hand_to_server_user(data)
        cluster = Cluster(f"host={home} port={port} user=postgres dbname=postgres")
        with _running(bin_dir, data, home / "server.log"):
            log(f"recovering through {archive.describe()} to its end")
            _wait_for_promotion(cluster, data, home / "server.log", log)
            return _compare(cluster, stats, segment_bytes, archive, log)


@contextlib.contextmanager
def _running(bin_dir: Path, data: Path, server_log: Path) -> Iterator[None]:
    """The scratch server, started without waiting (recovery may take hours) and stopped."""
    user = SERVER_USER if os.geteuid() == 0 else None

    def pg_ctl(*args: str) -> None:
        command = [str(bin_dir / "pg_ctl"), "-D", str(data), *args]
        label = f"pg_ctl {args[-1]} of the drill's cluster"
        run_tool(command, label=label, user=user, cwd=Path("/"))

    try:
        pg_ctl("-l", str(server_log), "-W", "start")
    except ToolFailed as exc:
        raise BackupError(f"{exc}; its log: {_tail(server_log)}") from None
    try:
        yield
    finally:
        with contextlib.suppress(ToolFailed):
            pg_ctl("-m", "immediate", "stop")


def _wait_for_promotion(cluster: Cluster, data: Path, server_log: Path, log: Log) -> None:
    """Until the server accepts connections out of recovery; `BackupError` with the server's
    last words when it stops (a recovery that had to stop) or takes too long."""
    started = time.monotonic()
    next_report = started + PROGRESS_EVERY_S
    while time.monotonic() - started < RECOVERY_TIMEOUT_S:
        time.sleep(POLL_S)
        try:
            with cluster.connect() as connection:
                if not connection.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except (BackupError, psycopg.Error):
            pass
        if not (data / "postmaster.pid").exists():
            raise BackupError(f"recovery stopped: {_tail(server_log)}")
        if time.monotonic() >= next_report:
            log(f"still recovering after {time.monotonic() - started:.0f} s")
            next_report = time.monotonic() + PROGRESS_EVERY_S
    raise BackupError(f"recovery took longer than {RECOVERY_TIMEOUT_S} s: {_tail(server_log)}")


def _tail(path: Path) -> str:
    """The end of the server's log, on one line."""
    try:
        with path.open("rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - LOG_TAIL_BYTES))
            return " ".join(stream.read().decode("utf-8", "replace").split())
    except OSError:
        return "(no log)"


def _compare(
    cluster: Cluster, stats: dict[str, Any], segment_bytes: int, archive: WalArchive, log: Log
) -> DrillResult:
    problems, figures = [], {}
    with cluster.connect() as connection:
        reached = str(connection.execute("SELECT pg_current_wal_lsn()").fetchone()[0])
    newest = archive.newest_segment()
    if newest is not None and lsn_value(reached) < segment_start(newest, segment_bytes):
        problems.append(
            f"recovery ended at {reached}, before {newest}, the newest WAL in the archive"
        )
    for database, listed in (stats.get("databases") or {}).items():
        before = listed.get("row_estimates") or listed.get("row_counts") or {}
        try:
            with cluster.connect(database) as connection:
                after = row_counts(connection)
        except BackupError as exc:
            problems.append(f"{database}: {exc}")
            continue
        gone = sorted(set(before) - set(after))
        if gone:
            problems.append(f"{database}: tables missing after recovery: {', '.join(gone[:5])}")
        figures[database] = {"rows": sum(after.values()), "tables": len(after)}
    log(f"recovered to {reached}; {sum(f['rows'] for f in figures.values())} rows")
    return DrillResult(
        problems,
        figures={"recovered_to_lsn": reached, "databases": figures},
    )
