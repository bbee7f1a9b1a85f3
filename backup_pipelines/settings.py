"""The `BACKUP_*` environment, parsed into typed settings: the store, keys, events and retention
here, each source's own settings (`SourceSettings`) in its package.

Values are validated at start-up: a bad port or an unknown retention word
stops the process with a message naming the variable, never later in the
middle of a night's backup. Secrets are `SecretStr` so they print as
`**********`. Only the composition root (`runtime.py`, `services.py`) reads
the environment; everything below it is handed settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from backup_pipelines.cron import check_cron
from backup_pipelines.errors import ConfigurationError
from backup_pipelines.redaction import Location, secret_parts, validation_problems
from backup_pipelines.storage.layout import STAGING
from backup_pipelines.storage.names import is_site_name

Unlimited = Literal["unlimited"]
RetentionCount = int | Unlimited
CommaList = Annotated[list[str], NoDecode]
"""A comma-separated variable (`crm, billing`) as a list; pydantic would expect JSON."""


def split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def upper_case(value: object) -> object:
    """An Object Lock mode as S3 spells it, however it was typed."""
    return value.strip().upper() if isinstance(value, str) else value


def check_endpoint(value: str | None) -> str | None:
    """An S3 endpoint is `scheme://host[:port]` and never carries credentials: a user or
    password in it would be shown wherever the store is named (the keys have their own
    settings)."""
    if value is None:
        return None
    found = urlsplit(value)
    if found.scheme not in ("http", "https") or not found.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if found.username is not None or found.password is not None:
        raise ValueError(
            "must not hold a user or password (the keys go in their own settings): it would "
            "be shown wherever the store is named"
        )
    return value


LIBPQ_KEYWORDS = re.compile(r"\s*(?:\w+\s*=\s*(?:'(?:[^'\\]|\\.)*'|[^\s']+)\s*)+")
"""libpq's `keyword=value` connection string (`host=db port=5432 dbname=crm`)."""


def check_postgres_dsn(value: SecretStr | None) -> SecretStr | None:
    """A PostgreSQL connection string: a `postgresql://` URL, or libpq's keywords. Anything
    else (`127.0.0.1:5432`, `mysql://...`) stops start-up here instead of failing the night's
    backup; the value itself is never repeated (it may hold a password)."""
    if value is None:
        return None
    text = value.get_secret_value().strip()
    if "://" in text:
        if urlsplit(text).scheme not in ("postgresql", "postgres"):
            raise ValueError(
                "must be a postgresql:// URL (postgresql://user@host:5432/db) or libpq keywords "
                "(host=... dbname=...)"
            )
    elif not LIBPQ_KEYWORDS.fullmatch(text):
        raise ValueError(
            "is neither a postgresql:// URL nor libpq keywords: write "
            "postgresql://user@host:5432/db, or host=... port=... dbname=..."
        )
    return value


def url_check(*schemes: str) -> Callable[[Any], Any]:
    """A validator: the value is a URL of one of `schemes` with a host (a `SecretStr` too)."""

    def check(value: Any) -> Any:
        if value is None:
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        found = urlsplit(text.strip())
        if found.scheme not in schemes or not found.hostname:
            wanted = " or ".join(f"{scheme}://" for scheme in schemes)
            raise ValueError(f"must be a {wanted} URL with a host ({schemes[0]}://host:port)")
        return value

    return check


def check_prune_keys(access: object, secret: object, names: str) -> None:
    """The prune keys (`names`, as the operator set them) come as a pair or not at all."""
    if (access is None) != (secret is None):
        raise ValueError(f"{names} are set together")


def _retention_count(value: object) -> object:
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "unlimited":
            return "unlimited"
        if not word.isdigit():
            raise ValueError("must be a whole number of snapshots or 'unlimited'")
        return int(word)
    return value


def _non_negative_count(value: RetentionCount | None) -> RetentionCount | None:
    if isinstance(value, int) and value < 0:
        raise ValueError("must be a whole number of snapshots or 'unlimited'")
    return value


DEFAULT_NOTIFY_EVENTS = ("backup.failed", "backup.verification_failed", "backup.overdue")
"""The events that need a person (`events/notifications.py` sends them)."""
NOTIFIABLE_EVENTS = (
    *DEFAULT_NOTIFY_EVENTS,
    "backup.started",
    "backup.completed",
    "backup.verified",
    "backup.restored",
    "backup.pruned",
)


def check_notify_urls(value: SecretStr | None) -> SecretStr | None:
    """Every URL one apprise knows (a scheme it has a service for): a typo would otherwise be
    found the night a failure has nobody to tell. Named by position, never shown."""
    if value is None:
        return None
    import apprise  # only where notifications are configured: its import takes a second

    urls = split_commas(value.get_secret_value())
    unknown = [str(n) for n, url in enumerate(urls, 1) if not apprise.Apprise().add(url)]
    if unknown:
        raise ValueError(
            f"URL {', '.join(unknown)} is not one apprise can send to (check its scheme, "
            "https://github.com/caronc/apprise/wiki)"
        )
    return value


