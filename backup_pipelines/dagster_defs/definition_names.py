"""The Dagster names of a source's definitions, made in one place from its name.

Asset keys, jobs, schedules, sensors and pools are all derived here from the
source's name (`<kind>`, or `<kind>.<target>` for a target of the targets
file), and read back here, so no other module builds or parses them.

A kind's one source keeps the names it always had (`postgres_backup`,
`postgres_backup_job`); a target's asset key has the target as its second
part (`postgres_backup/crm`) and its job, schedule and sensor names carry it
after the kind (`postgres_crm_backup_job`).
"""

from __future__ import annotations

from dagster import AssetKey

from backup_pipelines.sources.registry import KINDS
from backup_pipelines.storage.names import split_source

BACKUPS_GROUP = "backups"
CRM_GROUP = "crm"
VERIFICATION_GROUP = "verification"
COPIES_GROUP = "copies"
ALL_SOURCES = "all"
BACKUP_ALL_JOB = "backup_all_job"
VERIFICATION_JOB = "verification_job"


def _key(prefix: str, source: str) -> AssetKey:
    kind, target = split_source(source)
    return AssetKey([f"{kind}_{prefix}", *([target] if target else [])])


def _word(source: str) -> str:
    """`<kind>.<target>` → `<kind>_<target>`: what Dagster allows in a job's name."""
    return source.replace(".", "_")


def backup_asset_key(source: str) -> AssetKey:
    return _key("backup", source)


def verification_asset_key(source: str) -> AssetKey:
    """The drill of the source's latest snapshot, downstream of its backup."""
    return _key("verification", source)


def crm_asset_key(source: str) -> AssetKey:
    """The live system upstream of the backup: `crm/<kind>` or `crm/<kind>/<target>`."""
    kind, target = split_source(source)
    return AssetKey([CRM_GROUP, kind, *([target] if target else [])])


def archive_asset_key(archive: str) -> AssetKey:
    """An archive kept between snapshots, by its name in the store: `postgres_wal`, or
    `postgres_wal/<target>` (the WAL archive of a target's base backups)."""
    kind, target = split_source(archive)
    return AssetKey([kind, *([target] if target else [])])


def copy_asset_key(store: str) -> AssetKey:
    """A copy store, downstream of every backup: `copies/<store>`."""
    return AssetKey([COPIES_GROUP, store])


def copy_job_name(store: str) -> str:
    return f"copy_{store}_job"


def backup_job_name(source: str) -> str:
    return f"{_word(source)}_backup_job"


def schedule_name(source: str) -> str:
    return f"{_word(source)}_backup_schedule"


def change_sensor_name(source: str) -> str:
    return f"{_word(source)}_change_sensor"


def failure_hook_name(source: str) -> str:
    return f"{_word(source)}_backup_failed"


def pool_name(source: str) -> str:
    """One run per source at a time: `dagster.yaml` limits every pool to 1. Targets of one
    kind have pools of their own, so they may run side by side."""
    return source


def backup_step_key(source: str) -> str:
    """The step that runs the backup asset in a run (its op's name)."""
    return backup_asset_key(source).to_python_identifier()


def source_of_asset(key: AssetKey) -> str | None:
    """The source a backup asset copies; None for any other asset."""
    path = key.path
    kind = path[0].removesuffix("_backup")
    if kind == path[0] or kind not in KINDS or len(path) > 2:
        return None
    return ".".join([kind, *path[1:]])
