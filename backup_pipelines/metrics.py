"""Prometheus metrics computed from the stores alone, for monitoring that works when Dagster
is down: `backup-pipelines metrics --textfile PATH | --listen HOST:PORT`.

Everything comes from what each store holds (label `store`: `primary`, or a
copy store's name): each source's manifests (count, newest finished, its
size and duration, oldest started), the bytes under its folder, the record
of its last drill (`records/verdicts.py`), and for a copy store how many of
the primary's snapshots it lacks. Snapshots never change
once committed, so the collector reads each manifest once and, at later
scrapes, only lists the locations and reads the new ones: a scrape every
30 s costs one listing per source and store. The schedule's interval is
exported beside the times, so one alert rule (`deploy/prometheus/`) knows
when each source is overdue without repeating its cron.
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
from backup_pipelines.errors import StorageFull, StoreError, UnreadableManifest
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.manifest import utc_now
from backup_pipelines.snapshot.store import StoredSnapshot
from backup_pipelines.sources.source import Source
from backup_pipelines.stores import PRIMARY

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
    "backup_wal_dropped_bytes_total": "WAL given up, not archived, because the store could "
    "not be reached while more than BACKUP_WAL_QUEUE_MAX_BYTES waited (the gaps it records).",
    "backup_store_missing_snapshots": "Snapshots of the primary a copy store lacks (but those "
    "its own retention dropped).",
    "backup_store_oldest_missing_timestamp_seconds": "finished_at of the oldest snapshot of the "
    "primary a copy store lacks.",
}
STORE_REACHABLE = "backup_store_reachable"
STORE_PRIVATE = "backup_store_private"
VERIFY_INTERVAL = "backup_verification_interval_seconds"
SCRAPE_DURATION = "backup_metrics_collect_duration_seconds"
Values = dict[str, float]


class StoreCollector(Collector):
    """The metrics of every configured source in every store, read from the stores at each
    collect (labels `store`, `source`). A copy store that cannot be read is said by
    `backup_store_reachable`; the primary's failure fails the scrape, as it did alone."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self._views = {spec.name: runtime.on_store(spec.name) for spec in runtime.stores}
        self._known: dict[tuple[str, str], dict[str, StoredSnapshot]] = {}
        self._turn = threading.Condition()
        self._reading = False
        self._generation = 0
        self._shared: list[GaugeMetricFamily] | Exception | None = None

    def snapshots(self, store: str, source: str) -> list[StoredSnapshot]:
        """The source's complete snapshots in `store`, newest first; manifests already read
        are reused (committed snapshots never change), locations gone are forgotten."""
        snapshot_store = self._views[store].store
        ids = snapshot_store.location_ids(source)
        known = self._known.setdefault((store, source), {})
        for gone in set(known) - set(ids):
            del known[gone]
        for snapshot_id in ids:
            if snapshot_id not in known:
                try:
                    found = snapshot_store.read_manifest(source, snapshot_id)
                except UnreadableManifest:
                    continue  # `snapshots` and `verify` report it
                if found is not None:
                    known[snapshot_id] = found
        now = utc_now()  # a snapshot ahead of the clocks would hold the newest time forever
        return [known[i] for i in ids if i in known and not known[i].ahead_of_clocks(now)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One reading of the stores per scrape; scrapes that arrive while one is being read
        wait for it and share what it found (a hundred at once then cost one reading, not a
        hundred in a row)."""
        with self._turn:
            if self._reading:
                generation = self._generation
                while self._generation == generation:
                    self._turn.wait()
                shared = self._shared
            else:
                self._reading, shared = True, None
        if shared is None:
            try:
                shared = list(self._read())
            except Exception as exc:
                shared = exc
            finally:
                with self._turn:
                    self._reading, self._shared = False, shared
                    self._generation += 1
                    self._turn.notify_all()
        if isinstance(shared, Exception):
            raise shared
        yield from shared

    def _read(self) -> Iterator[GaugeMetricFamily]:
        """Every store read once (one reading at a time: `collect` sees to it)."""
        started = time.monotonic()
        families = {
            name: GaugeMetricFamily(name, text, labels=["store", "source"])
            for name, text in PER_SOURCE.items()
        }
        reachable = GaugeMetricFamily(
            STORE_REACHABLE, "1 when the store could be read at this scrape.", labels=["store"]
        )
        private = GaugeMetricFamily(
            STORE_PRIVATE,
            "1 when no other local user may read the store (a local one's root, and the "
            "artifacts directory): `verify` names what is open.",
            labels=["store"],
        )
        primary: dict[str, list[StoredSnapshot]] = {}
        for spec in self.runtime.stores:
            private.add_metric([spec.name], 0.0 if self._views[spec.name].openness() else 1.0)
            try:
                found = self._store_values(spec.name, primary)
            except (StoreError, StorageFull):
                if spec.name == PRIMARY:
                    raise
                reachable.add_metric([spec.name], 0.0)
                continue
            reachable.add_metric([spec.name], 1.0)
            for (source, metric), value in found.items():
                families[metric].add_metric([spec.name, source], value)
        yield from families.values()
        yield reachable
        yield private
        verify_every = cron_interval(self.runtime.shared.verify_cron).total_seconds()
        yield GaugeMetricFamily(VERIFY_INTERVAL, "The verification schedule's gap.", verify_every)
        spent = time.monotonic() - started
        yield GaugeMetricFamily(SCRAPE_DURATION, "Time to read the stores.", spent)

    def _store_values(
        self, store: str, primary: dict[str, list[StoredSnapshot]]
    ) -> dict[tuple[str, str], float]:
        """Every source's values in `store`; the primary's snapshots are kept in `primary`
        (it comes first) for the copies to be compared with."""
        found = {}
        for source in self.runtime.enabled:  # a kind or target turned off is not watched
            name = source.name
            snapshots = self.snapshots(store, name)
            values = self._values(store, source, snapshots)
            if store == PRIMARY:
                primary[name] = snapshots
            else:
                values |= self._missing(store, source, primary.get(name, []), snapshots)
            found |= {(name, metric): value for metric, value in values.items()}
        return found

    def _values(self, store: str, source: Source, snapshots: list[StoredSnapshot]) -> Values:
        view = self._views[store]
        values = {
            "backup_snapshots": float(len(snapshots)),
            "backup_store_bytes": float(view.store.usage(source.name)),
            "backup_schedule_interval_seconds": cron_interval(source.cron).total_seconds(),
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
        if (archive := source.continuous_archive) is not None:
            values["backup_wal_max_age_seconds"] = float(archive.max_age_s)
            reach = archive.reach(view.store)
            values["backup_wal_dropped_bytes_total"] = float(reach.given_up_bytes)
            if reach.archived_at is not None:
                values["backup_wal_last_archived_timestamp_seconds"] = reach.archived_at.timestamp()
        verdict = view.verdicts.read(source.name)
        if verdict is not None:
            values["backup_verification_last_passed"] = 1.0 if verdict.passed else 0.0
            if verdict.last_success_at is not None:
                success = verdict.last_success_at.timestamp()
                values["backup_verification_last_success_timestamp_seconds"] = success
        return values

    def _missing(
        self,
        store: str,
        source: Source,
        primary: list[StoredSnapshot],
        held: list[StoredSnapshot],
    ) -> Values:
        """How far the copy store is behind on `source`: what `copy` would send it now."""
        by_id = {snapshot.snapshot_id: snapshot for snapshot in primary}
        missing = self._views[store].dropped.unsent(
            source.name, by_id, [snapshot.snapshot_id for snapshot in held]
        )
        values = {"backup_store_missing_snapshots": float(len(missing))}
        if missing:
            oldest = by_id[missing[0]].manifest.finished_at.timestamp()
            values["backup_store_oldest_missing_timestamp_seconds"] = oldest
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
