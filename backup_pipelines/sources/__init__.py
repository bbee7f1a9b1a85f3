"""One module per backed-up system; this registry is how the CLI and Dagster find their restores.

A source module knows *what* to dump, how to check it deeply and how to
restore it; it never knows where snapshots are stored.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyrage import x25519

from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot

Log = Callable[[str], None]
DeepVerify = Callable[[SnapshotStore, StoredSnapshot, Sequence[x25519.Identity], Path], list[str]]
"""Proves a snapshot restorable: (store, snapshot, identities, scratch dir) → problems."""


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore where, as the CLI and `restore_job` both describe it.

    The caller has found the snapshot (resolving `latest`) and loaded the age
    identities it needs, so the manifest is read once and a missing identity
    fails before any source touches its target.
    """

    snapshot: StoredSnapshot
    target: str | None
    force: bool
    work_dir: Path
    identities: Sequence[x25519.Identity] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    log: Log = print


@dataclass(frozen=True)
class SourceCommands:
    """What the `backup-pipelines` command and `restore_job` need from a source module.

    `add_restore_arguments` declares the target flag with `dest="target"`;
    every other flag it adds becomes an entry of `RestoreRequest.options`.
    """

    name: str
    add_restore_arguments: Callable[[argparse.ArgumentParser], None]
    restore: Callable[[RestoreRequest, SnapshotStore], str]
    deep_verify: DeepVerify


def registered_sources() -> dict[str, SourceCommands]:
    """Sources whose restore and deep checks exist, by name."""
    from backup_pipelines.sources import consul, documents, postgres, rabbitmq, redis

    sources = (postgres, redis, rabbitmq, consul, documents)  # each imports this module
    return {source.COMMANDS.name: source.COMMANDS for source in sources}
