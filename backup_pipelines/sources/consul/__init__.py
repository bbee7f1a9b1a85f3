"""Consul: its snapshot archive and a KV export; restored key by key or as a whole cluster."""

from __future__ import annotations

import argparse

from backup_pipelines.settings import load_settings
from backup_pipelines.snapshot.store import SnapshotStore
from backup_pipelines.sources import RestoreRequest, SourceCommands
from backup_pipelines.sources.consul.api import ConsulApi
from backup_pipelines.sources.consul.restore import check_snapshot, restore_archive, restore_kv

SOURCE = "consul"


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--http-addr",
        dest="target",
        required=True,
        metavar="URL",
        help="Consul agent to restore into (http://host:8500); token: BACKUP_CONSUL_TOKEN",
    )
    parser.add_argument(
        "--snapshot-restore",
        action="store_true",
        help="upload Consul's own snapshot archive (the whole cluster state) instead of the KV",
    )


def restore(request: RestoreRequest, store: SnapshotStore) -> str:
    snapshot, identities = request.snapshot, request.identities
    token = load_settings().consul_token
    api = ConsulApi(request.target or "", token.get_secret_value() if token else None)
    if request.options.get("snapshot_restore"):
        return restore_archive(
            store,
            snapshot,
            api,
            identities=identities,
            work_dir=request.work_dir,
            log=request.log,
        )
    return restore_kv(
        store, snapshot, api, force=request.force, identities=identities, log=request.log
    )


COMMANDS = SourceCommands(
    name=SOURCE,
    add_restore_arguments=add_restore_arguments,
    restore=restore,
    deep_verify=check_snapshot,
)
