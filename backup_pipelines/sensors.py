"""Sensors: backups on request (RabbitMQ), on change (documents), and events for failed runs.

All run by default, like the schedules.
"""

import json
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pika
from dagster import (
    DagsterEventType,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)
from pika.exceptions import AMQPError

if TYPE_CHECKING:  # the type define_asset_job returns; not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

from backup_pipelines.notifications import NotificationPublisher, event_body, short_error
from backup_pipelines.settings import SOURCES, load_settings

REQUESTS_QUEUE = "backup.requests"
DEAD_LETTER_QUEUE = "backup.requests.dead"
REQUESTS_PER_TICK = 20
REASON_LIMIT = 200
QUIET_PERIOD_S = 600
MAX_WAIT_S = 3600


def parse_request(body: bytes) -> tuple[str, str]:
    """`{"source": ..., "reason": ...}` → (source, reason); ValueError says what is wrong."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(request, dict):
        raise ValueError("not a JSON object")
    source = request.get("source")
    if source not in (*SOURCES, "all"):
        raise ValueError(f"'source' must be one of {', '.join((*SOURCES, 'all'))}, not {source!r}")
    reason = request.get("reason", "")
    if not isinstance(reason, str):
        raise ValueError("'reason' must be a string")
    return source, reason[:REASON_LIMIT] or "unspecified"


def _job_for(source: str) -> str:
    return "backup_all_job" if source == "all" else f"{source}_backup_job"


def _requests_from_queue(url: str, context: SensorEvaluationContext) -> Iterator[RunRequest]:
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = 5
    parameters.connection_attempts = 1
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        channel.queue_declare(REQUESTS_QUEUE, durable=True)
        channel.queue_declare(DEAD_LETTER_QUEUE, durable=True)
        for _ in range(REQUESTS_PER_TICK):
            method, properties, body = channel.basic_get(REQUESTS_QUEUE)
            if method is None:
                return
            try:
                source, reason = parse_request(body)
            except ValueError as problem:
                context.log.warning(f"set aside a malformed backup request: {problem}")
                channel.basic_publish(
                    "",
                    DEAD_LETTER_QUEUE,
                    body,
                    pika.BasicProperties(delivery_mode=2, headers={"x-rejected": str(problem)}),
                )
                channel.basic_ack(method.delivery_tag)
                continue
            yield RunRequest(
                job_name=_job_for(source),
                run_key=properties.message_id or f"request-{uuid.uuid4()}",
                tags={"backup/reason": reason, "backup/trigger": REQUESTS_QUEUE},
            )
            channel.basic_ack(method.delivery_tag)  # after the run request exists
    finally:
        if connection.is_open:
            connection.close()


def backup_requests_sensor(jobs: Sequence["UnresolvedAssetJobDefinition"]) -> SensorDefinition:
    @sensor(
        name="backup_requests_sensor",
        jobs=list(jobs),
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Launches the backups other services ask for on the queue {REQUESTS_QUEUE}"
        f"; malformed requests go to {DEAD_LETTER_QUEUE}.",
    )
    def _sensor(
        context: SensorEvaluationContext, notifications: NotificationPublisher
    ) -> Iterator[RunRequest | SkipReason]:
        try:
            requests = list(_requests_from_queue(notifications.rabbitmq_url, context))
        except (AMQPError, OSError) as exc:
            yield SkipReason(f"RabbitMQ is unreachable ({type(exc).__name__}); trying again")
            return
        if not requests:
            yield SkipReason(f"no requests on {REQUESTS_QUEUE}")
        yield from requests

    return _sensor


def tree_fingerprint(root: Path) -> list[int]:
    """[entries, newest mtime in ns]: cheap, and changes with any add, delete or write."""
    entries, newest = 0, 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as listing:
            for entry in listing:
                entries += 1
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime_ns)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
    return [entries, newest]


def documents_change_sensor(
    root: Path | None,
    job: "UnresolvedAssetJobDefinition",
    quiet_period_s: float = QUIET_PERIOD_S,
    max_wait_s: float = MAX_WAIT_S,
) -> SensorDefinition:
    """A documents backup once the tree changed and then stayed quiet (or changed for too long)."""

    @sensor(
        name="documents_change_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description="Backs up the documents tree after it changed and was quiet for "
        f"{quiet_period_s:.0f} s (or after {max_wait_s:.0f} s of constant change).",
    )
    def _sensor(context: SensorEvaluationContext) -> RunRequest | SkipReason:
        if root is None or not root.is_dir():
            return SkipReason("BACKUP_DOCUMENTS_ROOT is not set to a directory")
        now, fingerprint = time.time(), tree_fingerprint(root)
        cursor: dict[str, Any] = json.loads(context.cursor) if context.cursor else {}
        if not cursor:
            context.update_cursor(json.dumps({"backed_up": fingerprint}))
            return SkipReason("first look at the tree: its state is the baseline")
        if fingerprint == cursor["backed_up"]:
            return SkipReason("no change since the last backup request")
        if fingerprint != cursor.get("seen"):
            changing_since = cursor.get("changing_since", now)
            cursor.update(seen=fingerprint, seen_at=now, changing_since=changing_since)
        settled = now - cursor["seen_at"] >= quiet_period_s
        overdue = now - cursor["changing_since"] >= max_wait_s
        if not (settled or overdue):
            context.update_cursor(json.dumps(cursor))
            return SkipReason("the tree changed; waiting for it to settle")
        context.update_cursor(json.dumps({"backed_up": fingerprint}))
        return RunRequest(
            run_key=f"documents-{fingerprint[0]}-{fingerprint[1]}",
            tags={"backup/trigger": "documents_change_sensor"},
        )

    return _sensor


def _sources_of_run(job_name: str, asset_names: set[str]) -> list[str]:
    if asset_names:
        return [s for s in SOURCES if f"{s}_backup" in asset_names]
    if job_name == "backup_all_job":
        return list(SOURCES)
    return [s for s in SOURCES if job_name == f"{s}_backup_job"]


@run_failure_sensor(
    name="backup_run_failure_sensor",
    default_status=DefaultSensorStatus.RUNNING,
    description="Publishes backup.failed for backup runs that failed where no step hook could "
    "(resource set-up errors, a killed worker), never twice for the same failure.",
)
def backup_run_failure_sensor(
    context: RunFailureSensorContext, notifications: NotificationPublisher
) -> None:
    run = context.dagster_run
    asset_names = {key.path[-1] for key in run.asset_selection or ()}
    hooked = {
        record.dagster_event.step_key
        for record in context.instance.all_logs(run.run_id, of_type=DagsterEventType.HOOK_COMPLETED)
        if record.dagster_event
    }
    error = short_error(
        Exception(context.failure_event.message or "the run failed"),
        load_settings().secret_values(),
    )
    for source in _sources_of_run(run.job_name, asset_names):
        if f"{source}_backup" not in hooked:
            notifications.publish(event_body("backup.failed", source, run.run_id, error=error))


@sensor(
    name="notifications_outbox_sensor",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Delivers backup events that waited in the outbox while RabbitMQ was down.",
)
def notifications_outbox_sensor(
    context: SensorEvaluationContext, notifications: NotificationPublisher
) -> SkipReason:
    waiting = notifications.outbox.pending()
    if not waiting:
        return SkipReason("the outbox is empty")
    delivered = notifications.flush()
    return SkipReason(f"delivered {delivered} of {waiting} waiting events")
