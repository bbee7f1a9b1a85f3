"""Sensors: backups on request (RabbitMQ), on change (documents), and events for failed runs.

All run by default, like the schedules.
"""

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pika
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError

if TYPE_CHECKING:  # the type define_asset_job returns; not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

from backup_pipelines.messaging import DEAD_LETTER_QUEUE, REQUESTS_QUEUE
from backup_pipelines.notifications import NotificationPublisher, event_body, short_error
from backup_pipelines.settings import SOURCES, load_settings
from backup_pipelines.snapshot.names import shown

REQUESTS_SENSOR = "backup_requests_sensor"
REQUESTS_PER_TICK = 20
MAX_REQUEST_BYTES = 64 << 10
REASON_LIMIT = 200
REJECTION_LIMIT = 200
QUIET_PERIOD_S = 600
MAX_WAIT_S = 3600


def parse_request(body: bytes) -> tuple[str, str]:
    """`{"source": ..., "reason": ...}` → (source, reason); ValueError says what is wrong."""
    if len(body) > MAX_REQUEST_BYTES:
        raise ValueError(f"larger than {MAX_REQUEST_BYTES} bytes")
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(request, dict):
        raise ValueError("not a JSON object")
    source = request.get("source")
    if source not in (*SOURCES, "all"):
        choices = ", ".join((*SOURCES, "all"))
        raise ValueError(f"'source' must be one of {choices}, not {shown(source)}")
    reason = request.get("reason", "")
    if not isinstance(reason, str):
        raise ValueError("'reason' must be a string")
    return source, reason[:REASON_LIMIT] or "unspecified"


def request_key(properties: pika.BasicProperties, body: bytes) -> str:
    """What makes two deliveries the same request: the sender's `message_id`, else a digest of
    the body (and its `timestamp` property, so identical requests sent at different times
    stay two). It is the run key, so Dagster never runs one request twice."""
    if isinstance(properties.message_id, str) and properties.message_id:
        return properties.message_id
    digest = hashlib.sha256(body)
    if properties.timestamp is not None:
        digest.update(f"@{properties.timestamp}".encode())
    return f"request-{digest.hexdigest()[:32]}"


def _job_for(source: str) -> str:
    return "backup_all_job" if source == "all" else f"{source}_backup_job"


def _rejection(problem: Exception) -> str:
    """Why a message was set aside, bounded (it goes into a header and the log)."""
    text = str(problem) if isinstance(problem, ValueError) else type(problem).__name__
    return text[:REJECTION_LIMIT]


def take_requests(
    url: str, launched: Callable[[str], bool], log: Callable[[str], None]
) -> list[RunRequest]:
    """Run requests for the messages on the queue; each is acked only once Dagster holds its run.

    A message whose run exists (launched at an earlier tick) is acked now; a
    new one becomes a run request and stays un-acked, so it goes back to the
    queue when the connection closes and is acked at the next tick, after
    the daemon stored its run. A crash anywhere in between loses nothing,
    and the run key keeps it from running twice. A malformed message, or
    one that fails to parse in any way, is moved (with publisher confirms)
    to the dead-letter queue, so it never blocks the queue or its neighbours.
    """
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = 5
    parameters.connection_attempts = 1
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(REQUESTS_QUEUE, durable=True)
        channel.queue_declare(DEAD_LETTER_QUEUE, durable=True)
        requests: dict[str, RunRequest] = {}
        for _ in range(REQUESTS_PER_TICK):
            method, properties, body = channel.basic_get(REQUESTS_QUEUE)
            if method is None:
                break
            try:
                source, reason = parse_request(body)
            except Exception as problem:  # whatever the body does, it must not block the queue
                _set_aside(channel, body, _rejection(problem), log)
                channel.basic_ack(method.delivery_tag)
                continue
            key = request_key(properties, body)
            if launched(key):
                channel.basic_ack(method.delivery_tag)
            elif key not in requests:
                requests[key] = RunRequest(
                    job_name=_job_for(source),
                    run_key=key,
                    tags={"backup/reason": reason, "backup/trigger": REQUESTS_QUEUE},
                )
        return list(requests.values())
    finally:
        if connection.is_open:
            connection.close()  # what was not acked goes back to the queue


def _set_aside(
    channel: BlockingChannel, body: bytes, reason: str, log: Callable[[str], None]
) -> None:
    log(f"set aside a malformed backup request: {reason}")
    channel.basic_publish(
        "",
        DEAD_LETTER_QUEUE,
        body,
        pika.BasicProperties(delivery_mode=2, headers={"x-rejected": reason}),
        mandatory=True,
    )


def launched_by_requests_sensor(instance: DagsterInstance) -> Callable[[str], bool]:
    """Whether a run with this run key was created by the requests sensor."""

    def launched(run_key: str) -> bool:
        tags = {RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: REQUESTS_SENSOR}
        return bool(instance.get_run_records(RunsFilter(tags=tags), limit=1))

    return launched


def backup_requests_sensor(jobs: Sequence["UnresolvedAssetJobDefinition"]) -> SensorDefinition:
    @sensor(
        name=REQUESTS_SENSOR,
        jobs=list(jobs),
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Launches the backups other services ask for on the queue {REQUESTS_QUEUE}"
        f" (each request once; acked once its run exists); malformed requests go to "
        f"{DEAD_LETTER_QUEUE}.",
    )
    def _sensor(
        context: SensorEvaluationContext, notifications: NotificationPublisher
    ) -> list[RunRequest] | SkipReason:
        launched = launched_by_requests_sensor(context.instance)
        try:
            requests = take_requests(notifications.rabbitmq_url, launched, context.log.warning)
        except (AMQPError, OSError) as exc:
            return SkipReason(f"RabbitMQ is unreachable ({type(exc).__name__}); trying again")
        return requests or SkipReason(f"no new requests on {REQUESTS_QUEUE}")

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
