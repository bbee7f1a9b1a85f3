"""Backup events on the machine's RabbitMQ: started, completed, failed, and the outbox."""

import json
import time

import pika
import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    build_run_status_sensor_context,
    build_sensor_context,
    define_asset_job,
)

from backup_pipelines.cli import main
from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.dagster_defs.sensors import backup_overdue_sensor, notifications_outbox_sensor
from backup_pipelines.events.broker import EXCHANGE
from backup_pipelines.events.outbox import Outbox
from backup_pipelines.storage.layout import OUTBOX
from backup_pipelines_tests.conftest import (
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    commit_snapshot,
    flip_byte,
    metadata_of,
    run_job,
    run_verification,
    runtime_from_env,
    store_from_env,
)
from backup_pipelines_tests.tcp_proxy import CuttingProxy
from backup_pipelines_tests.test_audit import real_rdb

CONTRACT_FIELDS = {
    "event",
    "source",
    "snapshot_id",
    "run_id",
    "timestamp",
    "duration_s",
    "size_bytes",
    "location",
    "error",
}


class EventQueue:
    """A private queue bound to backup.notifications (on this worker's vhost), read with
    basic_get."""

    def __init__(self, broker_url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(broker_url))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(EXCHANGE, "topic", durable=True)
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.queue, EXCHANGE, "backup.#")

    def for_run(self, run_id: str, count: int, timeout_s: float = 10) -> list[tuple]:
        """The first `count` events of one run, in the order they arrived."""
        found: list[tuple] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < count and time.monotonic() < deadline:
            method, properties, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                time.sleep(0.1)
                continue
            event = json.loads(body)
            if event["run_id"] == run_id:
                found.append((method.routing_key, properties, event))
        return found

    def drain_for(self, run_id: str, seconds: float = 1.0) -> list[tuple]:
        return self.for_run(run_id, count=100, timeout_s=seconds)


@pytest.fixture
def events(broker_url):
    queue = EventQueue(broker_url)
    yield queue
    queue.connection.close()


def test_a_backup_announces_start_and_completion(backup_env, events):
    result = run_job("rabbitmq_backup_job")
    assert result.success
    metadata = metadata_of(result, "rabbitmq")

    received = events.for_run(result.run_id, count=2)
    assert [routing_key for routing_key, _, _ in received] == ["backup.started", "backup.completed"]
    started, completed = (event for _, _, event in received)
    assert set(started) == set(completed) == CONTRACT_FIELDS
    assert started["event"] == "backup.started" and started["snapshot_id"] is None
    assert completed["event"] == "backup.completed" and completed["source"] == "rabbitmq"
    assert completed["snapshot_id"] == metadata["snapshot_id"]
    assert completed["location"] == metadata["location"]
    assert completed["size_bytes"] == metadata["size_bytes"] > 0
    assert completed["duration_s"] > 0 and completed["error"] is None
    assert completed["timestamp"].endswith("Z") and len(completed["timestamp"]) == 20
    properties = [props for _, props, _ in received]
    assert all(p.content_type == "application/json" and p.delivery_mode == 2 for p in properties)
    assert len({p.message_id for p in properties}) == 2


def test_a_failed_backup_says_why_once_without_the_password(backup_env, events, monkeypatch):
    monkeypatch.setenv(
        "BACKUP_POSTGRES_BACKUP_DSN", "postgresql://app:pw-never-shown@127.0.0.1:1/crm"
    )
    instance = DagsterInstance.ephemeral()
    result = run_job("postgres_backup_job", instance)
    assert not result.success

    received = events.drain_for(result.run_id, seconds=3)
    assert [routing_key for routing_key, _, _ in received] == ["backup.started", "backup.failed"]
    failed = received[1][2]
    assert failed["source"] == "postgres" and failed["snapshot_id"] is None
    assert failed["error"].startswith("cannot connect to PostgreSQL at 127.0.0.1:1, database 'crm'")
    assert "pw-never-shown" not in json.dumps(failed)

    # the run failure sensor sees the hook already told: it publishes nothing more
    tick_run_failure_sensor(instance, result.dagster_run)
    assert events.drain_for(result.run_id) == []


def tick_run_failure_sensor(instance: DagsterInstance, run) -> None:
    """What the daemon does once `run` has failed."""
    runtime = runtime_from_env()
    sensor = build_definitions(runtime).get_sensor_def("backup_run_failure_sensor")
    failure = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)[0]
    context = build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=failure.dagster_event,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run.run_id),
        resources={"runtime": runtime},
    ).for_run_failure()
    sensor(context)