def check_notify_events(value: list[str]) -> list[str]:
    unknown = [str(n) for n, name in enumerate(value, 1) if name not in NOTIFIABLE_EVENTS]
    if unknown:
        raise ValueError(
            f"entry {', '.join(unknown)} is not an event (the events: "
            f"{', '.join(NOTIFIABLE_EVENTS)})"
        )
    return value


RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
"""The retention rules that count snapshots, in the order restic applies them."""
RETENTION_COUNTS = tuple(f"retention_{rule}" for rule in RULES)


class RetentionOverrides(BaseModel):
    """A target's own retention rules (`retention:` in the targets file); a rule left out
    is the `BACKUP_RETENTION_*` one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    last: RetentionCount | None = None
    hourly: RetentionCount | None = None
    daily: RetentionCount | None = None
    weekly: RetentionCount | None = None
    monthly: RetentionCount | None = None
    yearly: RetentionCount | None = None
    days: int | None = Field(None, ge=0)

    _counts = field_validator(*RULES, mode="before")(_retention_count)
    _non_negative = field_validator(*RULES)(_non_negative_count)


ENVIRONMENT = SettingsConfigDict(env_ignore_empty=True, extra="ignore", frozen=True)


class EnvironmentSettings(BaseSettings):
    """Settings read from the environment alone: no `.env` file, no secrets directory, which
    nothing here configures and which pydantic-settings would otherwise look at each time."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        *_: PydanticBaseSettingsSource,
        **__: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)


class BackupSettings(EnvironmentSettings):
    """What every source shares: the store, the keys, events, retention. Empty counts as unset."""

    model_config = SettingsConfigDict(ENVIRONMENT, env_prefix="BACKUP_")

    artifacts_dir: Path = Path("/tmp/backup-artifacts")

    s3_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("BACKUP_S3_ENDPOINT_URL", "BACKUP_S3_ENDPOINT")
    )
    s3_timeout_s: float = Field(60, gt=0)
    """How long S3 may give no byte before a request fails (and is retried, up to 5 times)."""
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_prefix: str = "backups"
    s3_object_lock_days: int | None = Field(None, ge=1)
    """Every object of a snapshot is written with S3 Object Lock retention for this long."""
    s3_object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] = "GOVERNANCE"
    s3_prune_access_key: SecretStr | None = None
    s3_prune_secret_key: SecretStr | None = None
    """Keys used only to delete (prune), so the backup host's keys can lack delete rights."""

    rabbitmq_url: SecretStr = SecretStr("amqp://guest:guest@localhost:5672/%2F")
    """The broker that carries events and backup requests (often the one backed up)."""

    encryption_recipients: CommaList = []
    age_identity_file: Path | None = None

    retention_last: RetentionCount = 0
    retention_hourly: RetentionCount = 0
    retention_daily: RetentionCount = 7
    retention_weekly: RetentionCount = 4
    retention_monthly: RetentionCount = 12
    retention_yearly: RetentionCount = "unlimited"
    retention_days: int | None = Field(None, ge=0)

    targets_file: Path | None = None
    """Several targets per kind (`sources/targets.py`); without it, one per kind from
    BACKUP_*."""
    stores_file: Path | None = None
    """Copy stores beside the primary (`stores.py`); without it, the primary alone."""

    wal_queue_max_bytes: int | None = Field(None, ge=1)
    """WAL that may wait for an unreachable archive before the oldest is given up
    (`wal/queue.py`); unset, none ever is."""

    stall_timeout_s: float = Field(600, ge=1)
    """How long a dump may give no byte before its source counts as hung and the run fails."""
    restore_roots: CommaList = []
    """Directories a restore launched from Dagster may write into (none: no directory)."""
    notify_urls: SecretStr | None = None
    """Comma-separated apprise URLs (Slack, Telegram, `mailto://`, `json://` webhooks, ...) the
    events of `notify_events` are sent to, in words; they hold tokens, so never shown."""
    notify_events: CommaList = list(DEFAULT_NOTIFY_EVENTS)
    """The events (as on the broker) that are sent to `notify_urls`."""
    start_stopped: bool = False
    """The schedules and the sensors that launch backups by themselves (requests on
    `backup.requests`, changes) start stopped, until turned on in the UI: `make dev` sets it,
    so a first start touches no shared system on its own."""
    store_group: str | None = None
    """A group whose members may read the local store and the artifacts directory (a separate
    verifier's or exporter's account); unset, they are open to their owner alone."""

    site: str | None = None
    """The site this code location serves (a data centre, a region): it loads only the
    targets the targets file gives this `site`, and is named `backup_pipelines_<site>`."""

    verify_cron: str = "0 5 * * *"
    """When the verification plane drills every source's latest snapshot (UTC)."""

    database_url: SecretStr | None = None
    retry_delay_s: float = Field(30, ge=0)

    _split = field_validator(
        "encryption_recipients", "restore_roots", "notify_events", mode="before"
    )(split_commas)
    _retention = field_validator(*RETENTION_COUNTS, mode="before")(_retention_count)
    _non_negative = field_validator(*RETENTION_COUNTS)(_non_negative_count)

    _upper_case = field_validator("s3_object_lock_mode", mode="before")(upper_case)
    _endpoint = field_validator("s3_endpoint_url")(check_endpoint)
    _broker = field_validator("rabbitmq_url")(url_check("amqp", "amqps"))
    _notify_urls = field_validator("notify_urls")(check_notify_urls)
    _notify_events = field_validator("notify_events")(check_notify_events)
    _dagster_database = field_validator("database_url")(check_postgres_dsn)

    @model_validator(mode="after")
    def _prune_keys_together(self) -> BackupSettings:
        names = "BACKUP_S3_PRUNE_ACCESS_KEY and BACKUP_S3_PRUNE_SECRET_KEY"
        check_prune_keys(self.s3_prune_access_key, self.s3_prune_secret_key, names)
        return self

    _cron = field_validator("verify_cron")(check_cron)

    @field_validator("site")
    @classmethod
    def _site_name(cls, value: str | None) -> str | None:
        if value is not None and not is_site_name(value):
            raise ValueError("must be lowercase letters, digits and _, starting with a letter")
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

    @property
    def prunes_elsewhere(self) -> str | None:
        """Why this host does not prune: it writes locked snapshots and has no prune keys (a
        backup host kept from deleting); None when it prunes."""
        if self.s3_enabled and self.s3_object_lock_days and self.s3_prune_access_key is None:
            return (
                "this host writes locked snapshots (BACKUP_S3_OBJECT_LOCK_DAYS) without the "
                "keys that may delete (BACKUP_S3_PRUNE_ACCESS_KEY, BACKUP_S3_PRUNE_SECRET_KEY): "
                "retention runs where those are, as `backup-pipelines prune`"
            )
        return None

    @cached_property
    def staging_dir(self) -> Path:
        """Where snapshots are assembled before a store commits them."""
        return self.artifacts_dir / STAGING


