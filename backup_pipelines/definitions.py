"""The one `Definitions` object of the code location `backup_pipelines.definitions`.

Settings are read here, at load time, so a wrong `BACKUP_*` value stops the
code location from loading with a message naming the variable, rather than
failing the first backup at night.
"""

import os

from dagster import (
    AssetsDefinition,
    AssetSelection,
    Definitions,
    EnvVar,
    define_asset_job,
    in_process_executor,
)

from backup_pipelines.assets import (
    CRM_SYSTEMS,
    consul_backup,
    documents_backup,
    postgres_backup,
    rabbitmq_backup,
    redis_backup,
)
from backup_pipelines.checks import (
    integrity_check,
    postgres_restore_drill,
    problems_check,
    redis_restore_drill,
    restic_checks,
)
from backup_pipelines.io_managers import io_manager_from_settings
from backup_pipelines.notifications import NotificationPublisher
from backup_pipelines.resources import (
    ConsulResource,
    DocumentsResource,
    PostgresResource,
    RabbitMQResource,
    RedisResource,
    SnapshotPipeline,
)
from backup_pipelines.restore import restore_job
from backup_pipelines.retention_job import retention_job
from backup_pipelines.schedules import backup_schedule, freshness_for, retention_schedule
from backup_pipelines.sensors import (
    backup_requests_sensor,
    backup_run_failure_sensor,
    documents_change_sensor,
    notifications_outbox_sensor,
)
from backup_pipelines.settings import BackupSettings, env_name, load_settings
from backup_pipelines.sources import registered_sources
from backup_pipelines.sources.documents.backup import repository_location

RESTIC_READ_DATA_SUBSET = "5%"  # every pack read within about a month of nightly checks
OUTBOX_NAME = ".outbox.sqlite"

backup_assets = {
    "postgres": postgres_backup,
    "redis": redis_backup,
    "rabbitmq": rabbitmq_backup,
    "consul": consul_backup,
    "documents": documents_backup,
}

backup_all_job = define_asset_job(
    "backup_all_job",
    selection=AssetSelection.groups("backups"),
    description="A snapshot of every source, one after the other.",
)
source_jobs = {
    source: define_asset_job(
        f"{source}_backup_job",
        selection=AssetSelection.assets(asset),
        description=f"A {source} snapshot.",
    )
    for source, asset in backup_assets.items()
}


def secret_config(field: str) -> str | EnvVar:
    """An `EnvVar` when the operator set the variable (the UI shows its name, never its value),
    else the contract's default, which holds no secret."""
    name = env_name(field)
    if os.environ.get(name):
        return EnvVar(name)
    return getattr(BackupSettings.model_fields[field].default, "get_secret_value", lambda: "")()


def not_configured(source: str, settings: BackupSettings) -> str | None:
    """Why a source cannot be backed up yet, or None (only documents has no defaults)."""
    if source == "documents" and not (settings.documents_root and settings.restic_password):
        return "documents are not configured: set BACKUP_DOCUMENTS_ROOT and BACKUP_RESTIC_PASSWORD"
    return None


def with_freshness(
    source: str, asset: AssetsDefinition, settings: BackupSettings
) -> AssetsDefinition:
    policy = freshness_for(settings.cron_for(source))
    return asset.map_asset_specs(lambda spec: spec.replace_attributes(freshness_policy=policy))


def build_resources(settings: BackupSettings) -> dict[str, object]:
    notifications = NotificationPublisher(
        rabbitmq_url=secret_config("rabbitmq_url"),
        outbox_path=str(settings.artifacts_dir / OUTBOX_NAME),
    )
    identity_file = settings.age_identity_file
    return {
        "io_manager": io_manager_from_settings(settings, notifications),
        "notifications": notifications,
        "snapshot_pipeline": SnapshotPipeline(
            staging_dir=str(settings.staging_dir),
            encryption_recipients=settings.encryption_recipients,
            age_identity_file=str(identity_file) if identity_file else None,
        ),
        "postgres": PostgresResource(
            dsn=secret_config("postgres_backup_dsn"), databases=settings.postgres_databases
        ),
        "redis": RedisResource(
            host=settings.redis_host,
            port=settings.redis_port,
            username=settings.redis_username,
            password=secret_config("redis_password"),
            data_dir=str(settings.redis_data_dir) if settings.redis_data_dir else None,
        ),
        "rabbitmq": RabbitMQResource(
            management_url=settings.rabbitmq_management_url,
            admin_user=settings.rabbitmq_admin_user,
            admin_password=secret_config("rabbitmq_admin_password"),
        ),
        "consul": ConsulResource(
            http_addr=settings.consul_http_addr, token=secret_config("consul_token") or None
        ),
        "documents": DocumentsResource(
            root=str(settings.documents_root) if settings.documents_root else None,
            repository=repository_location(settings),
            restic_password=secret_config("restic_password"),
            s3_access_key=EnvVar("BACKUP_S3_ACCESS_KEY") if settings.s3_enabled else None,
            s3_secret_key=EnvVar("BACKUP_S3_SECRET_KEY") if settings.s3_enabled else None,
            s3_region=settings.s3_region,
        ),
    }


def build_definitions(settings: BackupSettings) -> Definitions:
    """Everything Dagster loads, wired from the settings (tests build their own the same way)."""
    asset_checks = [integrity_check(asset) for asset in backup_assets.values()]
    if settings.postgres_restore_drill:
        asset_checks.append(postgres_restore_drill(postgres_backup))
    asset_checks += [
        redis_restore_drill(redis_backup),
        problems_check(
            rabbitmq_backup,
            "definitions_structure",
            "Parses the latest stored definitions: every section present, counts equal to "
            "those recorded at backup time.",
            registered_sources()["rabbitmq"].deep_verify,
        ),
        problems_check(
            consul_backup,
            "archive_structure",
            "Opens the latest snapshot: Consul's archive must be a gzip'd tar whose SHA256SUMS "
            "match its members, and the KV export must parse with the recorded key count.",
            registered_sources()["consul"].deep_verify,
        ),
        *restic_checks(documents_backup, RESTIC_READ_DATA_SUBSET),
    ]
    schedules = [
        backup_schedule(source, job, settings.cron_for(source), not_configured(source, settings))
        for source, job in source_jobs.items()
    ]
    schedules.append(retention_schedule(retention_job))
    sensors = [
        backup_requests_sensor([backup_all_job, *source_jobs.values()]),
        documents_change_sensor(settings.documents_root, source_jobs["documents"]),
        backup_run_failure_sensor,
        notifications_outbox_sensor,
    ]
    return Definitions(
        assets=[
            *CRM_SYSTEMS,
            *(with_freshness(s, a, settings) for s, a in backup_assets.items()),
        ],
        asset_checks=asset_checks,
        jobs=[backup_all_job, *source_jobs.values(), restore_job, retention_job],
        schedules=schedules,
        sensors=sensors,
        resources=build_resources(settings),
        # Every job, and the UI's Materialize, runs its steps in the run's own process: a
        # subprocess per step costs seconds and buys nothing for steps that mostly wait on a
        # dump tool.
        executor=in_process_executor,
    )


defs = build_definitions(load_settings())
