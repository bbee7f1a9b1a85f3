"""The snapshot format, the streaming pipeline that builds it, and the stores that keep it."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from backup_pipelines.settings import BackupSettings
from backup_pipelines.snapshot.local_store import LocalSnapshotStore
from backup_pipelines.snapshot.s3_store import S3SnapshotStore
from backup_pipelines.snapshot.store import SnapshotStore

logger = logging.getLogger(__name__)


@cache
def warn_local_store(root: Path) -> None:
    """Said once per process: an operator who meant to use S3 must notice."""
    logger.warning(
        "S3 is not configured (BACKUP_S3_BUCKET, BACKUP_S3_ACCESS_KEY and BACKUP_S3_SECRET_KEY "
        "are needed): snapshots are kept in the local store %s",
        root,
    )


def store_from_settings(settings: BackupSettings) -> SnapshotStore:
    """S3 when a bucket and both keys are set, the local store otherwise."""
    if settings.s3_enabled:
        assert settings.s3_bucket and settings.s3_access_key and settings.s3_secret_key
        return S3SnapshotStore(
            bucket=settings.s3_bucket,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            prefix=settings.s3_prefix,
        )
    warn_local_store(settings.artifacts_dir)
    return LocalSnapshotStore(settings.artifacts_dir)
