"""PostgreSQL point-in-time recovery: physical base backups of the cluster, restored with the
WAL archive (`wal/archive.py`) to any moment since the oldest kept one.

The logical `postgres` source (dumps) restores single databases anywhere;
this one restores the whole cluster to the second, as far as the archive
reaches. Base backups are snapshots like any other (manifest last,
verified, drilled, pruned by the retention rules); the WAL between them
lives beside them in `<root>/postgres_wal/` and is pruned with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from backup_pipelines.errors import (
    BackupError,
    ConfigurationError,
    IntegrityError,
    SnapshotNotFound,
)
from backup_pipelines.settings import SourceSettings, check_postgres_dsn
from backup_pipelines.snapshot.manifest import format_utc
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.snapshot.store import LATEST, SnapshotStore, StoredSnapshot
from backup_pipelines.sources.postgres.base.basebackup import (
    SETUP_HINT,
    WalRange,
    archiving_settings,
    base_backup,
    segments_behind,
)
from backup_pipelines.sources.postgres.base.drill import drill_base, verify_base
from backup_pipelines.sources.postgres.base.promotion import start_and_wait
from backup_pipelines.sources.postgres.base.recovery import (
    configure_recovery,
    hand_to_server_user,
    recovery_settings,
    refuse_occupied,
    replacing,
    start_command,
    unpack_base,
)
from backup_pipelines.sources.postgres.cluster import Cluster
from backup_pipelines.sources.postgres.scratch import major_version
from backup_pipelines.sources.source import (
    ArchiveReach,
    ContinuousArchive,
    DrillResult,
    Log,
    RecoveryPoint,
    RestoreOptions,
    Source,
    backup_seconds,
    cli,
)
from backup_pipelines.storage.layout import wal_archive_of
from backup_pipelines.stores import build_store, primary_store
from backup_pipelines.wal.archive import WalArchive
from backup_pipelines.wal.names import segment_position
from backup_pipelines.wal.queue import Gap

logger = logging.getLogger(__name__)

STORE_CLOCK_SLACK = timedelta(minutes=5)
"""How far the store's clock (S3 keeps whole seconds, its own clock) may trail ours before a
target time after the newest archived WAL file is refused as unreachable."""


ARCHIVING_OFF = (
    "\nIts WAL archiving is off (--keep-archiving keeps it): once it serves as the primary, "
    "turn archiving back on."
)


class PostgresBaseSettings(SourceSettings):
    model_config = SettingsConfigDict(env_prefix="BACKUP_POSTGRES_BASE_")

    backup_dsn: SecretStr = Field(
        SecretStr("postgresql://postgres@localhost:5432/postgres"),
        validation_alias=AliasChoices("BACKUP_POSTGRES_BACKUP_DSN"),
    )
    """The cluster to back up, as the `postgres` source's (a role with REPLICATION)."""
    standby_dsn: SecretStr | None = Field(
        None, validation_alias=AliasChoices("BACKUP_POSTGRES_STANDBY_DSN")
    )
    """A hot standby of that cluster pg_basebackup reads instead (the primary still archives
    the WAL, and is asked about its archiving)."""
    cron: str = "30 1 * * *"
    wal_max_age_s: int = Field(
        900, ge=60, validation_alias=AliasChoices("BACKUP_POSTGRES_WAL_MAX_AGE_S")
    )
    """How old the newest archived WAL file may grow before archiving counts as stalled."""

    _dsn = field_validator("backup_dsn", "standby_dsn")(check_postgres_dsn)


