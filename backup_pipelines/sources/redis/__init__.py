"""Redis: the RDB (and AOF files), restored into a running server or written as files."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from backup_pipelines.errors import IntegrityError
from backup_pipelines.settings import SourceSettings
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.sources.redis.dump import dump_server
from backup_pipelines.sources.redis.restore import (
    deep_verify_rdb,
    restore_drill,
    restore_into_server,
    write_output_dir,
)
from backup_pipelines.sources.redis.server import RedisServer
from backup_pipelines.sources.source import DrillResult, Log, RestoreOptions, Source, cli


class RedisSettings(SourceSettings):
    model_config = SettingsConfigDict(env_prefix="BACKUP_REDIS_")

    host: str = "localhost"
    port: int = Field(6379, ge=1, le=65535)
    username: str | None = None
    """An ACL user (with the password); it needs `+sync`/`+psync` and read access."""
    password: SecretStr | None = None
    data_dir: Path | None = None
    """The server's data dir: when readable, its AOF files join the snapshot."""
    cron: str = "15 * * * *"


class RedisRestore(RestoreOptions):
    target: str | None = Field(
        None,
        description="redis://[:password@]host:port of a running server to load the snapshot into",
        json_schema_extra=cli("--target-url", "URL"),
    )
    output_dir: Path | None = Field(
        None,
        description="write dump.rdb (and appendonlydir/) for a file-based restore",
        json_schema_extra=cli(metavar="DIR"),
    )

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.target is None) == (self.output_dir is None):
            raise ValueError("name either a server (--target-url) or a directory (--output-dir)")
        return self

    def destination(self) -> str:
        return str(self.output_dir) if self.output_dir else super().destination()


class Redis(Source[RedisSettings, RedisRestore]):
    kind = "redis"
    dagster_kind = "redis"
    description = (
        "The RDB, taken over the replication protocol, and AOF files when the data dir is readable."
    )
    system = "The CRM's Redis server."
    address_settings = ("host", "port")

    def server(self) -> RedisServer:
        password = self.settings.password.get_secret_value() if self.settings.password else None
        return RedisServer(self.settings.host, self.settings.port, self.settings.username, password)

    def dump(self, staged: StagedSnapshot, log: Log) -> None:
        dump_server(staged, self.server(), self.settings.data_dir, log)

    def deep_verify(self, reader: SnapshotReader) -> list[str]:
        return deep_verify_rdb(reader)

    def restore(self, reader: SnapshotReader, options: RedisRestore, log: Log) -> str:
        if options.output_dir is not None:
            return write_output_dir(reader, options.output_dir, force=options.force)
        target = RedisServer.from_url(options.target or "")
        return restore_into_server(reader, target, force=options.force, log=log)

    def drill(self, reader: SnapshotReader, log: Log) -> DrillResult:
        """redis-check-rdb, then the RDB loaded by a throw-away server and its keys counted
        per database. Keys with a TTL expire and keys come and go between the count and the
        sync on a live server, so a different count is a warning; an RDB that does not load,
        or a database that comes back empty, is not a backup."""
        try:
            result = restore_drill(reader, log)
        except IntegrityError as exc:
            return DrillResult([str(exc)])
        expected, loaded = result["expected_keys"], result["loaded_keys"]
        problems = [
            f"{db} held {count} keys at backup and none came back"
            for db, count in expected.items()
            if count and not loaded.get(db)
        ]
        differ = expected != loaded
        warnings = ["keys per database differ from the count at backup"] if differ else []
        return DrillResult(
            problems,
            figures={
                "expected_keys": expected,
                "loaded_keys": loaded,
                "function_libraries": result["function_libraries"],
            },
            warnings=warnings,
        )
