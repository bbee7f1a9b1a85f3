"""Sensors with build_sensor_context and a real Dagster instance."""

import json
import os
from datetime import timedelta

import pika
import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    RunRequest,
    build_schedule_context,
    build_sensor_context,
)

from backup_pipelines.definitions import OUTBOX_NAME, build_definitions, source_jobs
from backup_pipelines.notifications import NotificationPublisher
from backup_pipelines.sensors import (
    DEAD_LETTER_QUEUE,
    REQUESTS_QUEUE,
    documents_change_sensor,
    parse_request,
)
from backup_pipelines.settings import load_settings

BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture
def requests_channel():
    """The machine broker's backup.requests and its dead-letter queue, emptied for the test."""
    connection = pika.BlockingConnection(pika.URLParameters(BROKER))
    channel = connection.channel()
    for queue in (REQUESTS_QUEUE, DEAD_LETTER_QUEUE):
        channel.queue_declare(queue, durable=True)
        channel.queue_purge(queue)
    yield channel
    connection.close()


def evaluate(sensor, context) -> list:
    result = sensor(context)
    return list(result) if result is not None and not isinstance(result, RunRequest) else [result]


def test_requests_launch_backups_and_malformed_ones_are_set_aside(backup_env, requests_channel):
    for body in (
        b"not json at all",
        b'{"source": "mysql"}',
        b'{"source": "postgres", "reason": "before the migration"}',
        b'{"source": "all", "reason": "audit"}',
    ):
        requests_channel.basic_publish("", REQUESTS_QUEUE, body)
    defs = build_definitions(load_settings())
    sensor = defs.get_sensor_def("backup_requests_sensor")
    notifications = NotificationPublisher(
        rabbitmq_url=BROKER, outbox_path=str(backup_env / OUTBOX_NAME)
    )
    with build_sensor_context(
        instance=DagsterInstance.ephemeral(), resources={"notifications": notifications}
    ) as context:
        requests = [r for r in evaluate(sensor, context) if isinstance(r, RunRequest)]

    assert [(r.job_name, r.tags["backup/reason"]) for r in requests] == [
        ("postgres_backup_job", "before the migration"),
        ("backup_all_job", "audit"),
    ]
    assert requests_channel.queue_declare(REQUESTS_QUEUE, passive=True).method.message_count == 0
    set_aside = []
    while (message := requests_channel.basic_get(DEAD_LETTER_QUEUE, auto_ack=True))[0]:
        set_aside.append((message[2], message[1].headers["x-rejected"]))
    assert set_aside == [
        (b"not json at all", "not JSON"),
        (
            b'{"source": "mysql"}',
            "'source' must be one of postgres, redis, rabbitmq, consul, "
            "documents, all, not 'mysql'",
        ),
    ]


def test_request_parsing():
    assert parse_request(b'{"source": "redis"}') == ("redis", "unspecified")
    for body in (b"[1]", b'{"source": "redis", "reason": 5}', b"\xff\xfe"):
        with pytest.raises(ValueError):
            parse_request(body)


def test_documents_sensor_fires_once_per_change(tmp_path):
    root = tmp_path / "documents"
    (root / "contracts").mkdir(parents=True)
    (root / "contracts" / "a.txt").write_text("a")
    sensor = documents_change_sensor(root, source_jobs["documents"], quiet_period_s=0)
    cursor = None

    def tick():
        nonlocal cursor
        with build_sensor_context(cursor=cursor) as context:
            result = sensor(context)
            cursor = context.cursor
        return result

    assert not isinstance(tick(), RunRequest)  # the first look sets the baseline
    assert not isinstance(tick(), RunRequest)
    (root / "contracts" / "b.txt").write_text("b")
    assert isinstance(tick(), RunRequest)
    assert not isinstance(tick(), RunRequest)
    (root / "contracts" / "a.txt").unlink()
    assert isinstance(tick(), RunRequest)
    assert not isinstance(tick(), RunRequest)


def test_documents_sensor_waits_for_a_busy_tree_to_settle(tmp_path):
    root = tmp_path / "documents"
    root.mkdir()
    sensor = documents_change_sensor(root, source_jobs["documents"], quiet_period_s=3600)
    with build_sensor_context() as context:
        sensor(context)
        baseline = context.cursor
    (root / "new.txt").write_text("x")
    with build_sensor_context(cursor=baseline) as context:
        skipped = sensor(context)
    assert not isinstance(skipped, RunRequest)
    assert "waiting for it to settle" in skipped.skip_message
    assert json.loads(context.cursor)["seen"] != json.loads(baseline)["backed_up"]


def test_schedules_and_sensors_run_by_default(backup_env):
    defs = build_definitions(load_settings())
    schedules = {s.name: s for s in defs.schedules}
    assert set(schedules) == {f"{s}_backup_schedule" for s in source_jobs} | {"retention_schedule"}
    assert schedules["postgres_backup_schedule"].cron_schedule == "0 * * * *"
    assert all(s.default_status.value == "RUNNING" for s in schedules.values())
    assert all(s.default_status.value == "RUNNING" for s in defs.sensors)
    assert {s.name for s in defs.sensors} == {
        "backup_requests_sensor",
        "documents_change_sensor",
        "backup_run_failure_sensor",
        "notifications_outbox_sensor",
    }
    assert os.environ.get("BACKUP_DOCUMENTS_ROOT") is None
    with build_schedule_context() as context:
        skipped = schedules["documents_backup_schedule"].evaluate_tick(context)
    assert "set BACKUP_DOCUMENTS_ROOT" in str(skipped.skip_message)
    with build_schedule_context() as context:
        [request] = schedules["redis_backup_schedule"].evaluate_tick(context).run_requests
    assert request.tags["backup/trigger"] == "schedule"


def test_freshness_follows_each_cron(backup_env, monkeypatch):
    monkeypatch.setenv("BACKUP_REDIS_CRON", "0 */6 * * *")
    defs = build_definitions(load_settings())
    windows = {}
    for source in ("postgres", "redis", "rabbitmq"):
        [spec] = defs.resolve_assets_def(AssetKey(f"{source}_backup")).specs
        policy = spec.freshness_policy
        windows[source] = (policy.warn_window.to_timedelta(), policy.fail_window.to_timedelta())
    grace = timedelta(minutes=30)
    assert windows == {
        "postgres": (timedelta(hours=1) + grace, timedelta(hours=2) + grace),
        "redis": (timedelta(hours=6) + grace, timedelta(hours=12) + grace),
        "rabbitmq": (timedelta(days=1) + grace, timedelta(days=2) + grace),
    }
