"""The services the shared `BACKUP_*` settings build: the stores (`stores.py`: the primary,
and the copies `BACKUP_STORES_FILE` names), the staging area, the audit trail, the event
publisher and the age keys.

Services are bound to one store, the primary unless an operation is pointed
at a copy (`--store`, or a restore that falls back): they read it, and keep
their audit records and drill verdicts in it, where the snapshot lives.
`Runtime` (`runtime.py`) adds the sources to these for the command and the
Dagster definitions; `wal-push`, which PostgreSQL runs once per WAL file,
builds only these, without importing the sources.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from pydantic import SecretStr
from pyrage import x25519

from backup_pipelines.errors import BackupError, ConfigurationError
from backup_pipelines.records.audit import AuditLog
from backup_pipelines.records.dropped import DroppedSnapshots
from backup_pipelines.records.verdicts import Verdicts
from backup_pipelines.settings import BackupSettings, read_settings, secret_values, split_commas
from backup_pipelines.snapshot.encryption import identities_for, parse_recipients
from backup_pipelines.snapshot.manifest import format_utc
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.snapshot.staging import Staging
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot
from backup_pipelines.storage.files import make_private, openness
from backup_pipelines.storage.layout import OUTBOX
from backup_pipelines.stores import PRIMARY, StoreSpec, build_store, primary_store, read_stores

if TYPE_CHECKING:
    from backup_pipelines.events.notifications import Notifier
    from backup_pipelines.events.outbox import EventPublisher

logger = logging.getLogger(__name__)


class Services:
    """What the shared settings build, bound to the store named `store_name` of `stores` (the
    primary first). `secrets` (the configured ones, and those an operator typed on the command
    line) are masked in every audit record and event."""

    def __init__(
        self,
        shared: BackupSettings,
        secrets: Sequence[str],
        stores: Sequence[StoreSpec],
        store_name: str = PRIMARY,
    ):
        self.shared = shared
        self.secrets = list(secrets)
        self.stores = tuple(stores)
        named = [spec for spec in self.stores if spec.name == store_name]
        if not named:
            raise ConfigurationError(
                f"there is no store {store_name!r} (the stores: "
                f"{', '.join(spec.name for spec in self.stores)})"
            )
        self.spec = named[0]
        try:  # before the staging area, the outbox or the local store is made inside
            make_private(shared.artifacts_dir, shared.store_group)
        except OSError as exc:
            logger.warning("could not make %s: %s", shared.artifacts_dir, exc.strerror or exc)
        self.staging = Staging(
            shared.staging_dir,
            parse_recipients(shared.encryption_recipients),
            shared.stall_timeout_s,
        )

    def on_store(self, name: str) -> Services:
        """The same services, bound to the store `name`."""
        return Services(self.shared, self.secrets, self.stores, name)

    @cached_property
    def store(self) -> SnapshotStore:
        return build_store(self.spec, self.shared)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.store.backend, self.secrets)

    @cached_property
    def verdicts(self) -> Verdicts:
        return Verdicts(self.store.backend)

    @cached_property
    def dropped(self) -> DroppedSnapshots:
        return DroppedSnapshots(self.store.backend)

    @cached_property
    def events(self) -> EventPublisher:
        from backup_pipelines.events.outbox import EventPublisher  # pika only where it is used

        path = self.shared.artifacts_dir / OUTBOX
        return EventPublisher(self.shared.rabbitmq_url.get_secret_value(), path, self.notifier())

    def notify_urls(self) -> dict[str, tuple[str, ...]]:
        """Each source's own notification URLs (`Runtime` knows the sources; these do not)."""
        return {}

    def notifier(self) -> Notifier | None:
        """The notifier of `BACKUP_NOTIFY_URLS` and the sources' own URLs; None without any."""
        shared, own = split_urls(self.shared.notify_urls), self.notify_urls()
        if not shared and not any(own.values()):
            return None
        from backup_pipelines.events.notifications import Channels, Notifier  # apprise: slow

        channels = Channels(shared, own, frozenset(self.shared.notify_events))
        return Notifier(channels, self.shared.artifacts_dir / OUTBOX, self._last_good)

    def _last_good(self, source: str) -> str | None:
        """`<id>, finished <time>` of the source's newest snapshot, for a message; None when
        there is none or the store cannot say."""
        try:
            snapshots = self.store.list_snapshots(source)
        except (BackupError, OSError):
            return None
        if not snapshots:
            return None
        manifest = snapshots[0].manifest
        return f"{manifest.snapshot_id}, finished {format_utc(manifest.finished_at)}"

    def openness(self) -> list[str]:
        """Why the artifacts directory (staging, outbox) or the store is open to more local
        users than it should be: `verify` and the metrics say it."""
        found = [
            openness(self.shared.artifacts_dir, self.shared.store_group),
            self.store.backend.openness(),
        ]
        return sorted({reason for reason in found if reason})

    def identities(self, snapshot: StoredSnapshot) -> list[x25519.Identity]:
        """The age identities that read `snapshot`: none when it is in the clear."""
        return identities_for(snapshot.manifest.encryption, self.shared.age_identity_file)

    def reader(self, snapshot: StoredSnapshot, purpose: str) -> SnapshotReader:
        """`snapshot` ready to read, with scratch space under staging for `purpose`."""
        return SnapshotReader(
            self.store, snapshot, self.staging.work_dir(purpose), self.identities(snapshot)
        )


def split_urls(urls: SecretStr | None) -> tuple[str, ...]:
    """`BACKUP_NOTIFY_URLS` (or a source's own) as URLs: comma-separated."""
    return tuple(split_commas(urls.get_secret_value())) if urls is not None else ()


def read_store_specs(shared: BackupSettings) -> list[StoreSpec]:
    """The primary, then the copies the stores file names (`InvalidStores` when it is wrong)."""
    primary = primary_store(shared)
    copies = read_stores(shared.stores_file, primary) if shared.stores_file else []
    return [primary, *copies]


def load_services() -> Services:
    """The services alone, from the shared `BACKUP_*` variables and the stores file (the
    sources' are not read)."""
    shared = read_settings(BackupSettings)
    stores = read_store_specs(shared)
    secrets = secret_values(shared) + [value for spec in stores for value in spec.secrets()]
    return Services(shared, secrets, stores)
