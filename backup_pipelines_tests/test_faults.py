"""Faults a backup host meets: a run killed mid-dump, a full staging disk.

(The S3 connection cut mid-upload is in test_snapshot_store.py, a sensor process dying after
it read its requests in test_sensors.py.)
"""

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from dagster import DagsterInstance

from backup_pipelines.definitions import build_definitions
from backup_pipelines.settings import load_settings
from backup_pipelines.snapshot import store_from_settings
from backup_pipelines.snapshot.local_store import LocalSnapshotStore
from backup_pipelines_tests.dagster_stack import DagsterUI, dev_stack, scratch_vhost
from backup_pipelines_tests.postgres_fixtures import (
    connect,
    create_rich_database,
    scratch_databases,
    unique_name,
)
from backup_pipelines_tests.redis_fixtures import redis_process

RUN_LOG_QUERY = """
query RunLog($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection { events { ... on MessageEvent { message } } }
  }
}
"""


def run_worker_pid(ui: DagsterUI, run_id: str) -> int | None:
    """The run worker's pid, from the run's own log ("Started process for run (pid: N).")."""
    for event in ui.graphql(RUN_LOG_QUERY, runId=run_id)["logsForRun"]["events"]:
        if found := re.match(r"Started process for run \(pid: (\d+)\)", event.get("message", "")):
            return int(found.group(1))
    return None


def wait_for(check, what: str, timeout_s: float, ui: DagsterUI):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout_s} s\n{ui.log_tails()}")


@pytest.mark.e2e
def test_a_run_killed_mid_dump_frees_its_source_and_its_attempt_is_cleaned_later(tmp_path):
    """`make dev`'s instance: kill -9 of the run worker while pg_dump waits on a lock. The run
    is marked failed, the next postgres backup runs, and prune removes the attempt a day on."""
    crm = unique_name("bp_killed_crm")
    artifacts = tmp_path / "artifacts"
    with scratch_vhost() as vhost, scratch_databases(crm):
        create_rich_database(crm)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "DAGSTER_"))}
        env |= {
            "BACKUP_ARTIFACTS_DIR": str(artifacts),
            "BACKUP_POSTGRES_BACKUP_DSN": "postgresql://postgres@127.0.0.1:5432/postgres",
            "BACKUP_POSTGRES_DATABASES": crm,
            "BACKUP_RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        }
        with dev_stack(tmp_path / "dev", env) as ui, connect(crm) as blocker:
            with blocker.transaction():
                blocker.execute("LOCK TABLE crm.contacts IN ACCESS EXCLUSIVE MODE")
                killed = ui.materialize("postgres_backup")
                staging = artifacts / ".staging" / "postgres"
                wait_for(lambda: staging.is_dir() and any(staging.iterdir()), "no dump", 120, ui)
                worker = wait_for(lambda: run_worker_pid(ui, killed), "no worker", 30, ui)
                os.kill(worker, signal.SIGKILL)
                failed = ui.wait_for_run(timeout_s=120, runIds=[killed])
                assert failed["status"] == "FAILURE", ui.log_tails()
            [attempt] = list(staging.iterdir())

            second = ui.materialize("postgres_backup")
            assert ui.wait_for_run(timeout_s=180, runIds=[second])["status"] == "SUCCESS"

        store = LocalSnapshotStore(artifacts)
        [snapshot] = store.list_snapshots("postgres")
        assert snapshot.manifest.run_id == second
        assert attempt.exists()  # a day younger: it might still be written
        day_ago = (datetime.now(UTC) - timedelta(hours=25)).timestamp()
        for path in (attempt, *attempt.rglob("*")):
            os.utime(path, (day_ago, day_ago))
        cli = [sys.executable, "-m", "backup_pipelines.cli", "prune"]
        pruned = subprocess.run(cli, env=env, capture_output=True, text=True)
        assert pruned.returncode == 0, pruned.stderr
        assert not attempt.exists()
        assert store.list_snapshots("postgres") == [snapshot]


@pytest.fixture
def small_staging_disk(backup_env: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted as the staging area (needs root, as in CI)."""
    staging = backup_env / ".staging"
    staging.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(staging)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield staging
    finally:
        subprocess.run(["umount", "-l", str(staging)], check=True)


def test_a_full_staging_disk_fails_once_naming_the_path_and_is_not_retried(
    small_staging_disk, monkeypatch, tmp_path
):
    with redis_process(tmp_path / "redis") as client:
        fill_with_random(client, megabytes=8)
        port = client.connection_pool.connection_kwargs["port"]
        monkeypatch.setenv("BACKUP_REDIS_HOST", "127.0.0.1")
        monkeypatch.setenv("BACKUP_REDIS_PORT", str(port))
        monkeypatch.setenv("BACKUP_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:1/%2F")
        defs = build_definitions(load_settings())
        result = defs.resolve_job_def("redis_backup_job").execute_in_process(
            instance=DagsterInstance.ephemeral(), raise_on_error=False
        )

    assert not result.success
    assert not any(event.is_step_up_for_retry for event in result.all_events)
    [failure] = [event for event in result.all_events if event.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith(f"no space left on the device of {small_staging_disk}/redis/")
    assert "BACKUP_ARTIFACTS_DIR" in message
    assert store_from_settings(load_settings()).list_snapshots("redis") == []
    assert list((small_staging_disk / "redis").iterdir()) == []


def fill_with_random(client: redis.Redis, megabytes: int) -> None:
    """Values of random bytes: zstd cannot shrink them below the disk's size."""
    pipeline = client.pipeline(transaction=False)
    for n in range(megabytes * 16):
        pipeline.set(f"blob:{n}", os.urandom(64 << 10))
    pipeline.execute()
