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
from backup_pipelines.sources.source import Check, CheckOutcome, Log, RestoreOptions, Source, cli


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
    name = "redis"
    kind = "redis"
    description = (
        "The RDB, taken over the replication protocol, and AOF files when the data dir is readable."
    )
    system = "The CRM's Redis server."

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

    def checks(self) -> list[Check]:
        return [
            Check(
                "restore_drill",
                "Runs redis-check-rdb on the latest snapshot, loads it into a throw-away "
                "redis-server and compares keys per database with the counts taken at backup "
                "time.",
                drill,
            )
        ]


def drill(reader: SnapshotReader, log: Log) -> CheckOutcome:
    """An RDB that does not load is not a backup; keys with a TTL may expire between the
    count and the sync on a live server, so a different count is only worth a look."""
    try:
        result = restore_drill(reader)
    except IntegrityError as exc:
        return CheckOutcome([str(exc)])
    problems = [] if result["equal"] else ["the loaded keys differ from those counted at backup"]
    return CheckOutcome(
        problems,
        metadata={
            "expected_keys": result["expected_keys"],
            "loaded_keys": result["loaded_keys"],
            "function_libraries": result["function_libraries"],
        },
        warn_only=True,
    )
