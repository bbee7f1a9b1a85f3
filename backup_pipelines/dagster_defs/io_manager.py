"""The Dagster IO manager that commits staged snapshots to the store and records their metadata.

An asset returns a `StagedSnapshot` (files in the staging area); the IO
manager commits it (`operations/backup.py`: the store moves the files
without loading them into memory and writes the manifest last; the audit
record and `backup.completed` follow), then attaches the contract's
materialization metadata and warns when the store grows faster than its
data. A downstream asset receives a `StoredSnapshot`: the manifest and
where it is.
"""

import socket
from collections.abc import Mapping
from typing import Any

from dagster import (
    ConfigurableIOManager,
    Failure,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
)

from backup_pipelines.dagster_defs.caller import in_run
from backup_pipelines.dagster_defs.definition_names import source_of_asset
from backup_pipelines.dagster_defs.last_backup import report_last_backup
from backup_pipelines.errors import PERMANENT_ERRORS
from backup_pipelines.operations.backup import Committed, commit
from backup_pipelines.services import Services
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.snapshot.store import StoredSnapshot
from backup_pipelines.sources.registry import kind_class
from backup_pipelines.storage.layout import MANIFEST_NAME
from backup_pipelines.storage.streams import human_bytes

GROWTH_SLACK = 1 << 20
"""Growth below this never warns (a manifest, a restic index)."""


def as_metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values as they are; lists and mappings as JSON the UI renders."""
    return {
        key: value if isinstance(value, int | float | str | bool) else MetadataValue.json(value)
        for key, value in values.items()
    }


def snapshot_metadata(stored: StoredSnapshot, duration_s: float) -> dict[str, Any]:
    """The contract's materialization metadata, the source's own figures, and what a person
    reads first: the size in units, the numbers worth a plot, how to restore it."""
    manifest = stored.manifest
    source = kind_class(manifest.kind)
    return {
        "snapshot_id": manifest.snapshot_id,
        "location": stored.location,
        "size_bytes": manifest.size_bytes,
        "size": human_bytes(manifest.size_bytes),
        "sha256": stored.manifest_sha256,
        "sha256_of": f"{MANIFEST_NAME}, which holds each artifact's own sha256",
        "duration_s": round(duration_s, 3),
        "files": len(manifest.files),
        "restore": MetadataValue.text(
            source.restore_options.command_line(manifest.source, manifest.snapshot_id)
        ),
        **as_metadata(manifest.stats),
        **source.plotted(manifest.stats),
    }


def where_it_ran(site: str | None) -> dict[str, str]:
    """The host the backup ran on (a site's code server, a run pod), and its site: with
    several sites, which of them reached the system, said by the run itself."""
    return {"ran_on": socket.gethostname(), **({"site": site} if site else {})}


class SnapshotIOManager(ConfigurableIOManager):
    """Commits each staged snapshot with the `services` (the store, the audit trail, the
    events) and records what was committed as materialization metadata."""

    services: ResourceDependency[Services]

    def handle_output(self, context: OutputContext, obj: StagedSnapshot) -> None:
        try:
            committed = commit(self.services, in_run(obj.run_id, context.log), obj)
        except PERMANENT_ERRORS as exc:  # a full disk: retrying would fill it again
            raise Failure(description=str(exc), allow_retries=False) from None
        context.add_output_metadata(snapshot_metadata(committed.snapshot, committed.duration_s))
        context.add_output_metadata(where_it_ran(self.services.shared.site))
        report_last_backup(context.step_context.instance, obj.source, committed.snapshot, None)
        context.add_output_metadata(self.usage(context, obj.source, committed))

    def usage(self, context: OutputContext, source: str, committed: Committed) -> dict:
        """The bytes the source's store holds (Dagster plots them), and a warning when they
        grew by more than twice this snapshot since the last one: leftovers, or a repository
        growing faster than the data it holds."""
        store_bytes = committed.store_bytes
        stored = committed.snapshot
        metadata: dict[str, Any] = {"store_bytes": store_bytes, "store": human_bytes(store_bytes)}
        instance = context.step_context.instance
        previous = instance.get_latest_materialization_event(context.asset_key)
        before = (
            previous.asset_materialization.metadata.get("store_bytes")
            if previous and previous.asset_materialization
            else None
        )
        added = stored.manifest.size_bytes  # restic's data added beside its pointer included
        if before is not None:
            grew = store_bytes - int(before.value)
            metadata["store_growth_bytes"] = grew
            if grew > 2 * added + GROWTH_SLACK:
                warning = (
                    f"the {source} store grew by {human_bytes(grew)} for a snapshot that added "
                    f"{human_bytes(added)}: faster than its data; look for leftovers "
                    "(`backup-pipelines prune --dry-run`)"
                )
                context.log.warning(warning)
                metadata["store_growth_warning"] = warning
        return metadata

    def load_input(self, context: InputContext) -> StoredSnapshot:
        assert context.upstream_output is not None
        source = source_of_asset(context.upstream_output.asset_key)
        if source is None:
            raise Failure(f"{context.upstream_output.asset_key.to_user_string()} is no backup")
        return self.services.store.find(source)
