"""One asset per backed-up system; each materialization is one complete snapshot.

An asset stages its snapshot and returns it; the IO manager commits it to
the store and records the metadata. Errors an operator must fix (a wrong
password, a database that does not exist) fail at once; errors that may
pass (a server restarting) are retried with backoff.
"""

from pathlib import Path

from dagster import (
    AssetExecutionContext,
    Backoff,
    Failure,
    Jitter,
    RetryPolicy,
    asset,
)

from backup_pipelines.errors import ConfigurationError
from backup_pipelines.resources import (
    ConsulResource,
    DocumentsResource,
    PostgresResource,
    RabbitMQResource,
    RedisResource,
    SnapshotPipeline,
)
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.sources.consul.api import ConsulRefused
from backup_pipelines.sources.consul.dump import dump_consul
from backup_pipelines.sources.documents.backup import backup_documents
from backup_pipelines.sources.postgres.cluster import PostgresRefused
from backup_pipelines.sources.postgres.dump import dump_cluster
from backup_pipelines.sources.rabbitmq.api import RabbitRefused
from backup_pipelines.sources.rabbitmq.dump import dump_definitions
from backup_pipelines.sources.redis.dump import dump_server
from backup_pipelines.sources.redis.server import RedisRefused

TRANSIENT_RETRIES = RetryPolicy(
    max_retries=3, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


@asset(
    group_name="backups",
    kinds={"postgres"},
    pool="postgres",
    retry_policy=TRANSIENT_RETRIES,
    description="Every database of the cluster (custom-format dumps) and its roles (globals.sql).",
)
def postgres_backup(
    context: AssetExecutionContext, snapshot_pipeline: SnapshotPipeline, postgres: PostgresResource
) -> StagedSnapshot:
    try:
        with snapshot_pipeline.stage(context, "postgres") as staged:
            dump_cluster(staged, postgres.cluster(), postgres.databases, log=context.log.info)
    except (PostgresRefused, ConfigurationError) as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    return staged


@asset(
    group_name="backups",
    kinds={"redis"},
    pool="redis",
    retry_policy=TRANSIENT_RETRIES,
    description="The RDB, taken over the replication protocol, and AOF files when the data "
    "dir is readable.",
)
def redis_backup(
    context: AssetExecutionContext, snapshot_pipeline: SnapshotPipeline, redis: RedisResource
) -> StagedSnapshot:
    data_dir = Path(redis.data_dir) if redis.data_dir else None
    try:
        with snapshot_pipeline.stage(context, "redis") as staged:
            dump_server(staged, redis.server(), data_dir, log=context.log.info)
    except RedisRefused as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    return staged


@asset(
    group_name="backups",
    kinds={"rabbitmq"},
    pool="rabbitmq",
    retry_policy=TRANSIENT_RETRIES,
    description="The broker's definitions: vhosts, users, permissions, parameters, policies, "
    "queues, exchanges and bindings (not messages).",
)
def rabbitmq_backup(
    context: AssetExecutionContext, snapshot_pipeline: SnapshotPipeline, rabbitmq: RabbitMQResource
) -> StagedSnapshot:
    try:
        with snapshot_pipeline.stage(context, "rabbitmq") as staged:
            dump_definitions(staged, rabbitmq.api(), log=context.log.info)
    except RabbitRefused as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    return staged


@asset(
    group_name="backups",
    kinds={"consul"},
    pool="consul",
    retry_policy=TRANSIENT_RETRIES,
    description="Consul's snapshot archive (the whole Raft state) and a JSON export of the KV.",
)
def consul_backup(
    context: AssetExecutionContext, snapshot_pipeline: SnapshotPipeline, consul: ConsulResource
) -> StagedSnapshot:
    try:
        with snapshot_pipeline.stage(context, "consul") as staged:
            dump_consul(staged, consul.api(), log=context.log.info)
    except ConsulRefused as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    return staged


@asset(
    group_name="backups",
    kinds={"restic"},
    pool="documents",
    retry_policy=TRANSIENT_RETRIES,
    description="The documents tree, incremental and deduplicated in a restic repository kept "
    "in the same store.",
)
def documents_backup(
    context: AssetExecutionContext,
    snapshot_pipeline: SnapshotPipeline,
    documents: DocumentsResource,
) -> StagedSnapshot:
    try:
        with snapshot_pipeline.stage(context, "documents") as staged:
            backup_documents(staged, documents.root_path, documents.restic(), log=context.log.info)
    except ConfigurationError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    return staged
