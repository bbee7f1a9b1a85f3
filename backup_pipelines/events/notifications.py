"""The events that need a person, sent where people look: chat, e-mail, webhooks (apprise).

Every event goes to the broker (`outbox.py`); those named by
`BACKUP_NOTIFY_EVENTS` (a failed backup, a failed drill, an overdue source
by default) also become a message in words for each URL of
`BACKUP_NOTIFY_URLS` and of the source's own `notify_urls` (a team's channel
for its target). A message waits in the outbox's SQLite file, like the
events, until its service took it: a service that is down delays messages,
never loses them, and never fails a backup. The outbox keeps a digest of
each URL, never the URL (it holds tokens): a message whose URL was removed
from the configuration is dropped. Once a source that was reported failing
completes a backup (or a drill) again, one message says it recovered.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apprise

from backup_pipelines.events.messages import (
    COMPLETED,
    FAILED,
    OVERDUE,
    VERIFICATION_FAILED,
    VERIFIED,
)
from backup_pipelines.settings import DEFAULT_NOTIFY_EVENTS

logger = logging.getLogger(__name__)
logging.getLogger("apprise").setLevel(logging.CRITICAL)  # its lines may quote a URL's token

RECOVERIES = {COMPLETED: (FAILED, OVERDUE), VERIFIED: (VERIFICATION_FAILED,)}
"""An event that ends a failing streak, and the events whose streak it ends."""
WHAT = {
    FAILED: ("backup failed", 'the runbook\'s "When a backup fails"'),
    VERIFICATION_FAILED: ("drill failed", 'the README\'s "Verification"'),
    OVERDUE: ("backup overdue", 'the README\'s "Monitoring" (BackupOverdue)'),
}


def digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Channels:
    """Where messages go: `shared` URLs for every source, `own` URLs by source, and the
    event names that make a message."""

    shared: tuple[str, ...] = ()
    own: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    events: frozenset[str] = frozenset(DEFAULT_NOTIFY_EVENTS)

    def urls_for(self, source: str) -> tuple[str, ...]:
        return (*self.shared, *self.own.get(source, ()))

    def by_digest(self) -> dict[str, str]:
        urls = [*self.shared, *(url for own in self.own.values() for url in own)]
        return {digest(url): url for url in urls}


class NotificationOutbox:
    """Messages not yet taken by their service, in order, and the sources reported failing,
    in the events' SQLite file (its own tables)."""

    def __init__(self, path: Path):
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        connection.execute(
            "CREATE TABLE IF NOT EXISTS notifications (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " url TEXT NOT NULL, title TEXT NOT NULL, body TEXT NOT NULL)"
        )
        connection.execute(
            "CREATE TABLE IF NOT EXISTS failing (source TEXT NOT NULL, event TEXT NOT NULL,"
            " PRIMARY KEY (source, event))"
        )
        return connection

    def add(self, urls: Sequence[str], title: str, body: str) -> None:
        with closing(self._connect()) as connection:
            connection.executemany(
                "INSERT INTO notifications (url, title, body) VALUES (?, ?, ?)",
                [(digest(url), title, body) for url in urls],
            )

    def mark_failing(self, source: str, event: str) -> None:
        with closing(self._connect()) as connection:
            connection.execute("INSERT OR IGNORE INTO failing VALUES (?, ?)", (source, event))

    def recovered(self, source: str, events: Sequence[str]) -> bool:
        """Whether `source` was failing with one of `events`; it is no longer."""
        marks = ",".join("?" * len(events))
        with closing(self._connect()) as connection:
            gone = connection.execute(
                f"DELETE FROM failing WHERE source = ? AND event IN ({marks})",
                (source, *events),
            )
            return gone.rowcount > 0

    def pending(self) -> int:
        with closing(self._connect()) as connection:
            return connection.execute("SELECT count(*) FROM notifications").fetchone()[0]

    def deliver(self, urls: Mapping[str, str], send: Callable[[str, str, str], bool]) -> int:
        """Send every waiting message, oldest first, each removed once its service took it;
        a URL that fails keeps its messages (in order) for the next time. Locked while it
        sends, so two processes never send one message twice."""
        with closing(self._connect()) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                rows = connection.execute(
                    "SELECT id, url, title, body FROM notifications ORDER BY id"
                ).fetchall()
                failed: set[str] = set()
                sent = 0
                for row_id, url_digest, title, body in rows:
                    if url_digest in failed:
                        continue
                    url = urls.get(url_digest)
                    if url is not None and not send(url, title, body):
                        failed.add(url_digest)
                        continue
                    connection.execute("DELETE FROM notifications WHERE id = ?", (row_id,))
                    sent += url is not None
            finally:
                connection.execute("COMMIT")
            return sent


