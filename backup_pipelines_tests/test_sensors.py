"""Sensors with build_sensor_context and a real Dagster instance."""

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pika
import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    RunRequest,
    build_schedule_context,
    build_sensor_context,
)

from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.dagster_defs.dagster_internals import RUN_KEY_TAG, SENSOR_NAME_TAG
from backup_pipelines.dagster_defs.requests_sensor import REQUESTS_SENSOR, parse_request
from backup_pipelines.dagster_defs.sensors import change_sensor
from backup_pipelines.events.broker import DEAD_LETTER_QUEUE, REQUESTS_QUEUE
from backup_pipelines.sources.registry import KINDS as SOURCE_NAMES
from backup_pipelines_tests.conftest import runtime_from_env


def evaluate(sensor, context) -> list:
    result = sensor(context)
    return list(result) if result is not None and not isinstance(result, RunRequest) else [result]


def waiting(channel, queue: str = REQUESTS_QUEUE) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def set_aside(channel) -> list[tuple[bytes, str]]:
    found = []
    while (message := channel.basic_get(DEAD_LETTER_QUEUE, auto_ack=True))[0]:
        found.append((message[2], message[1].headers["x-rejected"]))
    return found


class RequestsSensor:
    """The real backup_requests_sensor, ticked against one Dagster instance as the daemon does."""

    def __init__(self):
        self.instance = DagsterInstance.ephemeral()
        self.runtime = runtime_from_env()
        self.defs = build_definitions(self.runtime)
        self.sensor = self.defs.get_sensor_def(REQUESTS_SENSOR)

    def tick(self) -> list[RunRequest]:
        with build_sensor_context(
            instance=self.instance, resources={"runtime": self.runtime}
        ) as context:
            return [r for r in evaluate(self.sensor, context) if isinstance(r, RunRequest)]

    def launch(self, requests: list[RunRequest]) -> None:
        """What the daemon does with a tick's run requests: store a run for each."""
        for request in requests:
            tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: REQUESTS_SENSOR}
            job = self.defs.resolve_job_def(request.job_name)
            self.instance.create_run_for_job(job, tags=tags)

    def runs(self) -> list[str]:
        return sorted(run.tags[RUN_KEY_TAG] for run in self.instance.get_runs())


def test_requests_launch_backups_and_malformed_ones_are_set_aside(backup_env, requests_channel):
    for body in (
        b"not json at all",
        b'{"source": "mysql"}',
        b'{"source": "postgres", "reason": "before the migration"}',
        b'{"source": "all", "reason": "audit"}',
    ):
        requests_channel.basic_publish("", REQUESTS_QUEUE, body)
    sensor = RequestsSensor()

    requests = sensor.tick()
    assert [(r.job_name, r.tags["backup/reason"]) for r in requests] == [
        ("postgres_backup_job", "before the migration"),
        ("backup_all_job", "audit"),
    ]
    assert set_aside(requests_channel) == [
        (b"not json at all", "not JSON"),
        (
            b'{"source": "mysql"}',
            "'source' must be one of postgres, postgres_base, redis, rabbitmq, consul, "
            "documents, all, not 'mysql'",
        ),
    ]
    assert waiting(requests_channel) == 2  # acked only once Dagster holds their runs

    sensor.launch(requests)
    assert sensor.tick() == []
    assert waiting(requests_channel) == 0
    assert len(sensor.runs()) == 2


def test_a_poison_message_never_blocks_its_neighbours(backup_env, requests_channel):
    poison = [
        b"[" * 30_000 + b"]" * 30_000,  # RecursionError in json, under the size limit
        b'{"source": "postgres", "reason": "' + b"x" * (1 << 20) + b'"}',  # too large
        json.dumps({"source": "\x1b[31m" + "y" * 10_000}).encode(),
        b"\xff\xfe\x00",
    ]
    good = [json.dumps({"source": s}).encode() for s in ("redis", "consul")]
    for body in (good[0], *poison, good[1]):
        requests_channel.basic_publish("", REQUESTS_QUEUE, body)
    sensor = RequestsSensor()

    requests = sensor.tick()
    assert [r.job_name for r in requests] == ["redis_backup_job", "consul_backup_job"]
    rejected = set_aside(requests_channel)
    assert [body for body, _ in rejected] == poison
    assert all(0 < len(reason) <= 200 for _, reason in rejected)
    assert [reason for _, reason in rejected][:2] == ["RecursionError", "larger than 65536 bytes"]
    sensor.launch(requests)
    assert sensor.tick() == [] and waiting(requests_channel) == 0


SENSOR_THAT_DIES = """
import os, signal, sys
from backup_pipelines.dagster_defs.requests_sensor import take_requests
seen = []
def launched(key):
    seen.append(key)
    if len(seen) == int(sys.argv[2]):  # every message read, none acked: the process dies
        os.kill(os.getpid(), signal.SIGKILL)
    return False
take_requests(sys.argv[1], {"postgres": "p", "redis": "r"}, launched, print)
"""


