"""One module per backed-up system; this registry is how the CLI finds their restore and checks.

A source module knows *what* to dump, how to check it deeply and how to
restore it; it never knows where snapshots are stored.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from backup_pipelines.settings import BackupSettings
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot

DeepVerify = Callable[[SnapshotStore, StoredSnapshot, BackupSettings], list[str]]
Restore = Callable[[argparse.Namespace, SnapshotStore, BackupSettings], str]


@dataclass(frozen=True)
class SourceCommands:
    """What the `backup-pipelines` command needs from a source module."""

    name: str
    add_restore_arguments: Callable[[argparse.ArgumentParser], None]
    restore: Restore
    deep_verify: DeepVerify


def registered_sources() -> dict[str, SourceCommands]:
    """Sources whose restore and deep checks exist, by name."""
    return {}
