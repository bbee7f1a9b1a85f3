"""BACKUP_* settings: defaults, aliases, empty strings, validation messages, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyrage import x25519

from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.errors import ConfigurationError
from backup_pipelines.redaction import mask_url, redact, secret_parts
from backup_pipelines.runtime import Runtime, load_settings


def test_defaults_are_the_contracts(backup_env, monkeypatch):
    monkeypatch.delenv("BACKUP_RETRY_DELAY_S")
    settings = load_settings()
    shared, sources = settings.shared, settings.sources
    assert sources["postgres"].backup_dsn.get_secret_value() == (
        "postgresql://postgres@localhost:5432/postgres"
    )
    assert (sources["redis"].host, sources["redis"].port) == ("localhost", 6379)
    assert sources["rabbitmq"].management_url == "http://localhost:15672"
    assert sources["consul"].http_addr == "http://localhost:8500"
    assert shared.s3_region == "us-east-1" and shared.s3_prefix == "backups"
    assert [sources[s].cron for s in ("postgres", "redis", "rabbitmq", "consul", "documents")] == [
        "0 * * * *",
        "15 * * * *",
        "30 2 * * *",
        "45 2 * * *",
        "0 3 * * *",
    ]
    assert (shared.retention_daily, shared.retention_weekly) == (7, 4)
    assert (shared.retention_monthly, shared.retention_yearly) == (12, "unlimited")
    assert shared.retention_days is None
    assert shared.retry_delay_s == 30
    assert sources["postgres"].databases == [] and shared.encryption_recipients == []
    assert not shared.s3_enabled


def test_empty_strings_count_as_unset_and_aliases_work(backup_env, monkeypatch):
    monkeypatch.setenv("BACKUP_REDIS_PORT", "")
    monkeypatch.setenv("BACKUP_S3_ENDPOINT", "http://minio:9000")
    monkeypatch.setenv("DOCUMENTS_STORAGE_ROOT", "/srv/documents")
    monkeypatch.setenv("BACKUP_POSTGRES_DATABASES", "crm, billing ,")
    monkeypatch.setenv("BACKUP_RETENTION_YEARLY", "3")
    settings = load_settings()
    assert settings.sources["redis"].port == 6379
    assert settings.shared.s3_endpoint_url == "http://minio:9000"
    assert settings.sources["documents"].root == Path("/srv/documents")
    assert settings.sources["postgres"].databases == ["crm", "billing"]
    assert settings.shared.retention_yearly == 3


def test_s3_needs_bucket_and_both_keys(backup_env, monkeypatch):
    monkeypatch.setenv("BACKUP_S3_BUCKET", "backups")
    monkeypatch.setenv("BACKUP_S3_ACCESS_KEY", "key")
    assert not load_settings().shared.s3_enabled
    monkeypatch.setenv("BACKUP_S3_SECRET_KEY", "secret")
    assert load_settings().shared.s3_enabled


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("BACKUP_REDIS_PORT", "six-three-seven-nine", "valid integer"),
        ("BACKUP_REDIS_PORT", "70000", "less than or equal to 65535"),
        ("BACKUP_RETENTION_WEEKLY", "forever", "whole number of snapshots or 'unlimited'"),
        ("BACKUP_RETENTION_DAILY", "-1", "whole number of snapshots or 'unlimited'"),
        ("BACKUP_RETENTION_DAYS", "a week", "valid integer"),
        ("BACKUP_POSTGRES_CRON", "every hour", "not a valid cron expression"),
        ("BACKUP_ENCRYPTION_RECIPIENTS", "age1-not-a-key", "recipient 1 is not an age public key"),
        ("BACKUP_VERIFY_CRON", "nightly", "not a valid cron expression"),
        ("BACKUP_CONSUL_CRON", "0 0 30 2 *", "a day February never has"),
        ("BACKUP_S3_ENDPOINT_URL", "http://minio:s3cr3t-pw@minio:9000", "user or password"),
        ("BACKUP_S3_ENDPOINT_URL", "minio:9000", "http:// or https:// URL with a host"),
        ("BACKUP_POSTGRES_BACKUP_DSN", "127.0.0.1:5432", "neither a postgresql:// URL nor"),
        ("BACKUP_POSTGRES_BACKUP_DSN", "mysql://root:pw@db/crm", "must be a postgresql:// URL"),
        ("BACKUP_POSTGRES_DRILL_DSN", "scratch-db", "neither a postgresql:// URL nor"),
        ("BACKUP_DATABASE_URL", "sqlite:///dagster.db", "must be a postgresql:// URL"),
        ("BACKUP_RABBITMQ_URL", "guest:guest@localhost:5672", "amqp:// or amqps:// URL"),
        ("BACKUP_RABBITMQ_MANAGEMENT_URL", "localhost:15672", "http:// or https:// URL"),
        ("BACKUP_CONSUL_HTTP_ADDR", "consul:8500", "http:// or https:// URL"),
        ("BACKUP_CONSUL_HTTP_ADDR", "http://:8500", "http:// or https:// URL with a host"),
        ("BACKUP_POSTGRES_DSN", "postgresql://db/crm", "not a setting (did you mean"),
        ("BACKUP_S3_BUKET", "backups", "not a setting (did you mean BACKUP_S3_BUCKET"),
        ("BACKUP_NOTIFY_URLS", "json://h/x,slakc://T/B/C", "URL 2 is not one apprise can"),
        ("BACKUP_NOTIFY_EVENTS", "backup.faild", "entry 1 is not an event"),
    ],
)
def test_bad_values_name_the_variable(backup_env, monkeypatch, variable, value, complaint):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as failure:
        load_settings()
    message = str(failure.value)
    assert f"{variable}: " in message and complaint in message
    assert value not in message


def test_a_misspelled_dsn_names_the_setting_it_missed(backup_env, monkeypatch):
    monkeypatch.setenv("BACKUP_POSTGRES_DSN", "postgresql://db:5999/crm")
    with pytest.raises(ConfigurationError, match="BACKUP_POSTGRES_BACKUP_DSN"):
        load_settings()


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://backup:pw@db:5432/postgres?sslmode=require",
        "postgres:///postgres?host=/var/run/postgresql",
        "host=db port=5432 user=backup dbname=postgres",
        r"host=db password='it\'s a secret' dbname=postgres",
    ],
)
def test_every_form_of_dsn_postgresql_takes_is_accepted(backup_env, monkeypatch, dsn):
    monkeypatch.setenv("BACKUP_POSTGRES_BACKUP_DSN", dsn)
    assert load_settings().sources["postgres"].backup_dsn.get_secret_value() == dsn


def test_a_kind_is_turned_off_without_a_targets_file(backup_env, monkeypatch):
    monkeypatch.setenv("BACKUP_CONSUL_ENABLED", "false")
    runtime = Runtime(load_settings())
    assert "consul" in runtime.sources  # its snapshots are still listed and restored
    assert "consul" not in {source.name for source in runtime.backed_up}
    definitions = build_definitions(runtime)
    assert not any("consul" in job.name for job in definitions.jobs)
    assert not any("consul" in schedule.name for schedule in definitions.schedules)


def test_every_bad_value_is_named_at_once(backup_env, monkeypatch):
    monkeypatch.setenv("BACKUP_REDIS_PORT", "0")
    monkeypatch.setenv("BACKUP_RETENTION_DAILY", "often")
    with pytest.raises(ConfigurationError) as failure:
        load_settings()
    assert "BACKUP_REDIS_PORT: " in str(failure.value)
    assert "BACKUP_RETENTION_DAILY: " in str(failure.value)


def test_valid_recipients_are_accepted(backup_env, monkeypatch):
    keys = [str(x25519.Identity.generate().to_public()) for _ in range(2)]
    monkeypatch.setenv("BACKUP_ENCRYPTION_RECIPIENTS", ",".join(keys))
    assert load_settings().shared.encryption_recipients == keys


def test_secrets_do_not_print(backup_env, monkeypatch):
    monkeypatch.setenv("BACKUP_POSTGRES_BACKUP_DSN", "postgresql://app:hunter2@db:5432/crm")
    monkeypatch.setenv("BACKUP_S3_SECRET_KEY", "s3-hunter2")
    monkeypatch.setenv("BACKUP_RESTIC_PASSWORD", "restic-hunter2")
    settings = load_settings()
    dumps = [model.model_dump() for model in (settings.shared, *settings.sources.values())]
    assert "hunter2" not in repr(settings) and "hunter2" not in str(dumps)
    assert {"hunter2", "s3-hunter2", "restic-hunter2"} <= set(settings.secret_values())


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://app:hunter2@db:5432/crm", "postgresql://app:***@db:5432/crm"),
        ("postgresql://app@db/crm", "postgresql://app@db/crm"),
        ("amqp://guest:guest@[::1]:5672/%2F", "amqp://guest:***@[::1]:5672/%2F"),
        (
            "host=db user=app password=hunter2 dbname=crm",
            "host=db user=app password=*** dbname=crm",
        ),
        ("host=db password='hun ter2' dbname=crm", "host=db password=*** dbname=crm"),
    ],
)
def test_dsns_print_with_the_password_masked(dsn, shown):
    assert mask_url(dsn) == shown


def test_a_password_quoted_alone_is_masked_too():
    parts = secret_parts("postgresql://app:hunter2@db/crm")
    assert redact("FATAL: password hunter2 rejected", parts) == "FATAL: password *** rejected"
    keyword = secret_parts("host=db password='hun ter2'")
    assert redact("saw hun ter2", keyword) == "saw ***"
