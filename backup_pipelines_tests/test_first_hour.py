"""A new user's first hour: `make dev` says what it would touch, launches nothing by itself,
and stops at the first Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from dagster import (
    AssetCheckKey,
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
)

from backup_pipelines.cli import main
from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.processes import free_loopback_port
from backup_pipelines.runtime import load_runtime
from backup_pipelines_tests.conftest import failed_at_once, metadata_of, run_backup
from backup_pipelines_tests.redis_fixtures import redis_process
from backup_pipelines_tests.test_redis import port_of

REPO = Path(__file__).resolve().parent.parent


def test_started_stopped_no_schedule_or_backup_launching_sensor_runs_by_itself(
    backup_env, monkeypatch
):
    monkeypatch.setenv("BACKUP_START_STOPPED", "true")
    definitions = build_definitions(load_runtime())
    schedules = list(definitions.schedules)
    assert schedules and all(s.default_status == DefaultScheduleStatus.STOPPED for s in schedules)
    statuses = {sensor.name: sensor.default_status for sensor in definitions.sensors}
    assert statuses["backup_requests_sensor"] == DefaultSensorStatus.STOPPED
    assert statuses["backup_run_failure_sensor"] == DefaultSensorStatus.RUNNING  # says only
    monkeypatch.delenv("BACKUP_START_STOPPED")
    definitions = build_definitions(load_runtime())
    assert all(s.default_status == DefaultScheduleStatus.RUNNING for s in definitions.schedules)


def test_make_dev_says_what_it_would_back_up_where_without_a_secret(backup_env, monkeypatch):
    monkeypatch.setenv("BACKUP_START_STOPPED", "true")
    monkeypatch.setenv("BACKUP_POSTGRES_BACKUP_DSN", "postgresql://backup:hunter2@db:5432/crm")
    said = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "dev_banner.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "BACKUP_POSTGRES_BACKUP_DSN=postgresql://backup:***@db:5432/crm" in said
    assert f"into the local store {backup_env}" in said
    assert "start STOPPED" in said and "hunter2" not in said


def test_make_dev_stops_at_the_first_ctrl_c_even_when_its_children_hold_on(tmp_path):
    marker = tmp_path / "stubborn.pid"
    stubborn = f"trap '' INT TERM; echo $$ > {marker}; while true; do sleep 1; done"
    wrapper = subprocess.Popen(["bash", str(REPO / "scripts" / "dev.sh"), "bash", "-c", stubborn])
    while not (marker.exists() and marker.read_text().endswith("\n")):  # written whole
        time.sleep(0.1)
    pid = int(marker.read_text())
    started = time.monotonic()
    wrapper.send_signal(signal.SIGINT)
    wrapper.wait(timeout=30)
    assert time.monotonic() - started < 8
    time.sleep(0.2)
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"  # gone, or only reaped


def test_a_run_launched_by_hand_says_why_it_is_not_retried(backup_env, monkeypatch):
    """(A scheduled run's retries: test_consul.py.)"""
    monkeypatch.setenv("BACKUP_REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("BACKUP_REDIS_PORT", str(free_loopback_port()))  # nothing listens
    said = failed_at_once(run_backup("redis"))
    assert "not retried: a run launched by hand" in said


def last_backup_evaluations(instance: DagsterInstance) -> list:
    """The `last_backup` check's evaluations of the redis backup, newest first."""
    key = AssetCheckKey(AssetKey("redis_backup"), "last_backup")
    history = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
    return [record.event.dagster_event.event_specific_data for record in history]


def test_after_a_failed_backup_the_ui_and_status_still_show_the_last_good_snapshot(
    backup_env, monkeypatch, tmp_path, capsys
):
    instance = DagsterInstance.ephemeral()
    with redis_process(tmp_path / "redis") as server:
        server.set("fsm:user:1", "awaiting_phone")
        monkeypatch.setenv("BACKUP_REDIS_HOST", "127.0.0.1")
        monkeypatch.setenv("BACKUP_REDIS_PORT", str(port_of(server)))
        good = run_backup("redis", instance)
    assert good.success
    snapshot_id = metadata_of(good, "redis")["snapshot_id"]
    [passed] = last_backup_evaluations(instance)
    assert passed.passed and snapshot_id in passed.description
    assert main(["status", "redis"]) == 0
    assert f"last good {snapshot_id}" in capsys.readouterr().out

    failed = run_backup("redis", instance)  # the server is gone now
    assert not failed.success
    latest = last_backup_evaluations(instance)[0]
    assert not latest.passed
    assert "FAILED at" in latest.description and "cannot connect" in latest.description
    assert f"last good {snapshot_id}" in latest.description
    assert main(["status", "redis", "--json"]) == 1
    [standing] = json.loads(capsys.readouterr().out)
    assert standing["last_good_snapshot_id"] == snapshot_id and "cannot" in standing["failure"]
