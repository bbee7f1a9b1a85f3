"""RabbitMQ: the broker's definitions (topology, users, policies), restored by import."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from backup_pipelines.settings import SourceSettings, url_check
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.sources.rabbitmq.api import ManagementApi
from backup_pipelines.sources.rabbitmq.dump import dump_definitions
from backup_pipelines.sources.rabbitmq.restore import drill_definitions, restore_definitions
from backup_pipelines.sources.source import (
    SECRET_OPTION,
    DrillResult,
    Log,
    RestoreOptions,
    Source,
    cli,
)


class RabbitMQSettings(SourceSettings):
    """The management API the definitions are exported from (the broker that carries events
    is `BACKUP_RABBITMQ_URL`, a shared setting)."""

    model_config = SettingsConfigDict(env_prefix="BACKUP_RABBITMQ_")

    management_url: str = "http://localhost:15672"
    admin_user: str = "guest"
    admin_password: SecretStr = SecretStr("guest")
    cron: str = "30 2 * * *"

    _address = field_validator("management_url")(url_check("http", "https"))


class RabbitMQRestore(RestoreOptions):
    target: str = Field(
        description="management API of the broker to import into (http://host:15672)",
        json_schema_extra=cli("--management-url", "URL"),
    )
    user: str | None = Field(
        None, description="management user (default: BACKUP_RABBITMQ_ADMIN_USER)"
    )
    password: SecretStr | None = Field(
        None,
        description="its password (default: BACKUP_RABBITMQ_ADMIN_PASSWORD)",
        json_schema_extra=SECRET_OPTION,
    )
    vhost: str | None = Field(
        None, description="restore this vhost only", json_schema_extra=cli(metavar="NAME")
    )


class RabbitMQ(Source[RabbitMQSettings, RabbitMQRestore]):
    kind = "rabbitmq"
    dagster_kind = "rabbitmq"
    description = (
        "The broker's definitions: vhosts, users, permissions, parameters, policies, queues, "
        "exchanges and bindings (not messages)."
    )
    system = "The CRM's RabbitMQ broker."
    address_settings = ("management_url",)

    def api(
        self, url: str | None = None, user: str | None = None, password: str | None = None
    ) -> ManagementApi:
        """The management API at `url` (default: the one backed up), as the admin user."""
        return ManagementApi(
            url or self.settings.management_url,
            user or self.settings.admin_user,
            password or self.settings.admin_password.get_secret_value(),
        )

    def dump(self, staged: StagedSnapshot, log: Log) -> None:
        dump_definitions(staged, self.api(), log)

    def deep_verify(self, reader: SnapshotReader) -> list[str]:
        return list(drill_definitions(reader).problems)

    def drill(self, reader: SnapshotReader, log: Log) -> DrillResult:
        """Structural: an import needs a broker, and none is made for a drill."""
        return drill_definitions(reader)

    def restore(self, reader: SnapshotReader, options: RabbitMQRestore, log: Log) -> str:
        password = options.password.get_secret_value() if options.password else None
        api = self.api(options.target, options.user, password)
        return restore_definitions(reader, api, vhost=options.vhost, force=options.force, log=log)
