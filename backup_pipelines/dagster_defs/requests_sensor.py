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
from backup_pipelines.dagster_defs.definition_names import ALL_SOURCES
from backup_pipelines.dagster_defs.schedules import sensor_status
from backup_pipelines.events.broker import (
    DEAD_LETTER_QUEUE,
    REQUESTS_QUEUE,
    SITE_REQUESTS_PREFIX,
    site_requests_queue,
)
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
    queue: str = REQUESTS_QUEUE,
    handed_on: Mapping[str, Sequence[str]] | None = None,
) -> list[RunRequest]:
    """Run requests for the messages on `queue`; each is acked only once Dagster holds its run.

    `jobs` maps what a request may ask for (a source, or `all`) to the job
    that backs it up here; `handed_on`, what other sites' code locations
    back up to their queues: such a request is copied there first (with
    publisher confirms, its properties kept, so its run key stays the same
    and a copy made twice still runs once), then acked unless a job here
    has a part in it too. A message whose run exists (launched at an earlier
    tick) is acked now; a new one becomes a run request and stays un-acked,
    so it goes back to the queue when the connection closes and is acked at
    the next tick, after the daemon stored its run. A crash anywhere in
    between loses nothing, and the run key keeps it from running twice. A
    malformed message, or one that fails to parse in any way, is moved (with
    publisher confirms) to the dead-letter queue, so it never blocks the
    queue or its neighbours.
    """
    handed_on = handed_on or {}
    with confirmed_channel(url) as channel:  # closing it returns what was not acked
        channel.queue_declare(queue, durable=True)
        channel.queue_declare(DEAD_LETTER_QUEUE, durable=True)
        requests: dict[str, RunRequest] = {}
        for _ in range(REQUESTS_PER_TICK):
            method, properties, body = channel.basic_get(queue)
            if method is None:
                break
            try:
                source, reason = parse_request(body, list(dict.fromkeys([*jobs, *handed_on])))
            except Exception as problem:  # whatever the body does, it must not block the queue
                _set_aside(channel, body, _rejection(problem), log)
                channel.basic_ack(method.delivery_tag)
                continue
            for other in handed_on.get(source, ()):
                channel.queue_declare(other, durable=True)
                channel.basic_publish("", other, body, properties, mandatory=True)
            key = request_key(properties, body)
            if source not in jobs or launched(key):
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


def handed_on_to_sites(runtime: Runtime) -> dict[str, list[str]]:
    """What the location without a site hands on from `backup.requests`: each target a site
    backs up to that site's queue, and a kind or `all` to every site with a part in it."""
    queues: dict[str, list[str]] = {}
    for source in runtime.enabled:
        if source.site is None:
            continue
        queue = site_requests_queue(source.site)
        for asked in (source.name, source.kind, ALL_SOURCES):
            if queue not in queues.setdefault(asked, []):
                queues[asked].append(queue)
    return queues


def backup_requests_sensor(
    jobs: Mapping[str, "UnresolvedAssetJobDefinition"], runtime: Runtime, running: bool = True
) -> SensorDefinition:
    """`jobs`: the job for each thing a request may name (every source here, and `all`). A
    site's location reads its own queue; the location without a site reads
    `backup.requests` and hands on what the sites back up."""
    job_names = {request: job.name for request, job in jobs.items()}
    site = runtime.site
    queue = site_requests_queue(site) if site else REQUESTS_QUEUE
    handed_on = handed_on_to_sites(runtime) if site is None else {}

    @sensor(
        name=REQUESTS_SENSOR,
        jobs=list(jobs.values()),
        minimum_interval_seconds=30,
        default_status=sensor_status(running),
        description=f"Launches the backups other services ask for on the queue {queue}"
        f" (each request once; acked once its run exists); malformed requests go to "
        f"{DEAD_LETTER_QUEUE}."
        + (
            f" Requests for the sites' targets go on to {SITE_REQUESTS_PREFIX}<site>."
            if handed_on
            else ""
        ),
    )
    def _sensor(
        context: SensorEvaluationContext, runtime: ResourceParam[Runtime]
    ) -> list[RunRequest] | SkipReason:
        launched = launched_by_requests_sensor(context.instance)
        url = runtime.events.rabbitmq_url
        try:
            requests = take_requests(
                url, job_names, launched, context.log.warning, queue, handed_on
            )
        except (AMQPError, OSError) as exc:
            return SkipReason(
                f"the broker at BACKUP_RABBITMQ_URL is unreachable ({type(exc).__name__}); "
                "trying again"
            )
        return requests or SkipReason(f"no new requests on {queue}")

    return _sensor
