"""Dagster resources: the snapshot pipeline every asset shares, and each source's connection."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from dagster import AssetExecutionContext, ConfigurableResource

from backup_pipelines.errors import ConfigurationError
from backup_pipelines.snapshot.encryption import parse_recipients
from backup_pipelines.snapshot.staging import StagedSnapshot, stage
from backup_pipelines.sources.consul.api import ConsulApi
from backup_pipelines.sources.documents.restic import ResticRepository
from backup_pipelines.sources.postgres.cluster import Cluster
from backup_pipelines.sources.rabbitmq.api import ManagementApi
from backup_pipelines.sources.redis.server import RedisServer


class SnapshotPipeline(ConfigurableResource):
    """Where snapshots are assembled, and to which age recipients they are encrypted.

    Recipients are public keys, so they may be shown in the UI; the private
    identity is only ever read from `BACKUP_AGE_IDENTITY_FILE` at restore time.
    """

    staging_dir: str
    encryption_recipients: list[str] = []
    age_identity_file: str | None = None

    @property
    def identity_file(self) -> Path | None:
        return Path(self.age_identity_file) if self.age_identity_file else None

    def work_dir(self, purpose: str) -> Path:
        """Scratch space next to staging, for restores and drills."""
        return Path(self.staging_dir) / purpose

    def stage(
        self, context: AssetExecutionContext, source: str
    ) -> AbstractContextManager[StagedSnapshot]:
        """A staging area for one snapshot of `source`; progress goes to the run's log."""
        return stage(
            Path(self.staging_dir),
            source,
            context.run.run_id,
            recipients=parse_recipients(self.encryption_recipients),
            progress=context.log.info,
        )


class PostgresResource(ConfigurableResource):
    """The PostgreSQL cluster to back up.

    The DSN may hold a password, so the definitions pass it as an `EnvVar`
    and the UI shows the variable's name only.
    """

    dsn: str
    databases: list[str] = []

    def cluster(self) -> Cluster:
        return Cluster(self.dsn)


class RedisResource(ConfigurableResource):
    """The Redis server to back up; the password comes as an `EnvVar`."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    data_dir: str | None = None

    def server(self) -> RedisServer:
        return RedisServer(self.host, self.port, self.username, self.password or None)


class RabbitMQResource(ConfigurableResource):
    """The broker's management API; the admin password comes as an `EnvVar`."""

    management_url: str
    admin_user: str
    admin_password: str

    def api(self) -> ManagementApi:
        return ManagementApi(self.management_url, self.admin_user, self.admin_password)


class ConsulResource(ConfigurableResource):
    """The Consul agent; the ACL token comes as an `EnvVar` and travels only in a header."""

    http_addr: str
    token: str | None = None

    def api(self) -> ConsulApi:
        return ConsulApi(self.http_addr, self.token or None)


class DocumentsResource(ConfigurableResource):
    """The documents tree and its restic repository; password and S3 keys come as `EnvVar`s."""

    root: str | None = None
    repository: str
    restic_password: str = ""
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"

    @property
    def root_path(self) -> Path | None:
        return Path(self.root) if self.root else None

    def restic(self) -> ResticRepository:
        if not self.restic_password:
            raise ConfigurationError("BACKUP_RESTIC_PASSWORD is required for the documents source")
        return ResticRepository(
            self.repository,
            self.restic_password,
            self.s3_access_key or None,
            self.s3_secret_key or None,
            self.s3_region,
        )
