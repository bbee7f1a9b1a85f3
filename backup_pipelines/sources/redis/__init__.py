"""Redis: the RDB (and AOF files), restored into a running server or written as files."""

from __future__ import annotations

import argparse
from pathlib import Path

from backup_pipelines.snapshot.store import SnapshotStore
from backup_pipelines.sources import RestoreRequest, SourceCommands
from backup_pipelines.sources.redis.restore import (
    deep_verify_rdb,
    restore_into_server,
    write_output_dir,
)
from backup_pipelines.sources.redis.server import RedisServer

SOURCE = "redis"


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--target-url",
        dest="target",
        metavar="URL",
        help="redis://[:password@]host:port of a running server to load the snapshot into",
    )
    where.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="write dump.rdb (and appendonlydir/) for a file-based restore",
    )


def restore(request: RestoreRequest, store: SnapshotStore) -> str:
    snapshot, identities = request.snapshot, request.identities
    output_dir = request.options.get("output_dir")
    if output_dir is not None:
        return write_output_dir(
            store, snapshot, Path(output_dir), force=request.force, identities=identities
        )
    return restore_into_server(
        store,
        snapshot,
        RedisServer.from_url(request.target),
        force=request.force,
        identities=identities,
        work_dir=request.work_dir,
        log=request.log,
    )


COMMANDS = SourceCommands(
    name=SOURCE,
    add_restore_arguments=add_restore_arguments,
    restore=restore,
    deep_verify=deep_verify_rdb,
)
