"""RabbitMQ: the broker's definitions (topology, users, policies), restored by import."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pyrage import x25519

from backup_pipelines.settings import load_settings
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot
from backup_pipelines.sources import RestoreRequest, SourceCommands
from backup_pipelines.sources.rabbitmq.api import ManagementApi
from backup_pipelines.sources.rabbitmq.restore import check_definitions, restore_definitions

SOURCE = "rabbitmq"


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--management-url",
        dest="target",
        required=True,
        metavar="URL",
        help="management API of the broker to import into (http://host:15672)",
    )
    parser.add_argument("--user", help="management user (default: BACKUP_RABBITMQ_ADMIN_USER)")
    parser.add_argument("--password", help="its password (default: BACKUP_RABBITMQ_ADMIN_PASSWORD)")
    parser.add_argument("--vhost", metavar="NAME", help="restore this vhost only")


def restore(request: RestoreRequest, store: SnapshotStore) -> str:
    settings = load_settings()
    api = ManagementApi(
        request.target or settings.rabbitmq_management_url,
        request.options.get("user") or settings.rabbitmq_admin_user,
        request.options.get("password") or settings.rabbitmq_admin_password.get_secret_value(),
    )
    return restore_definitions(
        store,
        request.snapshot,
        api,
        vhost=request.options.get("vhost"),
        force=request.force,
        identities=request.identities,
        log=request.log,
    )


def deep_verify(
    store: SnapshotStore,
    snapshot: StoredSnapshot,
    identities: Sequence[x25519.Identity],
    work_dir: Path,
) -> list[str]:
    """The structural check; the definitions are small enough to need no scratch file."""
    return check_definitions(store, snapshot, identities)


COMMANDS = SourceCommands(
    name=SOURCE,
    add_restore_arguments=add_restore_arguments,
    restore=restore,
    deep_verify=deep_verify,
)
