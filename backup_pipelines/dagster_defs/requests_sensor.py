"""`backup_requests_sensor`: the backups other services ask for on the broker's
`backup.requests` (contract section 7), each run once, and malformed requests set aside.
"""

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import pika
from dagster import (
    DagsterInstance,
    ResourceParam,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError

from backup_pipelines.dagster_defs.dagster_internals import RUN_KEY_TAG, SENSOR_NAME_TAG
from backup_pipelines.dagster_defs.schedules import sensor_status
from backup_pipelines.events.broker import DEAD_LETTER_QUEUE, REQUESTS_QUEUE
from backup_pipelines.events.outbox import confirmed_channel
from backup_pipelines.runtime import Runtime
from backup_pipelines.storage.names import shown

if TYPE_CHECKING:
    from backup_pipelines.dagster_defs.dagster_internals import UnresolvedAssetJobDefinition

REQUESTS_SENSOR = "backup_requests_sensor"
REQUESTS_PER_TICK = 20
MAX_REQUEST_BYTES = 64 << 10
REASON_LIMIT = 200
REJECTION_LIMIT = 200


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
    with confirmed_channel(url) as channel:  # closing it returns what was not acked
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
    jobs: Mapping[str, "UnresolvedAssetJobDefinition"], running: bool = True
) -> SensorDefinition:
    """`jobs`: the job for each thing a request may name (every source, and `all`)."""
    job_names = {request: job.name for request, job in jobs.items()}

    @sensor(
        name=REQUESTS_SENSOR,
        jobs=list(jobs.values()),
        minimum_interval_seconds=30,
        default_status=sensor_status(running),
        description=f"Launches the backups other services ask for on the queue {REQUESTS_QUEUE}"
        f" (each request once; acked once its run exists); malformed requests go to "
        f"{DEAD_LETTER_QUEUE}.",
    )
    def _sensor(
        context: SensorEvaluationContext, runtime: ResourceParam[Runtime]
    ) -> list[RunRequest] | SkipReason:
        launched = launched_by_requests_sensor(context.instance)
        url = runtime.events.rabbitmq_url
        try:
            requests = take_requests(url, job_names, launched, context.log.warning)
        except (AMQPError, OSError) as exc:
            return SkipReason(
                f"the broker at BACKUP_RABBITMQ_URL is unreachable ({type(exc).__name__}); "
                "trying again"
            )
        return requests or SkipReason(f"no new requests on {REQUESTS_QUEUE}")

    return _sensor
