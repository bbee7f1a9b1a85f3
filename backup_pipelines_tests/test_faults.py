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
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from backup_pipelines.snapshot.staging import BACKUP_LOCK
from backup_pipelines_tests.archiving_cluster import COMMAND
from backup_pipelines_tests.broker import scratch_vhost, vhost_url
from backup_pipelines_tests.conftest import (
    PASSWORD,
    failed_at_once,
    make_local_store,
    run_backup,
    step_failures,
    store_from_env,
    timed_backup,
)
from backup_pipelines_tests.dagster_stack import DagsterUI, dev_stack
from backup_pipelines_tests.postgres_fixtures import (
    connect,
    create_rich_database,
    scratch_databases,
    unique_name,
)
from backup_pipelines_tests.redis_fixtures import redis_process
from backup_pipelines_tests.tcp_proxy import StallingProxy

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


def attempts(staging: Path) -> list[Path]:
    """A source's snapshots being assembled in staging (its lock file left out)."""
    return [path for path in staging.iterdir() if path.name != BACKUP_LOCK]


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
            "BACKUP_RABBITMQ_URL": vhost_url(vhost),
        }
        with dev_stack(tmp_path / "dev", env) as ui, connect(crm) as blocker:
            with blocker.transaction():
                blocker.execute("LOCK TABLE crm.contacts IN ACCESS EXCLUSIVE MODE")
                killed = ui.materialize("postgres_backup")
                staging = artifacts / ".staging" / "postgres"
                wait_for(lambda: staging.is_dir() and attempts(staging), "no dump", 120, ui)
                worker = wait_for(lambda: run_worker_pid(ui, killed), "no worker", 30, ui)
                os.kill(worker, signal.SIGKILL)
                failed = ui.wait_for_run(timeout_s=120, runIds=[killed])
                assert failed["status"] == "FAILURE", ui.log_tails()
            [attempt] = attempts(staging)

            second = ui.materialize("postgres_backup")
            assert ui.wait_for_run(timeout_s=180, runIds=[second])["status"] == "SUCCESS"

        store = make_local_store(artifacts)
        # the killed run itself stored nothing; Dagster's run retry of it may have, since
        snapshots = store.list_snapshots("postgres")
        runs = {snapshot.manifest.run_id for snapshot in snapshots}
        assert second in runs and killed not in runs
        assert attempt.exists()  # a day younger: it might still be written
        day_ago = (datetime.now(UTC) - timedelta(hours=25)).timestamp()
        for path in (attempt, *attempt.rglob("*")):
            os.utime(path, (day_ago, day_ago))
        cli = [sys.executable, "-m", "backup_pipelines.cli", "prune"]
        pruned = subprocess.run(cli, env=env, capture_output=True, text=True)
        assert pruned.returncode == 0, pruned.stderr
        assert not attempt.exists()
        assert store.list_snapshots("postgres") == snapshots


