"""The `BACKUP_*` environment, parsed once into typed settings.

Every knob an operator can turn is here, with the contract's default, so a
newcomer finds the whole configuration surface in one place. Values are
validated at start-up: a bad port or an unknown retention word stops the
process with a message naming the variable, never later in the middle of a
night's backup. Secrets are `SecretStr` so they print as `**********`.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backup_pipelines.errors import ConfigurationError
from backup_pipelines.redaction import secret_parts

logger = logging.getLogger(__name__)

SOURCES = ("postgres", "redis", "rabbitmq", "consul", "documents")

Unlimited = Literal["unlimited"]
RetentionCount = int | Unlimited
CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _retention_count(value: object) -> object:
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "unlimited":
            return "unlimited"
        if not word.isdigit():
            raise ValueError("must be a whole number of snapshots or 'unlimited'")
        return int(word)
    return value


class BackupSettings(BaseSettings):
    """All `BACKUP_*` variables of the contract. Empty strings count as unset."""

    model_config = SettingsConfigDict(
        env_prefix="BACKUP_", env_ignore_empty=True, extra="ignore", frozen=True
    )

    artifacts_dir: Path = Path("/tmp/backup-artifacts")

    s3_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("BACKUP_S3_ENDPOINT_URL", "BACKUP_S3_ENDPOINT")
    )
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_prefix: str = "backups"

    postgres_backup_dsn: SecretStr = SecretStr("postgresql://postgres@localhost:5432/postgres")
    postgres_databases: CommaList = []
    postgres_restore_drill: bool = True

    redis_host: str = "localhost"
    redis_port: int = Field(6379, ge=1, le=65535)
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_data_dir: Path | None = None

    rabbitmq_url: SecretStr = SecretStr("amqp://guest:guest@localhost:5672/%2F")
    rabbitmq_management_url: str = "http://localhost:15672"
    rabbitmq_admin_user: str = "guest"
    rabbitmq_admin_password: SecretStr = SecretStr("guest")

    consul_http_addr: str = "http://localhost:8500"
    consul_token: SecretStr | None = None

    documents_root: Path | None = Field(
        None, validation_alias=AliasChoices("BACKUP_DOCUMENTS_ROOT", "DOCUMENTS_STORAGE_ROOT")
    )
    restic_password: SecretStr | None = None

    encryption_recipients: CommaList = []
    age_identity_file: Path | None = None

    postgres_cron: str = "0 * * * *"
    redis_cron: str = "15 * * * *"
    rabbitmq_cron: str = "30 2 * * *"
    consul_cron: str = "45 2 * * *"
    documents_cron: str = "0 3 * * *"

    retention_daily: RetentionCount = 7
    retention_weekly: RetentionCount = 4
    retention_monthly: RetentionCount = 12
    retention_yearly: RetentionCount = "unlimited"
    retention_days: int | None = Field(None, ge=0)

    database_url: SecretStr | None = None
    retry_delay_s: float = Field(30, ge=0)

    _split = field_validator("postgres_databases", "encryption_recipients", mode="before")(
        _split_commas
    )
    _retention = field_validator(
        "retention_daily",
        "retention_weekly",
        "retention_monthly",
        "retention_yearly",
        mode="before",
    )(_retention_count)

    @field_validator("retention_daily", "retention_weekly", "retention_monthly", "retention_yearly")
    @classmethod
    def _non_negative(cls, value: RetentionCount) -> RetentionCount:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be a whole number of snapshots or 'unlimited'")
        return value

    @field_validator(*(f"{source}_cron" for source in SOURCES))
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        # Dagster's own parser: what it accepts is what the schedules will run. Imported
        # here, as only a value someone set needs it, so the restore CLI starts without
        # loading Dagster.
        from dagster._utils.schedules import is_valid_cron_string

        if not is_valid_cron_string(value):
            raise ValueError("is not a valid cron expression (five fields, UTC)")
        return value

    @field_validator("encryption_recipients")
    @classmethod
    def _valid_recipients(cls, value: list[str]) -> list[str]:
        from backup_pipelines.snapshot.encryption import parse_recipients

        parse_recipients(value)
        return value

    @property
    def s3_enabled(self) -> bool:
        """S3 is used only when a bucket and both keys are set."""
        return bool(self.s3_bucket and self.s3_access_key and self.s3_secret_key)

    @cached_property
    def staging_dir(self) -> Path:
        """Where snapshots are assembled before a store commits them."""
        return self.artifacts_dir / ".staging"

    def cron_for(self, source: str) -> str:
        return getattr(self, f"{source}_cron")

    def secret_values(self) -> list[str]:
        """Every secret set (and a URL's password on its own), to mask in any message."""
        values = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                values.extend(secret_parts(value.get_secret_value()))
        return values


def env_name(field_name: str) -> str:
    """The environment variable an operator sets for `field_name`."""
    field = BackupSettings.model_fields[field_name]
    if isinstance(field.validation_alias, AliasChoices):
        return str(field.validation_alias.choices[0])
    return f"BACKUP_{field_name.upper()}"


def load_settings() -> BackupSettings:
    """Read the environment; a bad value raises `ConfigurationError` naming the variable.

    Pydantic's own message would echo the offending input, which may be a
    secret, so only the variable and the rule it broke are reported.
    """
    try:
        return BackupSettings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            field = str(error["loc"][0]) if error["loc"] else "?"
            name = env_name(field) if field in BackupSettings.model_fields else field
            problems.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from None
