"""Prometheus metrics computed from the store alone, for monitoring that works when Dagster
is down: `backup-pipelines metrics --textfile PATH | --listen HOST:PORT`.

Everything comes from what the store holds: each source's manifests (count,
newest finished, its size and duration, oldest started), the bytes under
its folder, and the record of its last drill (`records/verdicts.py`).
Snapshots never change once committed, so the collector reads each manifest
once and, at later scrapes, only lists the locations and reads the new
ones: a scrape every 30 s costs one listing per source. The schedule's
interval is exported beside the times, so one alert rule
(`deploy/prometheus/`) knows when each source is overdue without repeating
its cron.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from backup_pipelines.cron import cron_interval
from backup_pipelines.errors import UnreadableManifest
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.store import StoredSnapshot
from backup_pipelines.sources.registry import archiving

PER_SOURCE = {
    "backup_snapshots": "Complete snapshots in the store.",
    "backup_snapshot_last_success_timestamp_seconds": "finished_at of the newest snapshot.",
    "backup_snapshot_last_size_bytes": "Stored bytes of the newest snapshot.",
    "backup_snapshot_last_duration_seconds": "finished_at - started_at of the newest snapshot.",
    "backup_snapshot_oldest_timestamp_seconds": "started_at of the oldest snapshot.",
    "backup_schedule_interval_seconds": "The longest gap between two runs of the source's cron.",
    "backup_store_bytes": "Bytes stored for the source: snapshots, attempts, its own data.",
    "backup_verification_last_success_timestamp_seconds": "When a drill last proved a snapshot.",
    "backup_verification_last_passed": "1 when the last drill passed, 0 when it failed.",
    "backup_wal_last_archived_timestamp_seconds": "When the newest WAL file was archived "
    "(base backup sources: their WAL archive).",
    "backup_wal_max_age_seconds": "How old the newest archived WAL file may grow before "
    "archiving counts as stalled (BACKUP_POSTGRES_WAL_MAX_AGE_S).",
}
VERIFY_INTERVAL = "backup_verification_interval_seconds"
SCRAPE_DURATION = "backup_metrics_collect_duration_seconds"


class StoreCollector(Collector):
    """The metrics of every configured source, read from the store at each collect."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self._known: dict[str, dict[str, StoredSnapshot]] = {}
        self._lock = threading.Lock()

    def snapshots(self, source: str) -> list[StoredSnapshot]:
        """The source's complete snapshots, newest first; manifests already read are reused
        (committed snapshots never change), locations gone are forgotten."""
        store = self.runtime.store
        ids = store.location_ids(source)
        known = self._known.setdefault(source, {})
        for gone in set(known) - set(ids):
            del known[gone]
        for snapshot_id in ids:
            if snapshot_id not in known:
                try:
                    found = store.read_manifest(source, snapshot_id)
                except UnreadableManifest:
                    continue  # `snapshots` and `verify` report it
                if found is not None:
                    known[snapshot_id] = found
        return [known[i] for i in ids if i in known]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            started = time.monotonic()
            families = {
                name: GaugeMetricFamily(name, text, labels=["source"])
                for name, text in PER_SOURCE.items()
            }
            for name, source in self.runtime.sources.items():
                for metric, value in self._values(name, source.cron).items():
                    families[metric].add_metric([name], value)
            yield from families.values()
            verify_every = cron_interval(self.runtime.shared.verify_cron).total_seconds()
            yield GaugeMetricFamily(
                VERIFY_INTERVAL, "The verification schedule's gap.", verify_every
            )
            spent = time.monotonic() - started
            yield GaugeMetricFamily(SCRAPE_DURATION, "Time to read the store.", spent)

    def _values(self, source: str, cron: str) -> dict[str, float]:
        snapshots = self.snapshots(source)
        values = {
            "backup_snapshots": float(len(snapshots)),
            "backup_store_bytes": float(self.runtime.store.usage(source)),
            "backup_schedule_interval_seconds": cron_interval(cron).total_seconds(),
        }
        if snapshots:
            newest, oldest = snapshots[0].manifest, snapshots[-1].manifest
            values |= {
                "backup_snapshot_last_success_timestamp_seconds": newest.finished_at.timestamp(),
                "backup_snapshot_last_size_bytes": float(newest.size_bytes),
                "backup_snapshot_last_duration_seconds": (
                    newest.finished_at - newest.started_at
                ).total_seconds(),
                "backup_snapshot_oldest_timestamp_seconds": oldest.started_at.timestamp(),
            }
        for _, archive in archiving([self.runtime.sources[source]]):
            values["backup_wal_max_age_seconds"] = float(archive.max_age_s)
            last = archive.reach(self.runtime.store).archived_at
            if last is not None:
                values["backup_wal_last_archived_timestamp_seconds"] = last.timestamp()
        verdict = self.runtime.verdicts.read(source)
        if verdict is not None:
            values["backup_verification_last_passed"] = 1.0 if verdict.passed else 0.0
            if verdict.last_success_at is not None:
                success = verdict.last_success_at.timestamp()
                values["backup_verification_last_success_timestamp_seconds"] = success
        return values


def registry_for(runtime: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(runtime))
    return registry


def write_textfile(registry: CollectorRegistry, path: Path) -> None:
    """The exposition text, written whole (node_exporter's textfile collector may read at any
    moment): a temporary file beside it, then a rename."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(generate_latest(registry))
    os.replace(partial, path)


def serve(registry: CollectorRegistry, host: str, port: int) -> None:
    """`/metrics` on host:port until the process is stopped; each scrape reads the store."""
    start_http_server(port, addr=host, registry=registry)
    threading.Event().wait()
