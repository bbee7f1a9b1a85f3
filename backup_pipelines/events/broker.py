"""The broker objects this project owns: the events exchange and queue, and the request queues.

They live on whatever broker `BACKUP_RABBITMQ_URL` names, which is often the
broker being backed up, so a restore of that broker's definitions must know them as ours.
"""

EXCHANGE = "backup.notifications"
NOTIFICATIONS_QUEUE = "backup.notifications"
BINDING = "backup.#"
REQUESTS_QUEUE = "backup.requests"
DEAD_LETTER_QUEUE = "backup.requests.dead"

OWN_QUEUES = frozenset({NOTIFICATIONS_QUEUE, REQUESTS_QUEUE, DEAD_LETTER_QUEUE})
OWN_EXCHANGES = frozenset({EXCHANGE})