def test_a_sensor_killed_after_reading_loses_nothing_and_runs_nothing_twice(
    backup_env, requests_channel, broker_url
):
    bodies = [json.dumps({"source": s}).encode() for s in ("postgres", "redis", "postgres")]
    ids = ["deploy-1234", None, None]  # two requests without an id: told apart by timestamp
    for body, message_id, stamp in zip(bodies, ids, (1, 2, 3), strict=True):
        properties = pika.BasicProperties(message_id=message_id, timestamp=stamp)
        requests_channel.basic_publish("", REQUESTS_QUEUE, body, properties)

    died = subprocess.run(
        [sys.executable, "-c", SENSOR_THAT_DIES, broker_url, "3"], capture_output=True, timeout=60
    )
    assert died.returncode == -signal.SIGKILL, died.stderr.decode()
    sensor = RequestsSensor()
    first = sensor.tick()
    assert [r.job_name for r in first] == [
        "postgres_backup_job",
        "redis_backup_job",
        "postgres_backup_job",
    ]
    assert first[0].run_key == "deploy-1234" and len({r.run_key for r in first}) == 3

    # the daemon died too before it stored the runs: the next tick asks for the same runs
    assert [r.run_key for r in sensor.tick()] == [r.run_key for r in first]
    sensor.launch(first)
    assert sensor.tick() == [] and waiting(requests_channel) == 0

    # the same message delivered again (a publisher retrying) never runs twice
    again = pika.BasicProperties(message_id="deploy-1234", timestamp=1)
    requests_channel.basic_publish("", REQUESTS_QUEUE, bodies[0], again)
    assert sensor.tick() == [] and waiting(requests_channel) == 0
    assert sensor.runs() == sorted(r.run_key for r in first)


def test_request_parsing():
    choices = [*SOURCE_NAMES, "all"]
    assert parse_request(b'{"source": "redis"}', choices) == ("redis", "unspecified")
    for body in (b"[1]", b'{"source": "redis", "reason": 5}', b"\xff\xfe"):
        with pytest.raises(ValueError):
            parse_request(body, choices)


def documents_sensor(root: Path, monkeypatch, quiet_period_s: float):
    """The documents change sensor over `root`, as the definitions build it, and a runtime."""
    monkeypatch.setenv("BACKUP_DOCUMENTS_ROOT", str(root))
    runtime = runtime_from_env()
    job = build_definitions(runtime).resolve_job_def("documents_backup_job")
    return change_sensor("documents", job, quiet_period_s=quiet_period_s), runtime


def test_documents_sensor_fires_once_per_change(backup_env, tmp_path, monkeypatch):
    root = tmp_path / "documents"
    (root / "contracts").mkdir(parents=True)
    (root / "contracts" / "a.txt").write_text("a")
    sensor, runtime = documents_sensor(root, monkeypatch, quiet_period_s=0)
    cursor = None

    def tick():
        nonlocal cursor
        with build_sensor_context(cursor=cursor, resources={"runtime": runtime}) as context:
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


def test_documents_sensor_waits_for_a_busy_tree_to_settle(backup_env, tmp_path, monkeypatch):
    root = tmp_path / "documents"
    root.mkdir()
    sensor, runtime = documents_sensor(root, monkeypatch, quiet_period_s=3600)
    with build_sensor_context(resources={"runtime": runtime}) as context:
        sensor(context)
        baseline = context.cursor
    (root / "new.txt").write_text("x")
    with build_sensor_context(cursor=baseline, resources={"runtime": runtime}) as context:
        skipped = sensor(context)
    assert not isinstance(skipped, RunRequest)
    assert "waiting for it to settle" in skipped.skip_message
    assert json.loads(context.cursor)["seen"] != json.loads(baseline)["backed_up"]


def test_schedules_and_sensors_run_by_default(backup_env):
    defs = build_definitions(runtime_from_env())
    schedules = {s.name: s for s in defs.schedules}
    assert set(schedules) == {f"{s}_backup_schedule" for s in SOURCE_NAMES} | {"retention_schedule"}
    assert schedules["postgres_backup_schedule"].cron_schedule == "0 * * * *"
    assert all(s.default_status.value == "RUNNING" for s in schedules.values())
    assert all(s.default_status.value == "RUNNING" for s in defs.sensors)
    assert {s.name for s in defs.sensors} == {
        "backup_requests_sensor",
        "documents_change_sensor",
        "backup_run_failure_sensor",
        "backup_overdue_sensor",
        "postgres_wal_sensor",
        "notifications_outbox_sensor",
    }
    assert os.environ.get("BACKUP_DOCUMENTS_ROOT") is None
    with build_schedule_context() as context:
        skipped = schedules["documents_backup_schedule"].evaluate_tick(context)
    assert "set BACKUP_DOCUMENTS_ROOT" in str(skipped.skip_message)
    assert schedules["postgres_base_backup_schedule"].cron_schedule == "30 1 * * *"
    with build_schedule_context() as context:  # the local server does not archive its WAL
        skipped = schedules["postgres_base_backup_schedule"].evaluate_tick(context)
    assert "archive_mode = on" in str(skipped.skip_message)
    with build_schedule_context() as context:
        [request] = schedules["redis_backup_schedule"].evaluate_tick(context).run_requests
    assert request.tags["backup/trigger"] == "schedule"


def test_freshness_follows_each_cron(backup_env, monkeypatch):
    monkeypatch.setenv("BACKUP_REDIS_CRON", "0 */6 * * *")
    defs = build_definitions(runtime_from_env())
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
    # the UI humanizes the windows (2 h 30 min shows as "3 hours"): the description says them
    description = defs.resolve_assets_def(AssetKey("postgres_backup")).descriptions_by_key
    assert "warns 1 h 30 min and fails 2 h 30 min" in description[AssetKey("postgres_backup")]
