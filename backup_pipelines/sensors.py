"""Sensors: backups on request (the broker's `backup.requests`), on change (sources that watch
their data), and events for failed runs, overdue backups and waiting events.

All run by default, like the schedules.
"""

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pika
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DefaultSensorStatus,
    ResourceParam,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError

from backup_pipelines.audit import Entry
from backup_pipelines.dagster_internals import RUN_KEY_TAG, SENSOR_NAME_TAG
from backup_pipelines.errors import ConfigurationError
from backup_pipelines.messaging import DEAD_LETTER_QUEUE, REQUESTS_QUEUE
from backup_pipelines.naming import (
    backup_asset_key,
    backup_step_key,
    change_sensor_name,
    source_of_asset,
)
from backup_pipelines.notifications import event_body
from backup_pipelines.runtime import Runtime
from backup_pipelines.schedules import overdue_after
from backup_pipelines.snapshot.manifest import format_utc
from backup_pipelines.snapshot.names import shown
from backup_pipelines.sources.source import Source

if TYPE_CHECKING:
    from backup_pipelines.dagster_internals import UnresolvedAssetJobDefinition

REQUESTS_SENSOR = "backup_requests_sensor"
REQUESTS_PER_TICK = 20
MAX_REQUEST_BYTES = 64 << 10
REASON_LIMIT = 200
REJECTION_LIMIT = 200
QUIET_PERIOD_S = 600
MAX_WAIT_S = 3600


def parse_request(body: bytes, choices: Sequence[str]) -> tuple[str, str]:
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
    if source not in choices:
        raise ValueError(f"'source' must be one of {', '.join(choices)}, not {shown(source)}")
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


def _rejection(problem: Exception) -> str:
    """Why a message was set aside, bounded (it goes into a header and the log)."""
    text = str(problem) if isinstance(problem, ValueError) else type(problem).__name__
    return text[:REJECTION_LIMIT]


def take_requests(
    url: str,
    jobs: Mapping[str, str],
    launched: Callable[[str], bool],
    log: Callable[[str], None],
) -> list[RunRequest]:
    """Run requests for the messages on the queue; each is acked only once Dagster holds its run.

    `jobs` maps what a request may ask for (a source, or `all`) to the job
    that backs it up. A message whose run exists (launched at an earlier
    tick) is acked now; a new one becomes a run request and stays un-acked,
    so it goes back to the queue when the connection closes and is acked at
    the next tick, after the daemon stored its run. A crash anywhere in
    between loses nothing, and the run key keeps it from running twice. A
    malformed message, or one that fails to parse in any way, is moved (with
    publisher confirms) to the dead-letter queue, so it never blocks the
    queue or its neighbours.
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
                source, reason = parse_request(body, list(jobs))
            except Exception as problem:  # whatever the body does, it must not block the queue
                _set_aside(channel, body, _rejection(problem), log)
                channel.basic_ack(method.delivery_tag)
                continue
            key = request_key(properties, body)
            if launched(key):
                channel.basic_ack(method.delivery_tag)
            elif key not in requests:
                requests[key] = RunRequest(
                    job_name=jobs[source],
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


def backup_requests_sensor(
    jobs: Mapping[str, "UnresolvedAssetJobDefinition"],
) -> SensorDefinition:
    """`jobs`: the job for each thing a request may name (every source, and `all`)."""
    job_names = {request: job.name for request, job in jobs.items()}

    @sensor(
        name=REQUESTS_SENSOR,
        jobs=list(jobs.values()),
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Launches the backups other services ask for on the queue {REQUESTS_QUEUE}"
        f" (each request once; acked once its run exists); malformed requests go to "
        f"{DEAD_LETTER_QUEUE}.",
    )
    def _sensor(
        context: SensorEvaluationContext, runtime: ResourceParam[Runtime]
    ) -> list[RunRequest] | SkipReason:
        launched = launched_by_requests_sensor(context.instance)
        url = runtime.notifications.rabbitmq_url
        try:
            requests = take_requests(url, job_names, launched, context.log.warning)
        except (AMQPError, OSError) as exc:
            return SkipReason(
                f"the broker at BACKUP_RABBITMQ_URL is unreachable ({type(exc).__name__}); "
                "trying again"
            )
        return requests or SkipReason(f"no new requests on {REQUESTS_QUEUE}")

    return _sensor


def change_sensor(
    source: str,
    job: "UnresolvedAssetJobDefinition",
    quiet_period_s: float = QUIET_PERIOD_S,
    max_wait_s: float = MAX_WAIT_S,
) -> SensorDefinition:
    """A backup once the source's data changed and then stayed quiet (or changed for too long)."""

    @sensor(
        name=change_sensor_name(source),
        job=job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Backs up {source} after its data changed and was quiet for "
        f"{quiet_period_s:.0f} s (or after {max_wait_s:.0f} s of constant change).",
    )
    def _sensor(
        context: SensorEvaluationContext, runtime: ResourceParam[Runtime]
    ) -> RunRequest | SkipReason:
        try:
            fingerprint = runtime.sources[source].fingerprint()
        except ConfigurationError as exc:
            return SkipReason(str(exc))
        now = time.time()
        cursor: dict[str, Any] = json.loads(context.cursor) if context.cursor else {}
        if not cursor:
            context.update_cursor(json.dumps({"backed_up": fingerprint}))
            return SkipReason("first look at the data: its state is the baseline")
        if fingerprint == cursor["backed_up"]:
            return SkipReason("no change since the last backup request")
        if fingerprint != cursor.get("seen"):
            changing_since = cursor.get("changing_since", now)
            cursor.update(seen=fingerprint, seen_at=now, changing_since=changing_since)
        settled = now - cursor["seen_at"] >= quiet_period_s
        overdue = now - cursor["changing_since"] >= max_wait_s
        if not (settled or overdue):
            context.update_cursor(json.dumps(cursor))
            return SkipReason("the data changed; waiting for it to settle")
        context.update_cursor(json.dumps({"backed_up": fingerprint}))
        return RunRequest(
            run_key=f"{source}-{'-'.join(map(str, fingerprint))}",
            tags={"backup/trigger": change_sensor_name(source)},
        )

    return _sensor


