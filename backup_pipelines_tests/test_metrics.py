"""Monitoring from the store alone: every metric against the manifests it came from (local
store and moto's S3), /metrics over HTTP, the alert rules under promtool, the dashboard."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from backup_pipelines.cli import main
from backup_pipelines.metrics import StoreCollector
from backup_pipelines_tests.conftest import commit_snapshot, free_port, runtime_from_env

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "backup-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "backup-rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "backup-pipelines.json"
NOT_YET_SERVED: set[str] = set()


def scraped(text: str) -> dict[str, dict[str, float]]:
    """`{metric: {source: value}}` of an exposition text."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[sample.labels.get("source", "")] = sample.value
    return found


def metrics_file(tmp_path: Path) -> dict[str, dict[str, float]]:
    path = tmp_path / "backup.prom"
    assert main(["metrics", "--textfile", str(path)]) == 0
    return scraped(path.read_text())


def test_every_metric_equals_the_manifests_it_came_from(store_env, tmp_path, capsys):
    runtime = runtime_from_env()
    store, staging = runtime.store, runtime.staging.directory
    for n in range(3):
        data = {"dump.rdb": b"REDIS0011" + bytes(n) * (1000 * (n + 1))}
        commit_snapshot(store, staging, data, run_id=f"{n:08x}-run", source="redis")
    commit_snapshot(store, staging, {"kv.json": b"[]"}, source="consul")
    verified_at = datetime(2026, 11, 30, 5, tzinfo=UTC)
    consul = runtime.store.find("consul")
    runtime.verdicts.record("consul", consul.snapshot_id, True, verified_at)
    assert main(["drill", "consul"]) == 1  # its artifacts are not Consul's: the drill fails
    capsys.readouterr()

    metrics = metrics_file(tmp_path)
    for source in runtime.sources:
        snapshots = runtime.store.list_snapshots(source)
        assert metrics["backup_snapshots"][source] == len(snapshots)
        if not snapshots:
            assert source not in metrics.get("backup_snapshot_last_success_timestamp_seconds", {})
            continue
        newest, oldest = snapshots[0].manifest, snapshots[-1].manifest
        assert metrics["backup_snapshot_last_success_timestamp_seconds"][source] == (
            newest.finished_at.timestamp()
        )
        assert metrics["backup_snapshot_last_size_bytes"][source] == newest.size_bytes
        assert metrics["backup_snapshot_last_duration_seconds"][source] == (
            (newest.finished_at - newest.started_at).total_seconds()
        )
        assert metrics["backup_snapshot_oldest_timestamp_seconds"][source] == (
            oldest.started_at.timestamp()
        )
    assert metrics["backup_schedule_interval_seconds"]["redis"] == 3600
    assert metrics["backup_schedule_interval_seconds"]["consul"] == 86400
    # the failed drill is recorded, and the last success carried forward
    assert runtime.verdicts.read("consul").passed is False
    assert metrics["backup_verification_last_passed"] == {"consul": 0.0}
    assert metrics["backup_verification_last_success_timestamp_seconds"] == {
        "consul": verified_at.timestamp()
    }
    assert metrics["backup_verification_interval_seconds"] == {"": 86400}


