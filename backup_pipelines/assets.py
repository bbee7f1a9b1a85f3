"""One asset per backed-up system; each materialization is one complete snapshot.

An asset stages its snapshot and returns it; the IO manager commits it to
the store, records the metadata and publishes `backup.completed`. Errors
an operator must fix (a wrong password, a database that does not exist)
fail at once; errors that may pass (a server restarting) are retried with
backoff; a step that fails for good publishes `backup.failed`.
"""

from collections.abc import Callable
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Backoff,
    Failure,
    Jitter,
    RetryPolicy,
    asset,
)

from backup_pipelines.errors import PERMANENT_ERRORS
from backup_pipelines.notifications import NotificationPublisher, event_body, publish_backup_failure
from backup_pipelines.resources import (
    ConsulResource,
    DocumentsResource,
    PostgresResource,
    RabbitMQResource,
    RedisResource,
    SnapshotPipeline,
)
from backup_pipelines.settings import load_settings
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.sources.consul.dump import dump_consul
from backup_pipelines.sources.documents.backup import backup_documents
from backup_pipelines.sources.postgres.dump import dump_cluster
from backup_pipelines.sources.rabbitmq.dump import dump_definitions
from backup_pipelines.sources.redis.dump import dump_server

TRANSIENT_RETRIES = RetryPolicy(
    max_retries=3,
    delay=load_settings().retry_delay_s,  # 30, 60, 120 s by default
    backoff=Backoff.EXPONENTIAL,
    jitter=Jitter.PLUS_MINUS,
)
BACKUP_ASSET = {
    "group_name": "backups",
    "retry_policy": TRANSIENT_RETRIES,
    "hooks": {publish_backup_failure},
}


def crm_system(source: str, kind: str, description: str) -> AssetSpec:
    """A live system of the CRM, upstream of its backup in the asset graph.

    Dagster does not materialize these (the CRM writes them); they are here so
    the lineage shows operators which system each backup copies.
    """
    return AssetSpec(
        key=AssetKey(["crm", source]), group_name="crm", kinds={kind}, description=description
    )


crm_postgres = crm_system("postgres", "postgres", "The CRM's PostgreSQL cluster.")
crm_redis = crm_system("redis", "redis", "The CRM's Redis server.")
crm_rabbitmq = crm_system("rabbitmq", "rabbitmq", "The CRM's RabbitMQ broker.")
crm_consul = crm_system("consul", "consul", "The CRM's Consul cluster.")
crm_documents = crm_system("documents", "files", "The CRM's documents file tree.")
CRM_SYSTEMS = [crm_postgres, crm_redis, crm_rabbitmq, crm_consul, crm_documents]


def run_backup(
    context: AssetExecutionContext,
    source: str,
    snapshot_pipeline: SnapshotPipeline,
    notifications: NotificationPublisher,
    dump: Callable[[StagedSnapshot], None],
) -> StagedSnapshot:
    """The shape every backup shares: announce, stage, dump, and say plainly what to fix."""
    if context.retry_number == 0:
        notifications.publish(event_body("backup.started", source, context.run.run_id))
    try:
        with snapshot_pipeline.stage(context, source) as staged:
            dump(staged)
    except PERMANENT_ERRORS as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    return staged


@asset(
    **BACKUP_ASSET,
    deps=[crm_postgres],
    kinds={"postgres"},
    pool="postgres",
    description="Every database of the cluster (custom-format dumps) and its roles (globals.sql).",
)
def postgres_backup(
    context: AssetExecutionContext,
    snapshot_pipeline: SnapshotPipeline,
    notifications: NotificationPublisher,
    postgres: PostgresResource,
) -> StagedSnapshot:
    return run_backup(
        context,
        "postgres",
        snapshot_pipeline,
        notifications,
        lambda staged: dump_cluster(
            staged, postgres.cluster(), postgres.databases, log=context.log.info
        ),
    )


@asset(
    **BACKUP_ASSET,
    deps=[crm_redis],
    kinds={"redis"},
    pool="redis",
    description="The RDB, taken over the replication protocol, and AOF files when the data "
    "dir is readable.",
)
def redis_backup(
    context: AssetExecutionContext,
    snapshot_pipeline: SnapshotPipeline,
    notifications: NotificationPublisher,
    redis: RedisResource,
) -> StagedSnapshot:
    data_dir = Path(redis.data_dir) if redis.data_dir else None
    return run_backup(
        context,
        "redis",
        snapshot_pipeline,
        notifications,
        lambda staged: dump_server(staged, redis.server(), data_dir, log=context.log.info),
    )


@asset(
    **BACKUP_ASSET,
    deps=[crm_rabbitmq],
    kinds={"rabbitmq"},
    pool="rabbitmq",
    description="The broker's definitions: vhosts, users, permissions, parameters, policies, "
    "queues, exchanges and bindings (not messages).",
)
def rabbitmq_backup(
    context: AssetExecutionContext,
    snapshot_pipeline: SnapshotPipeline,
    notifications: NotificationPublisher,
    rabbitmq: RabbitMQResource,
) -> StagedSnapshot:
    return run_backup(
        context,
        "rabbitmq",
        snapshot_pipeline,
        notifications,
        lambda staged: dump_definitions(staged, rabbitmq.api(), log=context.log.info),
    )


@asset(
    **BACKUP_ASSET,
    deps=[crm_consul],
    kinds={"consul"},
    pool="consul",
    description="Consul's snapshot archive (the whole Raft state) and a JSON export of the KV.",
)
def consul_backup(
    context: AssetExecutionContext,
    snapshot_pipeline: SnapshotPipeline,
    notifications: NotificationPublisher,
    consul: ConsulResource,
) -> StagedSnapshot:
    return run_backup(
        context,
        "consul",
        snapshot_pipeline,
        notifications,
        lambda staged: dump_consul(staged, consul.api(), log=context.log.info),
    )


@asset(
    **BACKUP_ASSET,
    deps=[crm_documents],
    kinds={"restic"},
    pool="documents",
    description="The documents tree, incremental and deduplicated in a restic repository kept "
    "in the same store.",
)
def documents_backup(
    context: AssetExecutionContext,
    snapshot_pipeline: SnapshotPipeline,
    notifications: NotificationPublisher,
    documents: DocumentsResource,
) -> StagedSnapshot:
    return run_backup(
        context,
        "documents",
        snapshot_pipeline,
        notifications,
        lambda staged: backup_documents(
            staged, documents.root_path, documents.restic(), log=context.log.info
        ),
    )
