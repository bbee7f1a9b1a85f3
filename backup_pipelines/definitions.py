"""The one `Definitions` object of the code location `backup_pipelines.definitions`.

Settings are read here, at load time, so a wrong `BACKUP_*` value stops the
code location from loading with a message naming the variable, rather than
failing the first backup at night.
"""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job, in_process_executor

from backup_pipelines.io_managers import io_manager_from_settings
from backup_pipelines.resources import SnapshotPipeline
from backup_pipelines.settings import load_settings

settings = load_settings()

backup_assets: list = []

backup_all_job = define_asset_job(
    "backup_all_job",
    selection=AssetSelection.groups("backups"),
    executor_def=in_process_executor,
    description="A snapshot of every source, one after the other.",
)

defs = Definitions(
    assets=backup_assets,
    jobs=[backup_all_job],
    resources={
        "io_manager": io_manager_from_settings(settings),
        "snapshot_pipeline": SnapshotPipeline(
            staging_dir=str(settings.staging_dir),
            encryption_recipients=settings.encryption_recipients,
        ),
    },
)
