"""Backup events on their way to the broker (`backup.notifications`), through a durable outbox.

Every event is first written to a small SQLite outbox under
`BACKUP_ARTIFACTS_DIR`, then delivered in order with publisher confirms and
removed only once the broker confirmed it. A backup therefore never fails
because the broker is down: its events wait in the outbox and go out at
the next publish, or when `notifications_outbox_sensor` drains it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError

from backup_pipelines.events.broker import BINDING, EXCHANGE, NOTIFICATIONS_QUEUE

if TYPE_CHECKING:
    from backup_pipelines.events.notifications import Notifier  # apprise: only when configured

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5


class Outbox:
    """Events not yet confirmed by the broker, in order, in SQLite (safe across processes)."""

    def __init__(self, path: Path):
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        if not self.path.parent.is_dir():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        connection.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " message_id TEXT NOT NULL, routing_key TEXT NOT NULL, body TEXT NOT NULL)"
        )
        return connection

    def add(self, body: dict[str, Any]) -> None:
        with closing(self._connect()) as connection:
            connection.execute(
                "INSERT INTO events (message_id, routing_key, body) VALUES (?, ?, ?)",
                (str(uuid.uuid4()), body["event"], json.dumps(body)),
            )

    def pending(self) -> int:
        with closing(self._connect()) as connection:
            return connection.execute("SELECT count(*) FROM events").fetchone()[0]

    def deliver(self, url: str) -> int:
        """Publish every waiting event, oldest first; return how many went out.

        The outbox stays locked while it delivers, so two processes draining
        it at once never send an event twice.
        """
        with closing(self._connect()) as connection:
            connection.execute("BEGIN IMMEDIATE")
            rows = connection.execute(
                "SELECT id, message_id, routing_key, body FROM events ORDER BY id"
            ).fetchall()
            if not rows:
                connection.execute("COMMIT")
                return 0
            delivered = 0
            try:
                with confirming_channel(url) as channel:
                    for row_id, message_id, routing_key, body in rows:
                        channel.basic_publish(
                            EXCHANGE,
                            routing_key,
                            body.encode(),
                            properties=pika.BasicProperties(
                                content_type="application/json",
                                delivery_mode=2,
                                message_id=message_id,
                            ),
                            mandatory=True,
                        )
                        connection.execute("DELETE FROM events WHERE id = ?", (row_id,))
                        delivered += 1
            finally:
                connection.execute("COMMIT")
            return delivered


@contextmanager
def confirmed_channel(url: str) -> Iterator[BlockingChannel]:
    """A channel with publisher confirms, on a connection that gives up after a few seconds
    (a broker that is down must not hold a run or a sensor tick). Closing it sends what was
    not acked back to its queue."""
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = CONNECT_TIMEOUT_S
    parameters.connection_attempts = 1
    parameters.blocked_connection_timeout = 30
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        yield channel
    finally:
        if connection.is_open:
            connection.close()


@contextmanager
def confirming_channel(url: str) -> Iterator[BlockingChannel]:
    """A confirmed channel with the events' exchange, queue and binding declared."""
    with confirmed_channel(url) as channel:
        channel.exchange_declare(EXCHANGE, "topic", durable=True)
        channel.queue_declare(NOTIFICATIONS_QUEUE, durable=True)
        channel.queue_bind(NOTIFICATIONS_QUEUE, EXCHANGE, BINDING)
        yield channel


class EventPublisher:
    """Publishes backup events through the outbox. The broker URL holds a password, so it is
    never shown."""

    def __init__(self, rabbitmq_url: str, outbox_path: Path, notifier: Notifier | None = None):
        self.rabbitmq_url = rabbitmq_url
        self.outbox = Outbox(outbox_path)
        self.notifier = notifier
        """Sends the events that need a person where people look (none configured: None)."""

    def __repr__(self) -> str:
        return f"EventPublisher(outbox={self.outbox.path})"

    def publish(self, body: dict[str, Any]) -> None:
        """Keep the event durably, then try to deliver everything waiting. Never raises:
        a snapshot already committed must not be reported failed for want of an event."""
        try:
            self.outbox.add(body)
        except (sqlite3.Error, OSError) as exc:
            logger.error(
                "could not keep the %s event in the outbox %s (%s): it is lost",
                body["event"],
                self.outbox.path,
                exc,
            )
            return
        if self.notifier is not None:
            self._notice(self.notifier, body)
        self.flush()

    @staticmethod
    def _notice(notifier: Notifier, body: dict[str, Any]) -> None:
        """The event's messages kept for their services; a full disk costs them, not the
        backup."""
        try:
            notifier.notice(body)
        except (sqlite3.Error, OSError) as exc:
            logger.error("could not keep the %s notification (%s)", body["event"], exc)

    def flush(self) -> int:
        """Deliver what waits for the broker, and the messages that wait for their services."""
        if self.notifier is not None:
            self.notifier.flush()
        try:
            return self.outbox.deliver(self.rabbitmq_url)
        except (AMQPError, OSError, sqlite3.Error) as exc:
            logger.warning(
                "backup events wait in the outbox %s (the broker at BACKUP_RABBITMQ_URL is "
                "unreachable or the outbox busy: %s)",
                self.outbox.path,
                type(exc).__name__,
            )
            return 0