@contextmanager
def small_disk(path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted at `path` (needs root, as in CI)."""
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def backup_8_mb_of_random_keys(monkeypatch, tmp_path: Path) -> str:
    """A Redis backup that stores about 8 MiB whatever zstd does; its one failure's message."""
    with redis_process(tmp_path / "redis") as client:
        fill_with_random(client, megabytes=8)
        port = client.connection_pool.connection_kwargs["port"]
        monkeypatch.setenv("BACKUP_REDIS_HOST", "127.0.0.1")
        monkeypatch.setenv("BACKUP_REDIS_PORT", str(port))
        monkeypatch.setenv("BACKUP_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:1/%2F")
        return failed_at_once(run_backup("redis"))


def test_a_full_staging_disk_fails_once_naming_the_path_and_is_not_retried(
    backup_env, monkeypatch, tmp_path
):
    with small_disk(backup_env / ".staging") as staging:
        message = backup_8_mb_of_random_keys(monkeypatch, tmp_path)
        assert message.startswith(f"no space left on the device of {staging}/redis/")
        assert "BACKUP_ARTIFACTS_DIR" in message
        assert store_from_env().list_snapshots("redis") == []
        assert attempts(staging / "redis") == []


def test_a_dump_that_fills_the_staging_disk_fails_once_naming_the_path(
    backup_env, source_db, monkeypatch
):
    """pg_dump writes into staging itself (so its dump records table offsets): its own
    "No space left on device" is the same one-line failure as ours."""
    with connect(source_db) as connection:
        connection.execute(
            "CREATE TABLE filler AS SELECT n, md5(random()::text) || md5(random()::text) AS noise"
            " FROM generate_series(1, 60000) AS n"
        )
    with small_disk(backup_env / ".staging") as staging:
        message = failed_at_once(run_backup("postgres"), PASSWORD)
        assert message.startswith(f"no space left on the device of {staging}/postgres/")
        assert "BACKUP_ARTIFACTS_DIR" in message
        assert store_from_env().list_snapshots("postgres") == []
        assert attempts(staging / "postgres") == []


def test_a_full_store_disk_fails_once_and_leaves_no_attempt(backup_env, monkeypatch, tmp_path):
    """The staged snapshot fits; the local store's disk does not take it (a copy, as the
    store is another filesystem than staging): nothing half-written stays behind."""
    with small_disk(backup_env / "redis") as store_dir:
        message = backup_8_mb_of_random_keys(monkeypatch, tmp_path)
        assert message.startswith(f"no space left on the device of {store_dir}/")
        assert store_from_env().survey("redis").attempts == []
        assert list(store_dir.iterdir()) == []


def fill_with_random(client: redis.Redis, megabytes: int) -> None:
    """Values of random bytes: zstd cannot shrink them below the disk's size."""
    pipeline = client.pipeline(transaction=False)
    for n in range(megabytes * 16):
        pipeline.set(f"blob:{n}", os.urandom(64 << 10))
    pipeline.execute()


def test_a_postgresql_that_stops_answering_mid_dump_fails_the_backup_within_its_timeouts(
    backup_env, monkeypatch
):
    name = unique_name("bp_stalled")
    with scratch_databases(name):
        with connect("postgres") as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        with connect(name) as connection:
            connection.execute(
                "CREATE TABLE filler AS SELECT n, md5(random()::text) || md5(random()::text)"
                " AS pad FROM generate_series(1, 100000) n"
            )
        proxy = StallingProxy(5432, stall_after=1 << 20)  # mid-way through pg_dump's rows
        monkeypatch.setenv(
            "BACKUP_POSTGRES_BACKUP_DSN", f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        )
        monkeypatch.setenv("BACKUP_POSTGRES_DATABASES", name)
        monkeypatch.setenv("BACKUP_STALL_TIMEOUT_S", "2")
        try:
            result, took = timed_backup("postgres")
        finally:
            proxy.close()
    assert proxy.stalled.is_set(), "the server never stopped answering: no test"
    assert not result.success and took < 90
    said = " ".join(step_failures(result))
    assert f"pg_dump of database {name!r}" in said and "gave nothing for 2 s" in said
    assert not list((backup_env / "postgres").glob("*/manifest.json"))


def test_a_store_that_stops_answering_fails_commands_and_wal_push_within_their_timeouts(
    s3_env, s3_endpoint, monkeypatch, tmp_path
):
    proxy = StallingProxy(int(s3_endpoint.rsplit(":", 1)[1]))  # accepts, never answers
    monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("BACKUP_S3_TIMEOUT_S", "1")
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(os.urandom(8192))
    try:
        for argv in (["snapshots"], ["wal-push", str(segment)]):
            started = time.monotonic()
            done = subprocess.run(
                [str(COMMAND), *argv], capture_output=True, text=True, timeout=300
            )
            took = time.monotonic() - started
            assert done.returncode != 0 and took < 60, (argv, took, done.stderr)
            assert "Read timeout on endpoint URL" in done.stderr, done.stderr
    finally:
        proxy.close()


def test_sigterm_stops_a_command_at_once_and_cleanly(s3_env, s3_endpoint, monkeypatch):
    proxy = StallingProxy(int(s3_endpoint.rsplit(":", 1)[1]))  # the command waits on it
    monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", proxy.url)
    try:
        command = subprocess.Popen([str(COMMAND), "snapshots"], stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        command.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, said = command.communicate(timeout=30)
        assert time.monotonic() - started < 5
    finally:
        proxy.close()
    assert command.returncode == 143 and "stopped by SIGTERM" in said
