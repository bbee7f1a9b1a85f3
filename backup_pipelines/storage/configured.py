"""The store the settings name: S3 when a bucket and both keys are set, the local disk otherwise.

Kept apart from the composition root (`runtime.py`) so that `wal-push`, run
by PostgreSQL once per WAL file, builds its store without importing the
sources.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from backup_pipelines.settings import BackupSettings
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


def build_store(shared: BackupSettings) -> SnapshotStore:
    """S3 when a bucket and both keys are set, the local store otherwise."""
    if shared.s3_enabled:
        from backup_pipelines.storage.s3 import ObjectLock, S3Backend  # boto3 only for S3

        assert shared.s3_bucket and shared.s3_access_key and shared.s3_secret_key
        days, mode = shared.s3_object_lock_days, shared.s3_object_lock_mode
        prune = (shared.s3_prune_access_key, shared.s3_prune_secret_key)
        return SnapshotStore(
            S3Backend(
                bucket=shared.s3_bucket,
                access_key=shared.s3_access_key.get_secret_value(),
                secret_key=shared.s3_secret_key.get_secret_value(),
                endpoint_url=shared.s3_endpoint_url,
                region=shared.s3_region,
                prefix=shared.s3_prefix,
                object_lock=ObjectLock(mode, days) if days else None,
                prune_keys=(
                    (prune[0].get_secret_value(), prune[1].get_secret_value())
                    if prune[0] and prune[1]
                    else None
                ),
            )
        )
    from backup_pipelines.storage.local import LocalBackend

    warn_local_store(shared.artifacts_dir)
    return SnapshotStore(LocalBackend(shared.artifacts_dir))
