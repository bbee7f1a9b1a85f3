"""The broker objects this project owns: the events exchange and queue, and the request queues.

They live on whatever broker `BACKUP_RABBITMQ_URL` names, which is often the
broker being backed up, so a restore of that broker's definitions must know them as ours.
"""

EXCHANGE = "backup.notifications"
NOTIFICATIONS_QUEUE = "backup.notifications"
BINDING = "backup.#"
REQUESTS_QUEUE = "backup.requests"
DEAD_LETTER_QUEUE = "backup.requests.dead"

SITE_REQUESTS_PREFIX = f"{REQUESTS_QUEUE}.site."

OWN_QUEUES = frozenset({NOTIFICATIONS_QUEUE, REQUESTS_QUEUE, DEAD_LETTER_QUEUE})
OWN_EXCHANGES = frozenset({EXCHANGE})


def site_requests_queue(site: str) -> str:
    """Where the requests for a site's targets wait for that site's code location: the
    location without a site takes every request from `backup.requests` and hands on those."""
    return f"{SITE_REQUESTS_PREFIX}{site}"


def is_own_queue(name: str) -> bool:
    return name in OWN_QUEUES or name.startswith(SITE_REQUESTS_PREFIX)
