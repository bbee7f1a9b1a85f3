"""The composition root: the environment read once, and everything built from it.

The `backup-pipelines` command and the Dagster definitions both start here:
`load_settings()` reads every `BACKUP_*` variable (the shared ones and each
registered kind's) and the targets file when there is one, and `Runtime`
makes the store, the sources bound to their settings, the staging area and
the event publisher. Nothing below this module reads the environment, and
nothing is read at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from pyrage import x25519

from backup_pipelines.audit import AuditLog
from backup_pipelines.settings import (
    BackupSettings,
    InvalidSettings,
    SourceSettings,
    read_settings,
    secret_values,
)
from backup_pipelines.snapshot.encryption import identities_for, parse_recipients
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.snapshot.staging import Staging
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot
from backup_pipelines.sources.registry import SOURCES
from backup_pipelines.sources.source import Source
from backup_pipelines.storage.configured import build_store
from backup_pipelines.targets import InvalidTargets, read_targets

if TYPE_CHECKING:
    from backup_pipelines.notifications import NotificationPublisher


@dataclass(frozen=True)
class Settings:
    """The shared settings, and every source bound to its own, in the registry's order."""

    shared: BackupSettings
    declared: tuple[Source, ...]

    def secret_values(self) -> list[str]:
        """Every secret set anywhere, to mask in any message."""
        values = secret_values(self.shared)
        for source in self.declared:
            values += source.secrets()
        return values

    @property
    def sources(self) -> dict[str, SourceSettings]:
        """Each source's settings, by the source's name."""
        return {source.name: source.settings for source in self.declared}

    @property
    def kinds(self) -> dict[str, type[Source]]:
        """Each source's kind, by the source's name."""
        return {source.name: type(source) for source in self.declared}


def load_settings() -> Settings:
    """Read the environment and the targets file; every bad value is reported at once, each
    naming its variable, or its place in the file.

    A kind the targets file names has the file's targets; any other kind has
    its one source from its `BACKUP_<KIND>_*` variables, named like the kind.
    """
    problems: list[str] = []
    try:
        shared = read_settings(BackupSettings)
    except InvalidSettings as exc:
        problems += exc.problems
        shared = None
    declared = {}
    if shared is not None and shared.targets_file is not None:
        try:
            declared = read_targets(shared.targets_file, shared)
        except InvalidTargets as exc:
            problems += exc.problems
    sources: list[Source] = []
    for kind in SOURCES:
        if kind.kind in declared:
            sources += declared[kind.kind]
            continue
        try:
            settings = read_settings(kind.settings_model)
        except InvalidSettings as exc:
            problems += exc.problems
            continue
        if shared is not None:
            sources.append(kind(settings, shared))
    if problems or shared is None:
        raise InvalidSettings(problems)
    return Settings(shared, tuple(sources))


class Runtime:
    """The store, the sources, the staging area and the events, built from `settings`."""

    def __init__(self, settings: Settings):
        self.settings = settings
        shared = settings.shared
        self.sources: dict[str, Source] = {source.name: source for source in settings.declared}
        self.staging = Staging(shared.staging_dir, parse_recipients(shared.encryption_recipients))

    @property
    def shared(self) -> BackupSettings:
        return self.settings.shared

    @property
    def backed_up(self) -> list[Source]:
        """The sources Dagster backs up: all but the targets the targets file disables."""
        return [source for source in self.sources.values() if source.enabled]

    @cached_property
    def store(self) -> SnapshotStore:
        return build_store(self.shared)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.store, self.settings.secret_values())

    @cached_property
    def notifications(self) -> NotificationPublisher:
        from backup_pipelines.notifications import OUTBOX_NAME, NotificationPublisher

        return NotificationPublisher(
            self.shared.rabbitmq_url.get_secret_value(),
            self.shared.artifacts_dir / OUTBOX_NAME,
            self.settings.secret_values(),
        )

    def identities(self, snapshot: StoredSnapshot) -> list[x25519.Identity]:
        """The age identities that read `snapshot`: none when it is in the clear."""
        return identities_for(snapshot.manifest.encryption, self.shared.age_identity_file)

    def reader(self, snapshot: StoredSnapshot, purpose: str) -> SnapshotReader:
        """`snapshot` ready to read, with scratch space under staging for `purpose`."""
        return SnapshotReader(
            self.store, snapshot, self.staging.work_dir(purpose), self.identities(snapshot)
        )


def load_runtime() -> Runtime:
    return Runtime(load_settings())
