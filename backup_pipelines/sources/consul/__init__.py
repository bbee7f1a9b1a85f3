"""Consul: its snapshot archive and a KV export; restored key by key or as a whole cluster."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from backup_pipelines.settings import SourceSettings, url_check
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.sources.consul.api import ConsulApi
from backup_pipelines.sources.consul.dump import dump_consul
from backup_pipelines.sources.consul.restore import drill_snapshot, restore_archive, restore_kv
from backup_pipelines.sources.source import DrillResult, Log, RestoreOptions, Source, cli


class ConsulSettings(SourceSettings):
    model_config = SettingsConfigDict(env_prefix="BACKUP_CONSUL_")

    http_addr: str = "http://localhost:8500"
    token: SecretStr | None = None
    """The ACL token; it travels only in the `X-Consul-Token` header."""
    cron: str = "45 2 * * *"

    _address = field_validator("http_addr")(url_check("http", "https"))


class ConsulRestore(RestoreOptions):
    target: str = Field(
        description="Consul agent to restore into (http://host:8500); token: BACKUP_CONSUL_TOKEN",
        json_schema_extra=cli("--http-addr", "URL"),
    )
    snapshot_restore: bool = Field(
        False,
        description="upload Consul's own snapshot archive (the whole cluster state) instead of "
        "the KV",
    )


class Consul(Source[ConsulSettings, ConsulRestore]):
    kind = "consul"
    dagster_kind = "consul"
    description = "Consul's snapshot archive (the whole Raft state) and a JSON export of the KV."
    system = "The CRM's Consul cluster."
    address_settings = ("http_addr",)

    def api(self, address: str | None = None) -> ConsulApi:
        """The agent at `address` (default: the one backed up), with the configured token."""
        token = self.settings.token.get_secret_value() if self.settings.token else None
        return ConsulApi(address or self.settings.http_addr, token)

    def dump(self, staged: StagedSnapshot, log: Log) -> None:
        dump_consul(staged, self.api(), log)

    def deep_verify(self, reader: SnapshotReader) -> list[str]:
        return list(drill_snapshot(reader).problems)

    def drill(self, reader: SnapshotReader, log: Log) -> DrillResult:
        """Structural: restoring the archive needs an agent of the same version, and restoring
        the KV one to restore into; neither is made for a drill."""
        return drill_snapshot(reader)

    def restore(self, reader: SnapshotReader, options: ConsulRestore, log: Log) -> str:
        api = self.api(options.target)
        if options.snapshot_restore:
            return restore_archive(reader, api, log)
        return restore_kv(reader, api, force=options.force, log=log)