class PostgresBaseRestore(RestoreOptions):
    target: Path = Field(
        description="the data directory to prepare (new or empty; --force replaces it)",
        json_schema_extra=cli("--target-dir", "DIR"),
    )
    target_time: datetime | None = Field(
        None,
        description="recover to this moment (ISO-8601, UTC when no zone is given); default: "
        "the end of the archive",
        json_schema_extra=cli(metavar="T"),
    )
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="start the restored server on this port and wait until it has recovered "
        "and promoted (default: print the command that starts it)",
        json_schema_extra=cli(metavar="PORT"),
    )
    keep_archiving: bool = Field(
        False,
        description="keep the backed-up server's archiving in the restored one (for the "
        "restore that becomes the primary; by default it is off, so a trial restore pushes "
        "no new timeline into the archive)",
    )

    @field_validator("target_time")
    @classmethod
    def _utc_when_naive(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def ends_at(snapshot: StoredSnapshot) -> datetime:
    """When the base backup was consistent at the latest: recovery cannot stop before."""
    stop = snapshot.manifest.stats.get("stop_time")
    try:
        return datetime.fromisoformat(stop) if stop else snapshot.manifest.finished_at
    except (TypeError, ValueError):
        return snapshot.manifest.finished_at


class PostgresBase(Source[PostgresBaseSettings, PostgresBaseRestore]):
    kind = "postgres_base"
    dagster_kind = "postgres"
    description = (
        "A physical base backup of the cluster (pg_basebackup, tar) that, with the WAL "
        "archive, restores the cluster to any moment since."
    )
    system = "The CRM's PostgreSQL cluster, with its WAL archived continuously."
    address_settings = ("backup_dsn",)

    @classmethod
    def plotted(cls, stats: Mapping[str, Any]) -> dict[str, int | float]:
        return {"cluster_bytes": stats.get("cluster_bytes", 0)}

    def cluster(self) -> Cluster:
        return Cluster(self.settings.backup_dsn.get_secret_value())

    def standby(self) -> Cluster | None:
        standby = self.settings.standby_dsn
        return Cluster(standby.get_secret_value()) if standby else None

    def not_configured(self) -> str | None:
        """A server that does not archive its WAL has no point-in-time recovery to back up
        (its schedule skips, saying what to set); an unreachable one fails the run as any."""
        try:
            found = archiving_settings(self.cluster())
        except BackupError:
            return None
        if found["archive_mode"] == "off":
            return f"PostgreSQL at {self.cluster().where} does not archive its WAL: {SETUP_HINT}"
        return None

    def archive(self, store: SnapshotStore) -> WalArchive:
        """The WAL archive in `store` this source recovers from (`postgres_wal[.<target>]`)."""
        return WalArchive(store.backend, wal_archive_of(self.name))

    @property
    def continuous_archive(self) -> ContinuousArchive:
        return WalArchiving(self)

    def dump(self, staged: StagedSnapshot, log: Log) -> None:
        """The archive is the store's this host writes to (it only lists, never reads)."""
        primary = build_store(primary_store(self.shared), self.shared)
        base_backup(
            staged,
            self.cluster(),
            self.archive(primary),
            log,
            standby=self.standby(),
            archive_wait_s=self.settings.wal_max_age_s,
        )

    def deep_verify(self, reader: SnapshotReader) -> list[str]:
        return verify_base(reader, self.archive(reader.store))

    def snapshot_to_restore(
        self, store: SnapshotStore, snapshot_id: str, options: PostgresBaseRestore
    ) -> StoredSnapshot:
        """With a target time, `latest` is the newest base backup consistent before it."""
        moment = options.target_time
        if moment is None:
            return store.find(self.name, snapshot_id)
        if snapshot_id != LATEST:
            snapshot = store.find(self.name, snapshot_id)
            if ends_at(snapshot) > moment:
                raise ConfigurationError(
                    f"{self.name} snapshot {snapshot_id} is consistent only from "
                    f"{format_utc(ends_at(snapshot))}, after --target-time: choose an older "
                    "one, or leave --snapshot out"
                )
            return snapshot
        snapshot = store.newest_complete_at(self.name, moment, ends_at)
        if snapshot is not None:
            return snapshot
        snapshots = store.list_snapshots(self.name)
        oldest = (
            f"; the oldest is consistent from {format_utc(ends_at(snapshots[-1]))}"
            if snapshots
            else ""
        )
        raise SnapshotNotFound(
            f"no {self.name} base backup in {store.describe()} is consistent before "
            f"{format_utc(moment)}{oldest}"
        )

    def recovery_point(self, store: SnapshotStore, moment: datetime) -> RecoveryPoint:
        """The newest base backup consistent before `moment`, and its WAL replayed to exactly
        `moment` when the archive reaches it; else as far as the archive reaches: to the
        moment before WAL given up while the store was down, or to the archive's end."""
        options = PostgresBaseRestore.model_construct(target_time=moment)
        snapshot = self.snapshot_to_restore(store, LATEST, options)
        archive = self.archive(store)
        wal = WalRange.of(snapshot)
        require_wal(snapshot, wal, archive)
        reached, target_time, how = reach_of(snapshot, wal, archive, moment)
        return RecoveryPoint(
            snapshot,
            reached,
            how,
            {"target_time": target_time},
            expected_s=backup_seconds(snapshot) + replay_seconds(snapshot, wal, archive),
        )

    def restore(self, reader: SnapshotReader, options: PostgresBaseRestore, log: Log) -> str:
        archive = self.archive(reader.store)
        refuse_occupied(options.target, options.force)
        check_reachable(reader.snapshot, archive, options.target_time)
        with replacing(options.target) as fresh:
            log(f"unpacking {reader.where} into {options.target}")
            unpack_base(reader, fresh)
            settings = recovery_settings(
                archive.source, options.target_time, options.keep_archiving
            )
            configure_recovery(fresh, settings, f"backup-pipelines restore of {reader.where}")
            hand_to_server_user(fresh)
        major = major_version(reader.snapshot.manifest.stats.get("server_version"))
        until = format_utc(options.target_time) if options.target_time else "the archive's end"
        if options.port is not None:
            start_and_wait(options.target, options.port, major, log)
            return (
                f"restored {reader.where} into {options.target}: recovered from "
                f"{archive.describe()} to {until} and promoted; it serves on port "
                f"{options.port}" + ("" if options.keep_archiving else ARCHIVING_OFF)
            )
        starting = start_command(options.target, major)
        summary = (
            f"restored {reader.where} into {options.target}: when started, it recovers from "
            f"{archive.describe()} to {until} and promotes. Start it with this command's "
            f"BACKUP_* environment (wal-fetch reads the store with it):\n  {starting}"
        )
        return summary + ("" if options.keep_archiving else ARCHIVING_OFF)

    def drill(self, reader: SnapshotReader, log: Log) -> DrillResult:
        """The base backup restored into a throwaway cluster that recovers through the whole
        archive; its tables compared with those the catalog listed when the backup began."""
        try:
            return drill_base(reader, self.archive(reader.store), log)
        except ConfigurationError:
            raise
        except BackupError as exc:
            return DrillResult([str(exc)])

    def forgetting(
        self,
        store: SnapshotStore,
        deleted: Sequence[StoredSnapshot],
        kept: Sequence[StoredSnapshot],
    ) -> Callable[[], None] | None:
        """WAL before the oldest kept base backup's start goes with the base backups."""
        try:
            starts = [WalRange.of(snapshot).start for snapshot in kept]
        except IntegrityError:
            return None  # a kept base backup whose start is unknown: every WAL file stays
        if not starts:
            return None  # no base backup: the WAL is all there is
        oldest = min(starts, key=segment_position)
        archive = self.archive(store)
        going, locked = archive.prune_before(oldest, dry_run=True)
        logger.info(
            "%s: %d WAL file(s) before %s, where the oldest kept base backup starts, go with "
            "them%s",
            archive.source,
            len(going),
            oldest,
            f" ({len(locked)} more once S3 Object Lock lets them)" if locked else "",
        )

        def prune_wal() -> None:
            archive.prune_before(oldest, dry_run=False)

        return prune_wal if going else None


class WalArchiving(ContinuousArchive):
    """The WAL archive as monitoring watches it: how far it reaches, and how many finished
    segments the server still holds."""

    def __init__(self, source: PostgresBase):
        name = wal_archive_of(source.name)
        super().__init__(
            name,
            source.settings.wal_max_age_s,
            description=f"The WAL archive {name} that {source.name} recovers from: PostgreSQL "
            "pushes every WAL file with `backup-pipelines wal-push`.",
        )
        self.source = source

    def reach(self, store: SnapshotStore) -> ArchiveReach:
        archive = self.source.archive(store)
        given_up = sum(gap.bytes for gap in archive.gaps())
        return ArchiveReach(archive.newest_segment(), archive.last_archived(), given_up)

    def waiting(self, newest: str | None) -> int | None:
        return segments_behind(self.source.cluster(), newest)

    def copy(self, source: SnapshotStore, target: SnapshotStore) -> list[str]:
        return self.source.archive(source).copy_to(self.source.archive(target))

    def stalled(self, since: datetime, age_s: float, waiting: int | None) -> str:
        return (
            f"WAL archiving stalled: nothing archived into {self.name} since "
            f"{format_utc(since)} ({age_s:.0f} s)"
            + (f", {waiting} finished segment(s) waiting" if waiting else "")
            + "; the server's log says why wal-push fails"
        )


def check_reachable(snapshot: StoredSnapshot, archive: WalArchive, moment: datetime | None) -> None:
    """The archive holds what the base backup needs, and reaches `moment` (give or take the
    store's clock: PostgreSQL itself refuses to start a recovery that ends short of it). A
    recovery that would have to pass WAL given up while the store could not be reached
    (`wal/queue.py`) is refused, naming the gap; a base backup taken after the gap recovers
    past it."""
    wal = WalRange.of(snapshot)
    require_wal(snapshot, wal, archive)
    if (gap := gap_in_the_way(wal, archive, moment)) is not None:
        reachable = gap.starts_after
        before = f"--target-time at or before {format_utc(reachable)}, or " if reachable else ""
        raise ConfigurationError(
            f"{archive.describe()} lacks WAL given up while the store could not be reached "
            f"(BACKUP_WAL_QUEUE_MAX_BYTES): {gap.describe()}. Recovery from {snapshot.source} "
            f"snapshot {snapshot.snapshot_id} cannot pass it: choose {before}a base backup "
            "taken after it (take one now if there is none)"
        )
    last = archive.last_archived()
    if moment is not None and ends_short_of(last, moment):
        raise ConfigurationError(
            f"--target-time {format_utc(moment)} is after the end of {archive.describe()} "
            f"(its newest WAL file was stored {format_utc(last) if last else 'never'}): "
            "recovery could not reach it; leave --target-time out to recover to the end"
        )


def require_wal(snapshot: StoredSnapshot, wal: WalRange, archive: WalArchive) -> None:
    """`BackupError` when the archive lacks WAL the base backup itself needs."""
    if missing := wal.missing_from(archive):
        raise BackupError(
            f"{archive.describe()} lacks WAL the base backup {snapshot.snapshot_id} needs "
            f"({', '.join(missing[:3])})"
        )


def gap_in_the_way(wal: WalRange, archive: WalArchive, moment: datetime | None) -> Gap | None:
    """The first stretch of WAL given up while the store could not be reached that a
    recovery from a base backup (its WAL from `wal.start`) to `moment` (None: the archive's
    end) would have to pass; None when there is none."""
    for gap in archive.gaps():
        if segment_position(gap.last) < segment_position(wal.start):
            continue  # before this base backup began: it does not need that WAL
        reachable = gap.starts_after
        if moment is not None and reachable is not None and moment <= reachable:
            continue
        return gap
    return None


def ends_short_of(last_archived: datetime | None, moment: datetime) -> bool:
    """Whether an archive whose newest file was stored at `last_archived` ends before
    `moment`, give or take the store's clock."""
    return last_archived is None or last_archived + STORE_CLOCK_SLACK < moment


def reach_of(
    snapshot: StoredSnapshot, wal: WalRange, archive: WalArchive, moment: datetime
) -> tuple[datetime, datetime | None, str]:
    """How close to `moment` a recovery from `snapshot` gets: the moment reached, the
    `target_time` that reaches it (None: the archive's end), and how, in words. Short of
    `moment` only where the archive is: WAL given up (a gap) stops it before the gap, and an
    archive whose newest file was stored before `moment` ends it there."""
    if (gap := gap_in_the_way(wal, archive, moment)) is not None:
        reachable = gap.starts_after
        if reachable is None or reachable < ends_at(snapshot):
            raise BackupError(
                f"{archive.describe()} lacks WAL given up while the store could not be "
                f"reached ({gap.describe()}): recovery from the base backup "
                f"{snapshot.snapshot_id} cannot pass it"
            )
        how = (
            f"base backup and WAL up to {format_utc(reachable)}, where WAL given up while the "
            "store could not be reached begins"
        )
        return reachable, reachable, how
    last = archive.last_archived()
    if ends_short_of(last, moment):
        reached = last or ends_at(snapshot)
        return reached, None, "base backup and WAL to the archive's end, before the moment"
    return moment, moment, "base backup and WAL up to exactly the moment"


def replay_seconds(snapshot: StoredSnapshot, wal: WalRange, archive: WalArchive) -> float:
    """How long replaying the WAL after the base backup (up to the archive's newest
    segment) should take, at the pace the base backup itself was read."""
    newest = archive.newest_segment()
    seconds = backup_seconds(snapshot)
    read = snapshot.manifest.stats.get("cluster_bytes") or snapshot.manifest.size_bytes
    if newest is None or seconds <= 0 or not isinstance(read, int) or read <= 0:
        return 0.0
    per_high = (1 << 32) // wal.segment_bytes
    high, low = segment_position(newest)
    stop_high, stop_low = segment_position(wal.stop)
    segments = max(0, (high - stop_high) * per_high + low - stop_low)
    return segments * wal.segment_bytes * seconds / read
