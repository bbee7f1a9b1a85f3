"""Notifications where people look: a local webhook (`json://`) and a local SMTP server
(`mailto://`) receive, in words, the events that need a person, once each, without a secret;
a receiver that is down gets them when it is back."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from aiosmtpd.controller import Controller
from dagster import build_sensor_context

from backup_pipelines.cli import main
from backup_pipelines.dagster_defs.sensors import notifications_outbox_sensor
from backup_pipelines.events.messages import FAILED, event_body
from backup_pipelines.operations.alerts import backup_overdue
from backup_pipelines.processes import free_loopback_port
from backup_pipelines_tests.conftest import commit_snapshot, run_backup, runtime_from_env
from backup_pipelines_tests.redis_fixtures import redis_process
from backup_pipelines_tests.test_redis import port_of
from backup_pipelines_tests.test_targets import write_targets

SECRET = "s3cr3t-redis-pw"


@dataclass
class Webhook:
    """A local webhook: what apprise's `json://` posted, and a switch that makes it fail."""

    port: int = 0
    received: list[dict] = field(default_factory=list)
    failing: bool = False

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if hook.failing:
                self.send_response(503)
            else:
                hook.received.append(json.loads(body))
                self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    hook.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield hook
    finally:
        server.shutdown()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[str] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(envelope.content.decode("utf-8", "replace"))
        return "250 OK"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, str]]:
    box, port = Mailbox(), free_loopback_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        url = f"mailto://127.0.0.1:{port}?from=backup@example.com&to=ops@example.com&mode=insecure"
        yield box, url
    finally:
        controller.stop()


def test_a_failed_backup_drill_and_overdue_source_each_send_one_message_without_a_secret(
    backup_env, monkeypatch, webhook, mailbox, tmp_path, capsys
):
    box, mail_url = mailbox
    monkeypatch.setenv("BACKUP_NOTIFY_URLS", f"{webhook.url},{mail_url}")
    monkeypatch.setenv("BACKUP_REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("BACKUP_REDIS_PORT", str(free_loopback_port()))  # nothing listens
    monkeypatch.setenv("BACKUP_REDIS_PASSWORD", SECRET)
    assert not run_backup("redis").success
    runtime = runtime_from_env()
    rdb = {"dump.rdb": b"REDIS0011 not an rdb"}
    commit_snapshot(runtime.store, runtime.staging.directory, rdb, source="redis")
    assert main(["drill", "redis"]) == 1
    backup_overdue(runtime, "redis", "", "no snapshot since 2026-12-01T00:00:00Z")

    titles = [message["title"] for message in webhook.received]
    assert titles == [
        "backup_pipelines: redis backup failed",
        "backup_pipelines: redis drill failed",
        "backup_pipelines: redis backup overdue",
    ]
    failed = webhook.received[0]["message"]
    assert "Cause: cannot connect to Redis" in failed and "What to do: see" in failed
    assert "Last good snapshot: none" in failed
    drilled = webhook.received[1]["message"]
    assert "Last good snapshot: 2" in drilled  # the snapshot that does not load
    assert (
        len(box.messages) == 3
        and "Subject: backup_pipelines: redis backup failed" in (box.messages[0])
    )
    everything = json.dumps(webhook.received) + "".join(box.messages) + capsys.readouterr().err
    assert SECRET not in everything and "mailto://" not in everything


def test_a_receiver_down_for_three_events_gets_all_three_once_it_is_back(
    backup_env, monkeypatch, webhook
):
    monkeypatch.setenv("BACKUP_NOTIFY_URLS", webhook.url)
    runtime = runtime_from_env()
    webhook.failing = True
    for source in ("postgres", "redis", "consul"):
        runtime.events.publish(event_body(FAILED, source, "", error=f"{source} is down"))
    assert webhook.received == [] and runtime.events.notifier.outbox.pending() == 3
    webhook.failing = False
    for _ in range(2):  # the sensor that drains the outbox; nothing is sent twice
        with build_sensor_context(resources={"runtime": runtime_from_env()}) as context:
            notifications_outbox_sensor(context)
    assert [m["title"].split()[1] for m in webhook.received] == ["postgres", "redis", "consul"]
    assert runtime.events.notifier.outbox.pending() == 0


def test_a_good_backup_sends_nothing_but_the_recovery_of_a_failing_source(
    backup_env, monkeypatch, webhook, tmp_path
):
    monkeypatch.setenv("BACKUP_NOTIFY_URLS", webhook.url)
    monkeypatch.setenv("BACKUP_REDIS_HOST", "127.0.0.1")
    with redis_process(tmp_path / "redis") as server:
        server.set("fsm:user:1", "awaiting_phone")
        monkeypatch.setenv("BACKUP_REDIS_PORT", str(port_of(server)))
        assert run_backup("redis").success
        assert webhook.received == []
        runtime_from_env().events.publish(event_body(FAILED, "redis", "", error="it was down"))
        assert run_backup("redis").success
        assert run_backup("redis").success
    titles = [message["title"] for message in webhook.received]
    assert titles == ["backup_pipelines: redis backup failed", "backup_pipelines: redis recovered"]


def test_a_target_s_own_url_gets_only_its_target_s_events(
    backup_env, monkeypatch, webhook, tmp_path
):
    monkeypatch.setenv("TEAM_HOOK", webhook.url)
    write_targets(
        tmp_path / "targets.yaml",
        "redis:\n"
        "  fsm: {host: 127.0.0.1, port: 6379, notify_urls: '${TEAM_HOOK}'}\n"
        "  cache: {host: 127.0.0.1, port: 6379}\n",
        monkeypatch,
    )
    runtime = runtime_from_env()
    for source in ("redis.cache", "redis.fsm"):
        runtime.events.publish(event_body(FAILED, source, "", error="down"))
    assert [m["title"] for m in webhook.received] == ["backup_pipelines: redis.fsm backup failed"]