def send_with_apprise(url: str, title: str, body: str) -> bool:
    """One message to one apprise URL; False when its service did not take it (said here
    with the URL's scheme alone: apprise's own log lines may quote a token)."""
    scheme = url.split(":", 1)[0]
    try:
        sender = apprise.Apprise()
        taken = sender.add(url) and bool(sender.notify(title=title, body=body))
    except Exception as exc:  # a service's library failing must never fail a backup
        logger.warning("a %s:// notification failed (%s): it waits", scheme, type(exc).__name__)
        return False
    if not taken:
        logger.warning("a %s:// notification was not taken: it waits in the outbox", scheme)
    return taken


class Notifier:
    """Turns events into messages for `channels`, through the outbox at `path`; `last_good`
    names a source's last good snapshot for the message (None when it cannot be known)."""

    def __init__(
        self,
        channels: Channels,
        path: Path,
        last_good: Callable[[str], str | None] = lambda source: None,
        send: Callable[[str, str, str], bool] = send_with_apprise,
    ):
        self.channels = channels
        self.outbox = NotificationOutbox(path)
        self.last_good = last_good
        self.send = send

    def waiting_in(self, path: Path) -> Notifier:
        """The same channels, with messages waiting at `path` (the WAL spool's outbox) and
        naming no last snapshot (there, the store is what cannot be reached)."""
        return Notifier(self.channels, path, send=self.send)

    def notice(self, event: Mapping[str, Any]) -> None:
        """Queue the messages `event` makes (none for most), then send what waits."""
        name, source = str(event["event"]), str(event["source"])
        urls = self.channels.urls_for(source)
        if not urls:
            return
        if name in self.channels.events:
            self.outbox.mark_failing(source, name)
            self.outbox.add(urls, *self._failure_message(event))
        elif name in RECOVERIES and self.outbox.recovered(source, RECOVERIES[name]):
            self.outbox.add(urls, *self._recovery_message(event))
        else:
            return
        self.flush()

    def flush(self) -> int:
        try:
            return self.outbox.deliver(self.channels.by_digest(), self.send)
        except (sqlite3.Error, OSError) as exc:
            logger.warning("notifications wait in %s (%s)", self.outbox.path, exc)
            return 0

    def _failure_message(self, event: Mapping[str, Any]) -> tuple[str, str]:
        source, name = event["source"], event["event"]
        what, where = WHAT.get(name, (name, "the README"))
        title = f"backup_pipelines: {source} {what}"
        lines = [
            f"{source}: {what} at {event['timestamp']}.",
            f"Cause: {event.get('error') or 'not given'}",
            f"Last good snapshot: {self.last_good(source) or 'none'}",
            f"What to do: see {where}; `backup-pipelines status {source}` says where it stands.",
        ]
        if event.get("run_id"):
            lines.append(f"Dagster run: {event['run_id']}")
        return title, "\n".join(lines)

    def _recovery_message(self, event: Mapping[str, Any]) -> tuple[str, str]:
        source = event["source"]
        title = f"backup_pipelines: {source} recovered"
        body = (
            f"{source} is healthy again: {event['event']} at {event['timestamp']}"
            f" (snapshot {event.get('snapshot_id') or 'n/a'})."
        )
        return title, body