def test_metrics_are_served_over_http_and_follow_the_store(backup_env, tmp_path):
    runtime = runtime_from_env()
    store, staging = runtime.store, runtime.staging.directory
    commit_snapshot(store, staging, {"dump.rdb": b"REDIS0011"}, source="redis")
    port = free_port()
    cli = Path(sys.executable).with_name("backup-pipelines")
    command = [cli, "metrics", "--listen", f"127.0.0.1:{port}"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> dict[str, dict[str, float]]:
            deadline = time.monotonic() + 30
            while True:
                try:
                    response = requests.get(url, timeout=10)
                    break
                except requests.ConnectionError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.1)
            assert response.status_code == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return scraped(response.text)

        assert scrape()["backup_snapshots"]["redis"] == 1
        second = commit_snapshot(
            runtime.store,
            runtime.staging.directory,
            {"dump.rdb": b"REDIS0011 later"},
            run_id="ffffffff-run",
            source="redis",
        )
        metrics = scrape()  # the new snapshot is seen at the next scrape
        assert metrics["backup_snapshots"]["redis"] == 2
        newest = runtime.store.find("redis").manifest
        assert metrics["backup_snapshot_last_size_bytes"]["redis"] == newest.size_bytes
        runtime.store.delete("redis", second.snapshot_id)
        assert scrape()["backup_snapshots"]["redis"] == 1
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_listen_needs_host_and_port(backup_env, capsys):
    assert main(["metrics", "--listen", "9700"]) == 2
    assert "--listen '9700' is not HOST:PORT" in capsys.readouterr().err


def test_the_alert_rules_pass_promtool_and_fire_on_an_overdue_source():
    """backup-rules.test.yml holds cases that fire (an hourly source three hours without a
    snapshot, a failed drill, WAL stalled, the endpoint down) and cases that must not."""
    checked = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        ["promtool", "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = [
        case
        for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in group["alert_rule_test"]
    ]
    alerts = {rule["alert"] for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]}
    assert {case["alertname"] for case in cases if case["exp_alerts"]} == alerts
    assert {case["alertname"] for case in cases if not case["exp_alerts"]} == alerts


def served_names(tmp_path: Path) -> set[str]:
    path = tmp_path / "served.prom"
    assert main(["metrics", "--textfile", str(path)]) == 0
    return {family.name for family in text_string_to_metric_families(path.read_text())}


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\bbackup_[a-z_]+\b", expression))


def test_the_rules_and_the_dashboard_name_only_metrics_the_exporter_serves(backup_env, tmp_path):
    served = served_names(tmp_path)
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    in_rules = set().union(*(metric_names(rule["expr"]) for rule in rules))
    assert in_rules - NOT_YET_SERVED <= served, in_rules - served
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        expressions = [target["expr"] for target in panel["targets"]]
        names = set().union(*(metric_names(expression) for expression in expressions))
        assert names and names <= served, (panel["title"], names - served)


def test_a_verification_record_that_is_not_one_is_ignored(backup_env, tmp_path):
    runtime = runtime_from_env()
    runtime.store.backend.put_bytes(
        ".verification/redis.json", b'{"source": "redis", "pas', replace=True
    )
    assert runtime.verdicts.read("redis") is None
    assert "backup_verification_last_passed" not in metrics_file(tmp_path)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    runtime.verdicts.record("redis", "20261130T050000Z-0000abcd", False, an_hour_ago)
    assert metrics_file(tmp_path)["backup_verification_last_passed"] == {"redis": 0.0}


def test_scrapes_that_arrive_together_share_one_reading_of_the_stores(backup_env, monkeypatch):
    """A hundred scrapes at once (several Prometheus servers, a dashboard's refresh) must not
    queue a hundred readings of a large store one after another."""
    runtime = runtime_from_env()
    staging = runtime.staging.directory
    commit_snapshot(runtime.store, staging, {"dump.rdb": b"REDIS0011"}, source="redis")
    collector = StoreCollector(runtime)
    readings, real_read = [], collector._read

    def slow_read():
        readings.append(time.monotonic())
        time.sleep(0.5)  # a store of ten thousand snapshots
        yield from real_read()

    monkeypatch.setattr(collector, "_read", slow_read)
    answers: list[list] = []
    scrapes = [
        threading.Thread(target=lambda: answers.append(list(collector.collect())))
        for _ in range(20)
    ]
    started = time.monotonic()
    for scrape in scrapes:
        scrape.start()
    for scrape in scrapes:
        scrape.join()
    assert len(answers) == 20 and len(readings) <= 2
    assert time.monotonic() - started < 3  # not twenty readings of half a second in a row
    assert all(answer == answers[0] for answer in answers)
