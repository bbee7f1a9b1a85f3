"""The backups' code location (`backup_pipelines.definitions`), built from the runtime.

Everything is generated from the runtime's sources: per source (a kind's one
source, or each enabled target of the targets file) a backup asset (with
its upstream `crm/...` node, freshness and pool), its checks, job and
schedule; per kind with targets a job backing all of them up; per archive
kept between snapshots its asset; then `backup_all_job`, `restore_job`,
`recover_job`, the sensors, and the resources: the runtime built by the
composition root, and the IO manager over its services.

A location started with `BACKUP_SITE` (`backup_pipelines_<site>`) has the
targets of its site alone, and restores and recovers only those, where it
runs. What concerns the whole store stays in the location without a site:
`retention_job`, the copy stores' assets, jobs and sensor, the audit trail,
and reading `backup.requests` (handing the sites' requests on to them).
"""

from collections.abc import Sequence

from dagster import AssetSelection, Definitions, define_asset_job, in_process_executor

from backup_pipelines.cron import cron_interval
from backup_pipelines.dagster_defs.assets import backup_asset, crm_system, transient_retries
from backup_pipelines.dagster_defs.audit_trail import audit_trail
from backup_pipelines.dagster_defs.checks import integrity_check
from backup_pipelines.dagster_defs.continuous_archive import archive_asset, archive_sensor
from backup_pipelines.dagster_defs.copies import copy_sensor, copy_store_asset
from backup_pipelines.dagster_defs.definition_names import (
    ALL_SOURCES,
    BACKUP_ALL_JOB,
    BACKUPS_GROUP,
    backup_asset_key,
    backup_job_name,
    copy_asset_key,
    copy_job_name,
)
from backup_pipelines.dagster_defs.io_manager import SnapshotIOManager
from backup_pipelines.dagster_defs.last_backup import last_backup_check, without_last_backup
from backup_pipelines.dagster_defs.recover_job import recover_job
from backup_pipelines.dagster_defs.requests_sensor import backup_requests_sensor
from backup_pipelines.dagster_defs.restore_job import restore_job
from backup_pipelines.dagster_defs.retention_job import retention_job
from backup_pipelines.dagster_defs.schedules import backup_schedule, retention_schedule
from backup_pipelines.dagster_defs.sensors import (
    backup_overdue_sensor,
    backup_run_failure_sensor,
    change_sensor,
    notifications_outbox_sensor,
)
from backup_pipelines.runtime import Runtime
from backup_pipelines.sources.registry import archiving
from backup_pipelines.sources.source import Source

MAX_RUNTIME_TAG = "dagster/max_runtime"
"""Read by the daemon's run monitoring (`dagster.yaml`), in seconds."""
MIN_RUNTIME_S = 3600


def build_resources(runtime: Runtime) -> dict[str, object]:
    """The runtime every asset, check, op and sensor takes, and the IO manager over its store."""
    return {
        "runtime": runtime,
        "io_manager": SnapshotIOManager(services=runtime),
    }


def backup_jobs(sources: Sequence[Source]) -> dict[str, list[str]]:
    """What a backup job may be asked for (by the requests sensor), and the sources it backs
    up: each source's own job, and a job per kind covering all of that kind's targets."""
    jobs = {source.name: [source.name] for source in sources}
    for source in sources:
        if source.target is not None:
            jobs.setdefault(source.kind, []).append(source.name)
    return jobs


def max_runtime(runtime: Runtime, names: Sequence[str]) -> dict[str, str]:
    """`dagster/max_runtime`: the daemon's run monitoring ends a backup run that lasts longer
    than its sources' schedules leave between two runs (at least `MIN_RUNTIME_S`), so a hung
    run never holds its pool, nor its source, past the next scheduled one."""
    intervals = [cron_interval(runtime.sources[name].cron).total_seconds() for name in names]
    return {MAX_RUNTIME_TAG: str(int(max([MIN_RUNTIME_S, *intervals])))}


def build_definitions(runtime: Runtime) -> Definitions:
    """Everything Dagster loads, wired from the runtime (tests build their own the same way)."""
    sources = runtime.backed_up
    running = not runtime.shared.start_stopped  # what launches backups by itself
    archives = archiving(sources)
    retries = transient_retries(runtime.shared.retry_delay_s)
    covered = backup_jobs(sources)
    jobs = {
        asked: define_asset_job(
            backup_job_name(asked),
            selection=without_last_backup(
                AssetSelection.assets(*(backup_asset_key(name) for name in names)), names
            ),
            description=f"A snapshot of {', '.join(names)}.",
            tags=max_runtime(runtime, names),
        )
        for asked, names in covered.items()
    }
    backup_all_job = define_asset_job(
        BACKUP_ALL_JOB,
        selection=without_last_backup(
            AssetSelection.groups(BACKUPS_GROUP), [s.name for s in sources]
        ),
        description="A snapshot of every source, one after the other.",
        tags=max_runtime(runtime, [source.name for source in sources]),
    )
    sources_of_job = {BACKUP_ALL_JOB: [s.name for s in sources]} | {
        jobs[asked].name: names for asked, names in covered.items()
    }
    central = runtime.site is None  # what concerns the whole store, in one location only
    copies = runtime.stores[1:] if central else ()
    copy_jobs = [
        define_asset_job(
            copy_job_name(store.name),
            selection=AssetSelection.assets(copy_asset_key(store.name)),
            description=f"Brings the copy store {store.name} up to date with the primary.",
        )
        for store in copies
    ]
    return Definitions(
        assets=[
            *(crm_system(source) for source in sources),
            *(backup_asset(source, retries) for source in sources),
            *(archive_asset(source, archive) for source, archive in archives),
            *(
                copy_store_asset(store, [backup_asset_key(s.name) for s in sources])
                for store in copies
            ),
            *([audit_trail] if central else []),
        ],
        asset_checks=[
            *(integrity_check(source) for source in sources),
            *(last_backup_check(source.name) for source in sources),
        ],
        jobs=[
            backup_all_job,
            *jobs.values(),
            *copy_jobs,
            restore_job({name: type(source) for name, source in runtime.here.items()}),
            recover_job(),
            *([retention_job] if central else []),
        ],
        schedules=[
            *(backup_schedule(source, jobs[source.name], running) for source in sources),
            *(
                [retention_schedule(retention_job, runtime.shared.prunes_elsewhere, running)]
                if central
                else []
            ),
        ],
        sensors=[
            backup_requests_sensor({**jobs, ALL_SOURCES: backup_all_job}, runtime, running),
            *(
                change_sensor(s.name, jobs[s.name], running=running)
                for s in sources
                if s.watches_changes
            ),
            backup_run_failure_sensor(sources_of_job),
            backup_overdue_sensor(sources),
            *([archive_sensor(archives)] if archives else []),
            *([copy_sensor(copies, copy_jobs)] if copies else []),
            notifications_outbox_sensor,
        ],
        resources=build_resources(runtime),
        # Every job, and the UI's Materialize, runs its steps in the run's own process: a
        # subprocess per step costs seconds and buys nothing for steps that mostly wait on a
        # dump tool.
        executor=in_process_executor,
    )
