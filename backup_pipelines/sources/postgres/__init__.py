"""PostgreSQL: every database (all schemas, large objects) and the roles."""

from __future__ import annotations

import argparse

from backup_pipelines.snapshot.store import SnapshotStore
from backup_pipelines.sources import RestoreRequest, SourceCommands
from backup_pipelines.sources.postgres.cluster import Cluster
from backup_pipelines.sources.postgres.restore import deep_verify_dumps, restore_snapshot

SOURCE = "postgres"


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target-dsn",
        dest="target",
        required=True,
        metavar="DSN",
        help="server to restore into; with --database, the database named here receives it",
    )
    parser.add_argument(
        "--database",
        metavar="NAME",
        help="restore only this database of the snapshot (default: all, under their own names)",
    )
    parser.add_argument(
        "--globals",
        dest="include_globals",
        action="store_true",
        help="create the snapshot's roles and tablespaces first (existing roles are kept)",
    )


def restore(request: RestoreRequest, store: SnapshotStore) -> str:
    return restore_snapshot(
        store,
        request.snapshot,
        Cluster(request.target),
        database=request.options.get("database"),
        include_globals=bool(request.options.get("include_globals")),
        force=request.force,
        identities=request.identities,
        work_dir=request.work_dir,
        log=request.log,
    )


COMMANDS = SourceCommands(
    name=SOURCE,
    add_restore_arguments=add_restore_arguments,
    restore=restore,
    deep_verify=deep_verify_dumps,
)
