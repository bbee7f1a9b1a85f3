"""The few error types that carry a message meant for an operator.

Each says what went wrong and what to fix, and never holds a secret: the CLI
prints them as one line, and Dagster shows them as the step's failure.
"""

from __future__ import annotations

import socket


class BackupError(Exception):
    """A backup, verify or restore could not be done; the message says why."""


class ConfigurationError(BackupError):
    """A setting is missing or wrong; the message names the variable or option."""


class ProducerFailed(BackupError):
    """A dump produced nothing usable: no bytes, or not the format it must have. (A tool that
    exits non-zero is a `processes.ToolFailed`.)"""


class IntegrityError(BackupError):
    """Stored bytes do not match the manifest, or an artifact does not parse."""


class UnreadableManifest(IntegrityError):
    """A `manifest.json` that does not parse, breaks the format's rules, or names another
    location than the one it was read from: not a snapshot, and never acted on."""


class SnapshotNotFound(BackupError):
    """No complete snapshot with that id (or none at all) for a source."""


class StoreError(BackupError):
    """The snapshot store (local disk or S3) could not be read or written."""


class StorageFull(BackupError):
    """A disk ran out of space (staging, the local store, a restore's scratch): retrying
    would fill it again, so the run fails at once; the message names the path."""


class SourceUnavailable(BackupError):
    """A backed-up system could not be reached; worth retrying (it may be restarting)."""


class SourceRefused(BackupError):
    """A backed-up system answered no (credentials, permissions, no such database):
    retrying will not help, so the run fails at once."""


PERMANENT_ERRORS = (ConfigurationError, SourceRefused, StorageFull)
"""Failures that retrying will not mend: a run fails at once, naming what to fix."""


def connection_cause(exc: BaseException) -> str | None:
    """Why a connection failed, in the words an operator acts on: connection refused, unknown
    host, timed out. Decided here once for every client library: by the exception chain where
    the library keeps the socket's own error, by its words where it keeps only those."""
    for found in _chain(exc):
        if isinstance(found, socket.gaierror):
            return "unknown host"
        if isinstance(found, ConnectionRefusedError):
            return "connection refused"
        if isinstance(found, TimeoutError):
            return "timed out"
    text = str(exc).lower()
    for words, cause in CAUSE_WORDS:
        if any(word in text for word in words):
            return cause
    return None


CAUSE_WORDS = (
    (("connection refused",), "connection refused"),
    (("name or service not known", "could not translate host name", "failed to resolve",
      "temporary failure in name resolution", "nodename nor servname"), "unknown host"),
    (("timed out", "timeout expired"), "timed out"),
)  # fmt: skip


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps: causes, contexts, and exceptions it was given (urllib3
    keeps the socket's error as `reason`)."""
    found: list[BaseException] = []
    pending: list[object] = [exc]
    while pending and len(found) < 20:
        current = pending.pop()
        if not isinstance(current, BaseException) or current in found:
            continue
        found.append(current)
        pending += [current.__cause__, current.__context__, getattr(current, "reason", None)]
        pending += list(current.args)
    return found
