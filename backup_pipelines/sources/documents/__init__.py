"""Documents: the file tree, backed up incrementally and deduplicated with restic."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pyrage import x25519

from backup_pipelines.settings import load_settings
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot
from backup_pipelines.sources import RestoreRequest, SourceCommands
from backup_pipelines.sources.documents.backup import repository_from_settings
from backup_pipelines.sources.documents.restore import check_repository, restore_tree

SOURCE = "documents"


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target-dir",
        dest="target",
        required=True,
        metavar="DIR",
        help="directory to restore the tree into",
    )


def restore(request: RestoreRequest, store: SnapshotStore) -> str:
    return restore_tree(
        request.snapshot,
        repository_from_settings(load_settings()),
        Path(request.target or ""),
        force=request.force,
        log=request.log,
    )


def deep_verify(
    store: SnapshotStore,
    snapshot: StoredSnapshot,
    identities: Sequence[x25519.Identity],
    work_dir: Path,
) -> list[str]:
    """Reads every pack of the restic repository (restic encrypts it itself)."""
    return check_repository(snapshot, repository_from_settings(load_settings()), "100%")


COMMANDS = SourceCommands(
    name=SOURCE,
    add_restore_arguments=add_restore_arguments,
    restore=restore,
    deep_verify=deep_verify,
)
