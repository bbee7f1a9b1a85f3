"""Dagster resources shared by every backup asset."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from dagster import AssetExecutionContext, ConfigurableResource

from backup_pipelines.snapshot.encryption import parse_recipients
from backup_pipelines.snapshot.staging import StagedSnapshot, stage


class SnapshotPipeline(ConfigurableResource):
    """Where snapshots are assembled, and to which age recipients they are encrypted.

    Recipients are public keys, so they may be shown in the UI; the private
    identity is only ever read from `BACKUP_AGE_IDENTITY_FILE` at restore time.
    """

    staging_dir: str
    encryption_recipients: list[str] = []

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
