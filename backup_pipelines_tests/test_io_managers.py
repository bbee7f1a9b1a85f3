"""The IO managers under a real Dagster run: commit, metadata, downstream handles, failures."""

import os
import subprocess
import sys
from pathlib import Path

from dagster import AssetExecutionContext, ResourceParam, asset, materialize

from backup_pipelines.dagster_defs.backup_location import build_resources
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.snapshot.store import StoredSnapshot
from backup_pipelines_tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, runtime_from_env

CONTRACT_METADATA = {"snapshot_id", "location", "size_bytes", "sha256", "duration_s", "files"}


@asset(name="postgres_backup", group_name="backups")
def fake_postgres_backup(
    context: AssetExecutionContext, runtime: ResourceParam[Runtime]
) -> StagedSnapshot:
    with runtime.staging.stage("postgres", context.run.run_id) as staged:
        staged.add_command(
            "crm.dump",
            ["sh", "-c", "printf PGDMP; head -c 200000 /dev/urandom"],
            label="fake dump of crm",
            expect_prefix=b"PGDMP",
        )
        staged.stats["databases"] = {"crm": {"size_bytes": 200005}}
        staged.stats["database_count"] = 1
    return staged


@asset(name="postgres_backup", group_name="backups")
def failing_postgres_backup(
    context: AssetExecutionContext, runtime: ResourceParam[Runtime]
) -> StagedSnapshot:
    with runtime.staging.stage("postgres", context.run.run_id) as staged:
        staged.add_stream("globals.sql", [b"CREATE ROLE crm;"])
        staged.add_command(
            "crm.dump", ["sh", "-c", "head -c 500000 /dev/urandom; exit 1"], label="dump of crm"
        )
    return staged


received: list[StoredSnapshot] = []


@asset
def snapshot_consumer(postgres_backup: StoredSnapshot) -> None:
    received.append(postgres_backup)


def test_materialization_commits_and_records_contract_metadata(store_env):
    runtime = runtime_from_env()
    resources = build_resources(runtime)
    result = materialize([fake_postgres_backup, snapshot_consumer], resources=resources)
    assert result.success

    [snapshot] = runtime.store.list_snapshots("postgres")
    [materialization] = result.asset_materializations_for_node("postgres_backup")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata.keys() >= CONTRACT_METADATA
    assert metadata["snapshot_id"] == snapshot.snapshot_id
    assert metadata["location"] == snapshot.location
    assert metadata["sha256"] == snapshot.manifest_sha256
    assert metadata["size_bytes"] == snapshot.manifest.size_bytes > 0
    assert metadata["files"] == 1
    assert metadata["databases"] == {"crm": {"size_bytes": 200005}}
    assert metadata["database_count"] == 1
    assert S3_SECRET_KEY not in str(metadata) and S3_ACCESS_KEY not in str(metadata)
    assert received[-1] == snapshot
    assert list(Path(runtime.staging.directory, "postgres").iterdir()) == []
    if store_env == "s3":
        assert snapshot.location.startswith("s3://")


def test_failed_backup_fails_the_run_and_leaves_no_snapshot(store_env):
    runtime = runtime_from_env()
    resources = build_resources(runtime)
    result = materialize([failing_postgres_backup], resources=resources, raise_on_error=False)
    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert "dump of crm failed (exit code 1)" in str(failure.step_failure_data.error)
    assert runtime.store.list_snapshots("postgres") == []
    assert list(Path(runtime.staging.directory, "postgres").iterdir()) == []


def test_definitions_load_and_validate(backup_env, tmp_path):
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [dagster, "definitions", "validate", "-m", "backup_pipelines.definitions"],
        capture_output=True,
        text=True,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