class SourceSettings(EnvironmentSettings):
    """The settings of one backed-up system; each source's subclass sets its `env_prefix`
    (`BACKUP_POSTGRES_`) and its default `cron`."""

    model_config = ENVIRONMENT

    cron: str
    """When the source's schedule takes a snapshot (UTC), from `BACKUP_<SOURCE>_CRON`."""
    notify_urls: SecretStr | None = None
    """The source's own apprise URLs (a team's channel for its target), beside
    `BACKUP_NOTIFY_URLS`: `BACKUP_<KIND>_NOTIFY_URLS`, or `notify_urls` of a target."""
    enabled: bool = True
    """`BACKUP_<KIND>_ENABLED=false`: no asset, schedule or sensor backs the kind up (its
    snapshots are still listed, restored and pruned)."""

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return check_cron(value)

    _notify_urls = field_validator("notify_urls")(check_notify_urls)


def secret_values(model: BaseModel) -> list[str]:
    """Every secret `model` holds (and a URL's password on its own), to mask in any message."""
    values = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            values.extend(secret_parts(value.get_secret_value()))
    return values


def env_name(model: type[BaseSettings], field_name: str) -> str:
    """The environment variable an operator sets for `field_name` of `model`."""
    field = model.model_fields[field_name]
    if isinstance(field.validation_alias, AliasChoices):
        return str(field.validation_alias.choices[0])
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return f"{model.model_config.get('env_prefix', '')}{field_name}".upper()


def field_variables(model: type[BaseSettings], field_name: str) -> list[str]:
    """The variables `field_name` of `model` is read from, aliases included."""
    field = model.model_fields[field_name]
    if isinstance(field.validation_alias, AliasChoices):
        return [str(choice) for choice in field.validation_alias.choices]
    return [env_name(model, field_name)]


def env_names(model: type[BaseSettings]) -> set[str]:
    """Every variable `model` reads, aliases included."""
    return {
        name for field_name in model.model_fields for name in field_variables(model, field_name)
    }


Model = TypeVar("Model", bound=BaseSettings)


class InvalidSettings(ConfigurationError):
    """Variables whose values break their rules, each named with the rule it broke."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration: " + "; ".join(problems))


def read_settings(model: type[Model]) -> Model:
    """Read `model` from the environment; a bad value raises `InvalidSettings` naming it.

    Pydantic's own message would echo the offending input, which may be a
    secret, so only the variable and the rule it broke are reported.
    """

    def variable(loc: Location) -> str:
        field = str(loc[0]) if loc else "configuration"
        return env_name(model, field) if field in model.model_fields else field

    try:
        return model()
    except ValidationError as exc:
        raise InvalidSettings(validation_problems(exc, variable)) from None