def test_a_run_that_failed_before_any_step_is_reported_by_the_sensor(backup_env, events):
    instance = DagsterInstance.ephemeral()
    defs = build_definitions(runtime_from_env())
    run = instance.create_run_for_job(defs.resolve_job_def("redis_backup_job"))
    instance.report_run_failed(run, "the worker was killed")
    tick_run_failure_sensor(instance, run)

    [(routing_key, _, event)] = events.drain_for(run.run_id)
    assert routing_key == "backup.failed" and event["source"] == "redis"
    assert "the worker was killed" in event["error"]


def test_events_wait_in_the_outbox_while_the_broker_is_down(
    backup_env, events, monkeypatch, broker_url
):
    monkeypatch.setenv("BACKUP_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:1/%2F")
    result = run_job("rabbitmq_backup_job")
    assert result.success  # the broker being down never fails a backup
    assert events.drain_for(result.run_id) == []
    assert Outbox(backup_env / OUTBOX).pending() == 2

    monkeypatch.setenv("BACKUP_RABBITMQ_URL", broker_url)  # the broker is back
    with build_sensor_context(resources={"runtime": runtime_from_env()}) as context:
        notifications_outbox_sensor(context)
    received = events.for_run(result.run_id, count=2)
    assert [routing_key for routing_key, _, _ in received] == ["backup.started", "backup.completed"]
    assert Outbox(backup_env / OUTBOX).pending() == 0


def test_a_verification_is_announced_as_verified(backup_env, events):
    assert run_job("rabbitmq_backup_job").success
    snapshot = store_from_env().find("rabbitmq")
    verification = run_verification("rabbitmq")
    assert verification.success

    [(routing_key, properties, event)] = events.drain_for(verification.run_id)
    assert routing_key == "backup.verified" and set(event) == CONTRACT_FIELDS
    assert (event["source"], event["snapshot_id"]) == ("rabbitmq", snapshot.snapshot_id)
    assert event["error"] is None and properties.content_type == "application/json"


def test_a_failed_check_and_a_restore_are_announced(backup_env, events, broker_definitions):
    instance = DagsterInstance.ephemeral()
    backup = run_job("rabbitmq_backup_job", instance)
    assert backup.success
    store = store_from_env()
    snapshot = store.find("rabbitmq")
    flip_byte(store, snapshot.snapshot_id, "definitions.json.zst", offset=3, source="rabbitmq")

    verification = run_verification("rabbitmq", instance)
    assert not verification.success
    [(routing_key, _, event)] = events.drain_for(verification.run_id)
    assert (routing_key, event["snapshot_id"]) == (
        "backup.verification_failed",
        snapshot.snapshot_id,
    )
    assert "sha256 does not match the manifest" in event["error"]

    defs = build_definitions(runtime_from_env())
    checks_only = define_asset_job(
        "check_rabbitmq", selection=AssetSelection.checks_for_assets(AssetKey("rabbitmq_backup"))
    )
    checks = Definitions.merge(defs, Definitions(jobs=[checks_only]))
    result = checks.resolve_job_def("check_rabbitmq").execute_in_process(instance=instance)
    assert not all(c.passed for c in result.get_asset_check_evaluations())
    [(routing_key, _, event)] = events.drain_for(result.run_id)  # the integrity check's
    assert (routing_key, event["snapshot_id"]) == (
        "backup.verification_failed",
        snapshot.snapshot_id,
    )
    assert "sha256 does not match" in event["error"]

    restore = defs.resolve_job_def("restore_job").execute_in_process(
        run_config={
            "ops": {
                "restore_snapshot": {
                    "config": {
                        "source": "rabbitmq",
                        "target": "http://127.0.0.1:15672",
                        "force": True,
                        "confirm": "http://127.0.0.1:15672",
                        "snapshot": snapshot.snapshot_id,
                    }
                }
            }
        },
        instance=instance,
        raise_on_error=False,
    )
    assert not restore.success  # the stored bytes are damaged: no restore from them
    earlier = run_job("rabbitmq_backup_job", instance)
    restore = defs.resolve_job_def("restore_job").execute_in_process(
        run_config={
            "ops": {
                "restore_snapshot": {
                    "config": {
                        "source": "rabbitmq",
                        "target": "http://127.0.0.1:15672",
                        "force": True,
                        "confirm": "http://127.0.0.1:15672",
                    }
                }
            }
        },
        instance=instance,
    )
    assert earlier.success and restore.success
    [(routing_key, _, event)] = events.drain_for(restore.run_id)
    assert routing_key == "backup.restored"
    assert event["snapshot_id"] == store.find("rabbitmq").snapshot_id