def backup_run_failure_sensor(sources_of_job: Mapping[str, Sequence[str]]) -> SensorDefinition:
    """`backup.failed` for backup runs that failed where no step hook could (resource set-up
    errors, a killed worker); `sources_of_job` names the sources each backup job covers."""

    @run_failure_sensor(
        name="backup_run_failure_sensor",
        default_status=DefaultSensorStatus.RUNNING,
        description="Publishes backup.failed for backup runs that failed where no step hook "
        "could (resource set-up errors, a killed worker), never twice for the same failure.",
    )
    def _sensor(context: RunFailureSensorContext, runtime: ResourceParam[Runtime]) -> None:
        run = context.dagster_run
        if run.asset_selection:
            sources = [s for key in run.asset_selection if (s := source_of_asset(key))]
        else:
            sources = list(sources_of_job.get(run.job_name, ()))
        hooked = {
            record.dagster_event.step_key
            for record in context.instance.all_logs(
                run.run_id, of_type=DagsterEventType.HOOK_COMPLETED
            )
            if record.dagster_event
        }
        notifications = runtime.notifications
        error = notifications.short_error(
            Exception(context.failure_event.message or "the run failed")
        )
        for source in sources:
            if backup_step_key(source) not in hooked:
                notifications.publish(event_body("backup.failed", source, run.run_id, error=error))
                failed = Entry()
                failed.failed(error)
                runtime.audit.append(
                    "backup", failed, via="dagster", source=source, run_id=run.run_id
                )

    return _sensor


def backup_overdue_sensor(
    sources: Sequence[Source], clock: Callable[[], float] = time.time
) -> SensorDefinition:
    """`backup.overdue` once per failure of a backup asset's freshness: in Dagster OSS a
    failing freshness policy notifies nobody. The window is the policy's own (twice the
    schedule's interval, plus a grace); the failure ends with the next snapshot."""
    windows = {source.name: overdue_after(source.cron) for source in sources}

    @sensor(
        name="backup_overdue_sensor",
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description="Publishes backup.overdue, once per failure, when a backup asset's freshness "
        "fails (no snapshot within twice its schedule's interval, plus 30 min).",
    )
    def _sensor(context: SensorEvaluationContext, runtime: ResourceParam[Runtime]) -> SkipReason:
        announced: dict[str, float] = json.loads(context.cursor) if context.cursor else {}
        now, overdue = clock(), []
        for name, window in windows.items():
            last = context.instance.get_latest_materialization_event(backup_asset_key(name))
            if last is None or now - last.timestamp <= window.total_seconds():
                continue
            overdue.append(name)
            if announced.get(name) != last.timestamp:
                since = format_utc(datetime.fromtimestamp(last.timestamp, UTC))
                error = f"no snapshot since {since}: its freshness failed after {window}"
                runtime.notifications.publish(
                    event_body("backup.overdue", name, last.run_id, error=error)
                )
                announced[name] = last.timestamp
        context.update_cursor(json.dumps(announced))
        return SkipReason(f"overdue: {', '.join(overdue)}" if overdue else "no backup is overdue")

    return _sensor


@sensor(
    name="notifications_outbox_sensor",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Delivers backup events that waited in the outbox while the broker was down.",
)
def notifications_outbox_sensor(
    context: SensorEvaluationContext, runtime: ResourceParam[Runtime]
) -> SkipReason:
    notifications = runtime.notifications
    waiting = notifications.outbox.pending()
    if not waiting:
        return SkipReason("the outbox is empty")
    delivered = notifications.flush()
    return SkipReason(f"delivered {delivered} of {waiting} waiting events")
