"""`restore_job`: the CLI's restore, launched from the Dagster UI with run config.

Run config is visible in the UI and stored with the run: give a target
without a password and let the Dagster process find it (PGPASSFILE or
PGPASSWORD in its environment for PostgreSQL).
"""

from dagster import (
    Config,
    Failure,
    OpExecutionContext,
    ResourceParam,
    job,
    op,
)
from pydantic import Field

from backup_pipelines.errors import BackupError
from backup_pipelines.io_managers import SnapshotIOManager
from backup_pipelines.notifications import NotificationPublisher, event_body
from backup_pipelines.redaction import mask_url
from backup_pipelines.resources import SnapshotPipeline
from backup_pipelines.snapshot.encryption import identities_for
from backup_pipelines.snapshot.store import LATEST
from backup_pipelines.sources import RestoreRequest, registered_sources


class RestoreConfig(Config):
    source: str = Field(description="postgres, redis, rabbitmq or consul")
    snapshot: str = Field(LATEST, description="a snapshot id, or latest")
    target: str | None = Field(
        None, description="postgres: a DSN without password; redis: a redis:// URL"
    )
    force: bool = Field(False, description="replace a target that is not empty")
    database: str | None = Field(None, description="postgres: only this database of the snapshot")
    include_globals: bool = Field(False, description="postgres: create the roles first")
    output_dir: str | None = Field(None, description="redis: write the RDB files here instead")
    vhost: str | None = Field(None, description="rabbitmq: restore this vhost only")
    snapshot_restore: bool = Field(
        False, description="consul: upload Consul's own archive instead of the KV store"
    )


@op
def restore_snapshot(
    context: OpExecutionContext,
    config: RestoreConfig,
    io_manager: ResourceParam[SnapshotIOManager],
    snapshot_pipeline: SnapshotPipeline,
    notifications: NotificationPublisher,
) -> None:
    sources = registered_sources()
    if config.source not in sources:
        raise Failure(
            description=f"cannot restore {config.source!r}: choose one of {', '.join(sources)}",
            allow_retries=False,
        )
    options = {
        "database": config.database,
        "include_globals": config.include_globals,
        "output_dir": config.output_dir,
        "vhost": config.vhost,
        "snapshot_restore": config.snapshot_restore,
    }
    store = io_manager.build_store()
    try:
        snapshot = store.find(config.source, config.snapshot)
        identities = identities_for(snapshot.manifest.encryption, snapshot_pipeline.identity_file)
    except BackupError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    snapshot_id = snapshot.snapshot_id
    request = RestoreRequest(
        snapshot=snapshot,
        target=config.target,
        force=config.force,
        work_dir=snapshot_pipeline.work_dir("restore"),
        identities=identities,
        options={key: value for key, value in options.items() if value is not None},
        log=context.log.info,
    )
    where = mask_url(config.target) if config.target else config.output_dir
    context.log.info(f"restoring {config.source} {snapshot_id} into {where}")
    try:
        summary = sources[config.source].restore(request, store)
    except BackupError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    context.log.info(summary)
    body = event_body("backup.restored", config.source, context.run_id)
    body.update(snapshot_id=snapshot_id, location=where)
    notifications.publish(body)


@job(description="Restore one snapshot into a target.")
def restore_job() -> None:
    restore_snapshot()