@pytest.mark.slow
def test_a_failed_upload_is_reported_with_its_own_error(
    backup_env, events, monkeypatch, s3_endpoint, s3_bucket
):
    """The retries meet S3 gone as well: the event must still name the upload, not a read."""
    proxy = CuttingProxy(int(s3_endpoint.rsplit(":", 1)[1]), cut_after=1500)
    monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("BACKUP_S3_BUCKET", s3_bucket)
    monkeypatch.setenv("BACKUP_S3_ACCESS_KEY", S3_ACCESS_KEY)
    monkeypatch.setenv("BACKUP_S3_SECRET_KEY", S3_SECRET_KEY)
    result = run_job("rabbitmq_backup_job")

    assert not result.success and proxy.cut.is_set()
    [(routing_key, _, failed)] = events.for_run(result.run_id, count=2)[1:]
    assert routing_key == "backup.failed"
    assert failed["error"].startswith("could not store rabbitmq snapshot "), failed["error"]


def test_an_overdue_backup_is_announced_once_per_failure(backup_env, events):
    instance = DagsterInstance.ephemeral()
    runtime = runtime_from_env()
    later = time.time() + 3 * 3600  # redis backs up hourly: its freshness fails after 2 h 30 min
    sensor = backup_overdue_sensor(runtime.backed_up, clock=lambda: later)

    def tick(cursor: str | None) -> str | None:
        with build_sensor_context(
            instance=instance, cursor=cursor, resources={"runtime": runtime}
        ) as context:
            sensor(context)
            return context.cursor

    instance.report_runless_asset_event(AssetMaterialization(AssetKey("redis_backup")))
    cursor = tick(tick(None))  # two ticks of the same failure
    [(routing_key, _, event)] = events.drain_for("")
    assert routing_key == "backup.overdue" and event["source"] == "redis"
    assert set(event) == CONTRACT_FIELDS and "no snapshot since" in event["error"]

    instance.report_runless_asset_event(AssetMaterialization(AssetKey("redis_backup")))
    tick(cursor)  # a new snapshot ended that failure; three hours on, it is a new one
    assert [e["event"] for _, _, e in events.drain_for("")] == ["backup.overdue"]


def test_the_command_announces_its_restores_drills_and_prunes(
    backup_env, events, tmp_path, monkeypatch, capsys
):
    """With Dagster down, the command's operations say on the broker what Dagster's would."""
    runtime = runtime_from_env()
    rdb = real_rdb(tmp_path)
    older, newest = (
        commit_snapshot(
            runtime.store, runtime.staging.directory, {"dump.rdb": rdb}, source="redis", run_id=r
        )
        for r in ("00000001-run", "ffffffff-run")
    )

    assert main(["restore", "redis", "--output-dir", str(tmp_path / "out")]) == 0
    assert main(["drill", "redis"]) == 0
    [(restored_key, properties, restored), (verified_key, _, verified)] = events.drain_for("")
    assert (restored_key, verified_key) == ("backup.restored", "backup.verified")
    assert set(restored) == set(verified) == CONTRACT_FIELDS
    assert properties.content_type == "application/json" and properties.delivery_mode == 2
    assert (restored["source"], restored["snapshot_id"]) == ("redis", newest.snapshot_id)
    assert restored["location"] == str(tmp_path / "out") and restored["error"] is None
    assert restored["size_bytes"] == newest.manifest.size_bytes and restored["duration_s"] >= 0
    assert (verified["snapshot_id"], verified["location"]) == (newest.snapshot_id, newest.location)

    flip_byte(runtime.store, newest.snapshot_id, "dump.rdb.zst", offset=-1, source="redis")
    assert main(["drill", "redis"]) == 1
    [(failed_key, _, failed)] = events.drain_for("")
    assert failed_key == "backup.verification_failed" and set(failed) == CONTRACT_FIELDS
    assert failed["snapshot_id"] == newest.snapshot_id and "sha256" in failed["error"]

    monkeypatch.setenv("BACKUP_RETENTION_DAILY", "1")
    for name in ("WEEKLY", "MONTHLY", "YEARLY"):
        monkeypatch.setenv(f"BACKUP_RETENTION_{name}", "0")
    assert main(["prune", "--dry-run"]) == 0
    assert events.drain_for("") == []  # a dry run deletes nothing, and says nothing
    assert main(["prune"]) == 0
    [(pruned_key, _, pruned)] = events.drain_for("")
    assert pruned_key == "backup.pruned" and set(pruned) >= CONTRACT_FIELDS
    assert (pruned["source"], pruned["deleted"]) == ("redis", [older.snapshot_id])
    assert pruned["size_bytes"] == older.manifest.size_bytes and pruned["run_id"] == ""
    capsys.readouterr()
