"""Dagster IO managers that commit staged snapshots to a store and record their metadata.

An asset returns a `StagedSnapshot` (files in the staging area); the IO
manager moves those files, never loading them into memory, writes the
manifest last and attaches the contract's materialization metadata. A
downstream asset receives a `StoredSnapshot`: the manifest and where it is.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any

from dagster import (
    AssetKey,
    ConfigurableIOManager,
    EnvVar,
    Failure,
    InputContext,
    MetadataValue,
    OutputContext,
)

from backup_pipelines.errors import PERMANENT_ERRORS
from backup_pipelines.notifications import NotificationPublisher, event_body
from backup_pipelines.settings import BackupSettings
from backup_pipelines.snapshot import warn_local_store
from backup_pipelines.snapshot.local_store import LocalSnapshotStore
from backup_pipelines.snapshot.s3_store import S3SnapshotStore
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot

ASSET_SUFFIX = "_backup"


def source_of(asset_key: AssetKey) -> str:
    """`postgres_backup` → `postgres`: each backup asset is named after its source."""
    return asset_key.path[-1].removesuffix(ASSET_SUFFIX)


def snapshot_metadata(stored: StoredSnapshot, duration_s: float) -> dict[str, Any]:
    """The contract's materialization metadata, plus the source's own figures."""
    manifest = stored.manifest
    metadata: dict[str, Any] = {
        "snapshot_id": manifest.snapshot_id,
        "location": stored.location,
        "size_bytes": manifest.size_bytes,
        "sha256": stored.manifest_sha256,
        "duration_s": round(duration_s, 3),
        "files": len(manifest.files),
    }
    for key, value in manifest.stats.items():
        plain = isinstance(value, int | float | str | bool)
        metadata[key] = value if plain else MetadataValue.json(value)
    return metadata


class SnapshotIOManager(ConfigurableIOManager):
    """Shared behaviour of the local and S3 IO managers; subclasses say where.

    With `notifications`, each committed snapshot is announced as
    `backup.completed` right after its manifest is written.
    """

    notifications: NotificationPublisher | None = None

    @abstractmethod
    def build_store(self) -> SnapshotStore: ...

    def handle_output(self, context: OutputContext, obj: StagedSnapshot) -> None:
        store = self.build_store()
        try:
            stored = store.commit(obj)
        except PERMANENT_ERRORS as exc:  # a full disk: retrying would fill it again
            raise Failure(description=str(exc), allow_retries=False) from None
        finally:
            obj.discard()
        duration_s = time.monotonic() - obj.monotonic_start
        context.add_output_metadata(snapshot_metadata(stored, duration_s))
        if self.notifications is not None:
            self.notifications.publish(
                event_body(
                    "backup.completed",
                    obj.source,
                    obj.run_id,
                    snapshot=stored,
                    duration_s=duration_s,
                )
            )
        context.log.info(f"{obj.source} snapshot {stored.snapshot_id} stored at {stored.location}")

    def load_input(self, context: InputContext) -> StoredSnapshot:
        assert context.upstream_output is not None
        return self.build_store().find(source_of(context.upstream_output.asset_key))


class LocalSnapshotIOManager(SnapshotIOManager):
    """Snapshots under a local directory (`BACKUP_ARTIFACTS_DIR`)."""

    root: str

    def build_store(self) -> SnapshotStore:
        return LocalSnapshotStore(self.root)


class S3SnapshotIOManager(SnapshotIOManager):
    """Snapshots in an S3 bucket; keys come from the environment, never from UI config."""

    bucket: str
    access_key: str
    secret_key: str
    endpoint_url: str | None = None
    region: str = "us-east-1"
    prefix: str = "backups"

    def build_store(self) -> SnapshotStore:
        return S3SnapshotStore(
            bucket=self.bucket,
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_url=self.endpoint_url,
            region=self.region,
            prefix=self.prefix,
        )


def io_manager_from_settings(
    settings: BackupSettings, notifications: NotificationPublisher | None = None
) -> SnapshotIOManager:
    """S3 when a bucket and both keys are set, the local store otherwise (with one warning).

    The keys are passed as `EnvVar`s so the Dagster UI shows the variable's
    name, never its value.
    """
    if settings.s3_enabled:
        assert settings.s3_bucket is not None
        return S3SnapshotIOManager(
            bucket=settings.s3_bucket,
            access_key=EnvVar("BACKUP_S3_ACCESS_KEY"),
            secret_key=EnvVar("BACKUP_S3_SECRET_KEY"),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            prefix=settings.s3_prefix,
            notifications=notifications,
        )
    warn_local_store(settings.artifacts_dir)
    return LocalSnapshotIOManager(root=str(settings.artifacts_dir), notifications=notifications)
