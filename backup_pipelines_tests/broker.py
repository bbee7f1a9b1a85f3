"""RabbitMQ vhosts of the tests' own on the machine's broker, so the events and the
`backup.requests` of one test (or one xdist worker) never meet another's."""

from collections.abc import Iterator
from contextlib import contextmanager

import requests

from backup_pipelines_tests.postgres_fixtures import unique_name

MANAGEMENT = "http://127.0.0.1:15672"
AUTH = ("guest", "guest")


def vhost_url(vhost: str) -> str:
    """The AMQP URL of `vhost` as `BACKUP_RABBITMQ_URL` takes it."""
    return f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


@contextmanager
def scratch_vhost(prefix: str = "bp_e2e") -> Iterator[str]:
    """A vhost of its own, guest allowed everything there, deleted afterwards."""
    name = unique_name(prefix)
    requests.put(f"{MANAGEMENT}/api/vhosts/{name}", auth=AUTH, timeout=10).raise_for_status()
    requests.put(
        f"{MANAGEMENT}/api/permissions/{name}/guest",
        json={"configure": ".*", "write": ".*", "read": ".*"},
        auth=AUTH,
        timeout=10,
    ).raise_for_status()
    try:
        yield name
    finally:
        requests.delete(f"{MANAGEMENT}/api/vhosts/{name}", auth=AUTH, timeout=10)
