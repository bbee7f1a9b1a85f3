"""PostgreSQL: every database (all schemas, large objects) and the roles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from backup_pipelines.errors import BackupError, ConfigurationError
from backup_pipelines.settings import (
    CommaList,
    SourceSettings,
    check_postgres_dsn,
    split_commas,
)
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.sources.postgres.cluster import Cluster
from backup_pipelines.sources.postgres.dump import dump_cluster
from backup_pipelines.sources.postgres.restore import (
    deep_verify_dumps,
    restore_drill,
    restore_snapshot,
)
from backup_pipelines.sources.postgres.scratch import drill_target, major_version
from backup_pipelines.sources.source import DrillResult, Log, RestoreOptions, Source, cli


class PostgresSettings(SourceSettings):
    model_config = SettingsConfigDict(env_prefix="BACKUP_POSTGRES_")

    backup_dsn: SecretStr = SecretStr("postgresql://postgres@localhost:5432/postgres")
    standby_dsn: SecretStr | None = None
    """A hot standby of that cluster the dumps read instead, sparing the primary."""
    databases: CommaList = []
    """The databases to back up; all but the templates when empty."""
    drill_dsn: SecretStr | None = None
    """A scratch server drills restore into; a throwaway cluster (initdb) when unset."""
    cron: str = "0 * * * *"

    _split = field_validator("databases", mode="before")(split_commas)
    _dsn = field_validator("backup_dsn", "standby_dsn", "drill_dsn")(check_postgres_dsn)


class PostgresRestore(RestoreOptions):
    target: str = Field(
        description="server to restore into; with --database, the database named here "
        "receives it (a DSN without password: PGPASSWORD or PGPASSFILE give it)",
        json_schema_extra=cli("--target-dsn", "DSN"),
    )
    database: str | None = Field(
        None,
        description="restore only this database of the snapshot (default: all, under their "
        "own names)",
        json_schema_extra=cli(metavar="NAME"),
    )
    include_globals: bool = Field(
        False,
        description="create the snapshot's roles and tablespaces first (existing roles are kept)",
        json_schema_extra=cli("--globals"),
    )


class Postgres(Source[PostgresSettings, PostgresRestore]):
    kind = "postgres"
    dagster_kind = "postgres"
    description = "Every database of the cluster (custom-format dumps) and its roles (globals.sql)."
    system = "The CRM's PostgreSQL cluster."
    address_settings = ("backup_dsn",)

    @classmethod
    def plotted(cls, stats: Mapping[str, Any]) -> dict[str, int | float]:
        """Rows and dumped bytes per database."""
        plotted: dict[str, int | float] = {}
        for name, figures in (stats.get("databases") or {}).items():
            rows = figures.get("row_counts") or {}
            plotted[f"{name}: rows"] = sum(v for k, v in rows.items() if k != "pg_largeobject")
            plotted[f"{name}: dumped_bytes"] = figures.get("dumped_bytes", 0)
        return plotted

    def cluster(self) -> Cluster:
        return Cluster(self.settings.backup_dsn.get_secret_value())

    def dump(self, staged: StagedSnapshot, log: Log) -> None:
        """From the standby when one is set (a hot standby serves pg_dump's snapshot)."""
        standby = self.settings.standby_dsn
        read = Cluster(standby.get_secret_value()) if standby else self.cluster()
        dump_cluster(staged, read, self.settings.databases, log)

    def deep_verify(self, reader: SnapshotReader) -> list[str]:
        return deep_verify_dumps(reader)

    def restore(self, reader: SnapshotReader, options: PostgresRestore, log: Log) -> str:
        return restore_snapshot(
            reader,
            Cluster(options.target),
            database=options.database,
            include_globals=options.include_globals,
            force=options.force,
            log=log,
        )

    def drill(self, reader: SnapshotReader, log: Log) -> DrillResult:
        """Every database restored into a scratch cluster, its rows counted and compared with
        those counted, in the dump's own snapshot, at backup time."""
        stats = reader.snapshot.manifest.stats
        drill_dsn = self.settings.drill_dsn
        target = drill_target(
            drill_dsn.get_secret_value() if drill_dsn else None,
            self.cluster(),
            major_version(stats.get("server_version")),
            log,
        )
        try:
            with target as cluster:
                results = restore_drill(reader, cluster, log)
        except ConfigurationError:
            raise
        except BackupError as exc:
            return DrillResult([str(exc)])
        differing = [name for name, result in results.items() if result["differences"]]
        return DrillResult(
            [
                f"{name}: the restored rows differ from those counted at backup"
                for name in differing
            ],
            figures={
                "databases": results,
                "rows_restored": sum(result["rows"] for result in results.values()),
            },
        )
