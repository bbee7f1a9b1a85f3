"""The Dagster names of a source's definitions, made in one place from its name.

Asset keys, jobs, schedules, sensors and pools are all derived from the
source's name here (and read back here), so no other module builds or
parses them from string suffixes.
"""

from __future__ import annotations

from dagster import AssetKey

from backup_pipelines.sources.registry import SOURCE_NAMES

BACKUPS_GROUP = "backups"
CRM_GROUP = "crm"
VERIFICATION_GROUP = "verification"
ALL_SOURCES = "all"
BACKUP_ALL_JOB = "backup_all_job"
VERIFICATION_JOB = "verification_job"


def backup_asset_key(source: str) -> AssetKey:
    return AssetKey(f"{source}_backup")


def verification_asset_key(source: str) -> AssetKey:
    """The drill of the source's latest snapshot, downstream of its backup."""
    return AssetKey(f"{source}_verification")


def crm_asset_key(source: str) -> AssetKey:
    """The live system upstream of the backup: `crm/<source>`."""
    return AssetKey([CRM_GROUP, source])


def backup_job_name(source: str) -> str:
    return f"{source}_backup_job"


def schedule_name(source: str) -> str:
    return f"{source}_backup_schedule"


def change_sensor_name(source: str) -> str:
    return f"{source}_change_sensor"


def pool_name(source: str) -> str:
    """One run per source at a time: `dagster.yaml` limits every pool to 1."""
    return source


def backup_step_key(source: str) -> str:
    """The step that runs the backup asset in a run (its op's name)."""
    return backup_asset_key(source).to_python_identifier()


def source_of_asset(key: AssetKey) -> str | None:
    """The source a backup asset copies; None for any other asset."""
    return next((source for source in SOURCE_NAMES if backup_asset_key(source) == key), None)
