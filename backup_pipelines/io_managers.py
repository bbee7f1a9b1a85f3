"""The Dagster IO manager that commits staged snapshots to the store and records their metadata.

An asset returns a `StagedSnapshot` (files in the staging area); the IO
manager hands them to the store, which moves them without loading them
into memory and writes the manifest last, then attaches the contract's
materialization metadata and announces `backup.completed`. A downstream
asset receives a `StoredSnapshot`: the manifest and where it is.
"""

import time
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

from backup_pipelines.audit import AuditLog, Entry
from backup_pipelines.errors import PERMANENT_ERRORS
from backup_pipelines.naming import source_of_asset
from backup_pipelines.notifications import NotificationPublisher, event_body
from backup_pipelines.snapshot.manifest import MANIFEST_NAME
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot
from backup_pipelines.snapshot.streams import human_bytes
from backup_pipelines.sources.registry import kind_class

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


class SnapshotIOManager(ConfigurableIOManager):
    """Commits each staged snapshot to `store` and announces it on `notifications`."""

    store: ResourceDependency[SnapshotStore]
    notifications: ResourceDependency[NotificationPublisher]

    def handle_output(self, context: OutputContext, obj: StagedSnapshot) -> None:
        try:
            stored = self.store.commit(obj)
        except PERMANENT_ERRORS as exc:  # a full disk: retrying would fill it again
            raise Failure(description=str(exc), allow_retries=False) from None
        finally:
            obj.discard()
        duration_s = time.monotonic() - obj.monotonic_start
        stored_entry = Entry(snapshots=[f"{obj.source}/{stored.snapshot_id}"])
        AuditLog(self.store).append(
            "backup", stored_entry, via="dagster", source=obj.source, run_id=obj.run_id
        )
        context.add_output_metadata(snapshot_metadata(stored, duration_s))
        context.add_output_metadata(self.usage(context, obj.source, stored))
        self.notifications.publish(
            event_body(
                "backup.completed", obj.source, obj.run_id, snapshot=stored, duration_s=duration_s
            )
        )
        context.log.info(f"{obj.source} snapshot {stored.snapshot_id} stored at {stored.location}")

    def usage(self, context: OutputContext, source: str, stored: StoredSnapshot) -> dict:
        """The bytes the source's store holds (Dagster plots them), and a warning when they
        grew by more than twice this snapshot since the last one: leftovers, or a repository
        growing faster than the data it holds."""
        store_bytes = self.store.usage(source)
        metadata: dict[str, Any] = {"store_bytes": store_bytes, "store": human_bytes(store_bytes)}
        instance = context.step_context.instance
        previous = instance.get_latest_materialization_event(context.asset_key)
        before = (
            previous.asset_materialization.metadata.get("store_bytes")
            if previous and previous.asset_materialization
            else None
        )
        # A source keeping data beside its snapshots (restic's repository) says what it added.
        added = stored.manifest.size_bytes + int(stored.manifest.stats.get("data_added") or 0)
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
        return self.store.find(source)
