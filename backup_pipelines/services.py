"""The services the shared `BACKUP_*` settings build: the store (S3 when a bucket and both keys
are set, the local disk otherwise), the staging area, the audit trail, the event publisher
and the age keys.

`Runtime` (`runtime.py`) adds the sources to these for the command and the
Dagster definitions; `wal-push`, which PostgreSQL runs once per WAL file,
builds only these, without importing the sources.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from pyrage import x25519

from backup_pipelines.records.audit import AuditLog
from backup_pipelines.records.verdicts import Verdicts
from backup_pipelines.settings import BackupSettings, read_settings, secret_values
from backup_pipelines.snapshot.encryption import identities_for, parse_recipients
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.snapshot.staging import Staging
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot
from backup_pipelines.storage.layout import OUTBOX

if TYPE_CHECKING:
    from backup_pipelines.events.outbox import EventPublisher

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


class Services:
    """What the shared settings build: the store, the staging area, the audit trail, the
    events and the age keys. `secrets` (the configured ones, and those an operator typed
    on the command line) are masked in every audit record and event."""

    def __init__(self, shared: BackupSettings, secrets: Sequence[str]):
        self.shared = shared
        self.secrets = list(secrets)
        self.staging = Staging(shared.staging_dir, parse_recipients(shared.encryption_recipients))

    @cached_property
    def store(self) -> SnapshotStore:
        return build_store(self.shared)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.store.backend, self.secrets)

    @cached_property
    def verdicts(self) -> Verdicts:
        return Verdicts(self.store.backend)

    @cached_property
    def events(self) -> EventPublisher:
        from backup_pipelines.events.outbox import EventPublisher  # pika only where it is used

        return EventPublisher(
            self.shared.rabbitmq_url.get_secret_value(), self.shared.artifacts_dir / OUTBOX
        )

    def identities(self, snapshot: StoredSnapshot) -> list[x25519.Identity]:
        """The age identities that read `snapshot`: none when it is in the clear."""
        return identities_for(snapshot.manifest.encryption, self.shared.age_identity_file)

    def reader(self, snapshot: StoredSnapshot, purpose: str) -> SnapshotReader:
        """`snapshot` ready to read, with scratch space under staging for `purpose`."""
        return SnapshotReader(
            self.store, snapshot, self.staging.work_dir(purpose), self.identities(snapshot)
        )


def load_services() -> Services:
    """The services alone, from the shared `BACKUP_*` variables (the sources' are not read)."""
    shared = read_settings(BackupSettings)
    return Services(shared, secret_values(shared))
